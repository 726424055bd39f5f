"""Cosine nearest centroid: cosine similarity between a query and each class mean."""

from __future__ import annotations

import torch

from .base import FewShotMethod, class_means, cosine_scores, register_method

__all__ = ["CosineCentroid"]


@register_method
class CosineCentroid(FewShotMethod):
    """Cosine nearest centroid on frozen features (Meta-Baseline's classifier). Inductive.

    Yinbo Chen, Zhuang Liu, Huijuan Xu, Trevor Darrell, Xiaolong Wang. "Meta-Baseline: Exploring
    Simple Meta-Learning for Few-Shot Learning", ICCV 2021. https://arxiv.org/abs/2003.04390
    (Sec. 3: centroid ``w_c`` = mean of class ``c``'s support features, logits
    ``tau * cos(f(x), w_c)``; their code, ``method='cos'``: mean of the raw features, then
    normalise). The same rule as easyfsl's ``SimpleShot`` class.

    Prototype ``c_n`` = mean of class ``n``'s raw support features; score = ``cos(q, c_n)``
    (Meta-Baseline's learnt ``tau`` does not change the prediction and is omitted).
    Related, not identical: Chen et al. 2019's Baseline++ (ICLR 2019, arXiv:1904.04232) trains
    a cosine classifier's weights on the support instead of taking class means; Gidaris &
    Komodakis 2018 (CVPR, arXiv:1804.09458) and Qi et al. 2018 (imprinting) average
    *L2-normalised* features — that is this head with ``--preprocess l2n``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    No hyper-parameters; preprocessing none.
    """

    name = "cosine"
    description = "nearest class mean, cosine similarity (Meta-Baseline classifier)"
    paper = "Chen et al., ICCV 2021 (Meta-Baseline), https://arxiv.org/abs/2003.04390"
    transductive = False
    batch_invariant = True
    nonfinite_propagates = True

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        return cosine_scores(query, class_means(support, support_labels))
