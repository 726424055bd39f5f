"""Ridge (regularised least-squares) classifier on one-hot targets, solved in dual form."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import MethodError, is_number
from .base import FewShotMethod, one_hot, register_method

__all__ = ["RidgeHead"]


@register_method
class RidgeHead(FewShotMethod):
    """Ridge regression onto one-hot targets, closed form for all episodes at once. Inductive.

    Luca Bertinetto, João F. Henriques, Philip H. S. Torr, Andrea Vedaldi. "Meta-learning with
    differentiable closed-form solvers" (R2-D2), ICLR 2019. https://arxiv.org/abs/1805.08136

    On (optionally) L2-normalised support features ``X (N*K, D)`` with one-hot targets
    ``Y (N*K, N)``: ``W = X^T (X X^T + alpha I)^-1 Y`` (the Woodbury/dual form of
    ``min_W ||X W - Y||^2 + alpha ||W||^2``, no intercept); score = ``q W`` for query ``q (D,)``.
    Equals scikit-learn ``Ridge(alpha, fit_intercept=False)`` on the one-hot targets.

    Defaults ``alpha = 1``, ``normalize = True`` (L2-normalise support and query) are this
    library's. Preset ``ridge:r2d2`` is the head as MetaOptNet's code runs it for its R2-D2 and
    MetaOptNet-RR rows (Lee et al., CVPR 2019, ``R2D2Head`` / ``MetaOptNetHead_Ridge``):
    ``alpha = 50`` (``l2_regularizer_lambda`` / ``lambda_reg``), raw features (``normalize=False``).
    Left out, because they cannot change the predicted class: the learnt logit scale (MetaOptNet's
    ``ClassificationHead``) and R2-D2's learnt output scale and bias (``AdjustLayer``). Not
    reproduced from Bertinetto et al.'s own code: the learnt ``lambda`` (initialised to 1), the
    constant-1 bias column appended to ``X`` and the ``1/sqrt(N*K)`` feature scaling (with the
    query left unscaled this equals ``alpha = lambda * N*K``).
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "ridge"
    description = "ridge regression onto one-hot labels (dual N*K x N*K solve)"
    paper = "Bertinetto et al., ICLR 2019, https://arxiv.org/abs/1805.08136"
    transductive = False
    batch_invariant = True
    nonfinite_propagates = True
    presets: ClassVar[dict[str, dict]] = {"r2d2": {"alpha": 50.0, "normalize": False}}

    def __init__(self, alpha: float = 1.0, normalize: bool = True) -> None:
        self.alpha, self.normalize = alpha, normalize

    def _check_params(self) -> None:
        if not (is_number(self.alpha) and self.alpha > 0):
            raise MethodError(f"ridge: alpha must be a number > 0, got {self.alpha!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        if self.normalize:
            support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
        gram = support @ support.transpose(1, 2)
        gram.diagonal(dim1=1, dim2=2).add_(self.alpha)
        dual = torch.linalg.solve_ex(gram, one_hot(support_labels, support.dtype)).result  # (E, N*K, N)
        return query @ (support.transpose(1, 2) @ dual)
