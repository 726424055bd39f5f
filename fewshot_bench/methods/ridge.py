"""Ridge (regularised least-squares) classifier on one-hot targets, solved in dual form."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MethodError
from .base import FewShotMethod, one_hot, register_method

__all__ = ["RidgeHead"]


@register_method
class RidgeHead(FewShotMethod):
    """Ridge regression onto one-hot targets, closed form for all episodes at once. Inductive.

    Least-squares classifier with ridge penalty as in Bertinetto et al., "Meta-learning with
    differentiable closed-form solvers" (R2-D2), ICLR 2019. https://arxiv.org/abs/1805.08136

    On (optionally) L2-normalised features ``X (N*K, D)``: ``W = X^T (X X^T + alpha I)^-1 Y``,
    the dual of ``min ||X W - Y||^2 + alpha ||W||^2`` (no intercept); score = ``q W``.
    Equals scikit-learn ``Ridge(alpha, fit_intercept=False)`` on the one-hot targets.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "ridge"
    description = "ridge regression onto one-hot labels (dual N*K x N*K solve)"
    paper = "Bertinetto et al., ICLR 2019, https://arxiv.org/abs/1805.08136"
    transductive = False
    batch_invariant = True
    nonfinite_propagates = True

    def __init__(self, alpha: float = 1.0, normalize: bool = True) -> None:
        self.alpha, self.normalize = alpha, normalize

    def _check_params(self) -> None:
        if not self.alpha > 0:
            raise MethodError(f"ridge: alpha must be > 0, got {self.alpha}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        if self.normalize:
            support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
        gram = support @ support.transpose(1, 2)
        gram.diagonal(dim1=1, dim2=2).add_(self.alpha)
        dual = torch.linalg.solve_ex(gram, one_hot(support_labels, support.dtype)).result  # (E, N*K, N)
        return query @ (support.transpose(1, 2) @ dual)
