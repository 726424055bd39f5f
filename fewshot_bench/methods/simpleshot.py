"""SimpleShot with CL2N: centre on the base-split mean, L2-normalise, nearest class mean."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MethodError
from .base import FewShotMethod, _needs_base_mean, class_means, neg_sq_euclidean, register_method

__all__ = ["SimpleShot"]


@register_method
class SimpleShot(FewShotMethod):
    """SimpleShot, CL2N variant, on frozen features. Inductive.

    Yan Wang, Wei-Lun Chao, Kilian Q. Weinberger, Laurens van der Maaten. "SimpleShot: Revisiting
    Nearest-Neighbor Classification for Few-Shot Learning", 2019. https://arxiv.org/abs/1911.04623

    Preprocessing ``cl2n`` (applied by :meth:`scores`, see :mod:`fewshot_bench.preprocess`): every
    feature ``x`` becomes ``(x - base_mean) / ||x - base_mean||``; prototype = mean of the
    transformed support features of a class (not re-normalised, as in the paper's code); score =
    ``-||q - c_n||^2``. ``base_mean (D,)`` is the mean feature of the train (base) split.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "simpleshot"
    description = "CL2N (centre on base mean, L2-normalise) + nearest class mean"
    paper = "Wang et al., 2019, https://arxiv.org/abs/1911.04623"
    transductive = False
    batch_invariant = True
    preprocessing = "cl2n"
    nonfinite_propagates = True

    def __init__(self, base_mean: Any = None) -> None:
        self.base_mean = base_mean

    def _check_params(self) -> None:
        if self.base_mean is None and self.preprocess_chain.needs_base_mean:
            raise MethodError(_needs_base_mean(self.name, self.preprocess_chain.spec))

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        return neg_sq_euclidean(query, class_means(support, support_labels))
