"""Cosine nearest centroid: cosine similarity between a query and each class mean."""

from __future__ import annotations

import torch

from .base import FewShotMethod, class_means, cosine_scores, register_method

__all__ = ["CosineCentroid"]


@register_method
class CosineCentroid(FewShotMethod):
    """Cosine nearest centroid on frozen features. Inductive.

    The metric of Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019
    (https://arxiv.org/abs/1904.04232), and of easyfsl's ``SimpleShot`` class.

    Prototype ``c_n`` = mean of class ``n``'s raw support features; score = ``cos(q, c_n)``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    No hyper-parameters.
    """

    name = "cosine"
    description = "nearest class mean, cosine similarity"
    paper = "Chen et al., ICLR 2019, https://arxiv.org/abs/1904.04232"
    transductive = False
    batch_invariant = True
    nonfinite_propagates = True

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        return cosine_scores(query, class_means(support, support_labels))
