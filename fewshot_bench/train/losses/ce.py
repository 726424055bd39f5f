"""Softmax cross-entropy on the linear head's logits (``--loss ce``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...errors import ConfigError, is_number
from ._pairs import upcast
from .base import LossTerms, TrainingLoss, register_loss

__all__ = ["CrossEntropy", "cross_entropy"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean softmax cross-entropy of ``logits (B, C)`` against ``labels (B,)`` (computed in float32+).

    ``CE = -1/B * sum_i log( exp(x_{i,y_i}) / sum_c exp(x_ic) )``; with label smoothing ε the target
    is ``(1 - ε) * onehot(y_i) + ε / C`` (Szegedy et al., 2016), as ``torch.nn.functional.cross_entropy``.
    """
    return F.cross_entropy(upcast(logits), labels, label_smoothing=label_smoothing)


@register_loss
class CrossEntropy(TrainingLoss):
    """Cross-entropy of a linear classifier on the backbone features.

    Equation (``logits x (B, C)``, ``labels y (B,)``, label smoothing ε, C classes)::

        CE = -1/B * sum_i sum_c t_ic log softmax(x_i)_c,   t_ic = (1 - ε) [c = y_i] + ε / C

    Source: the standard softmax cross-entropy; label smoothing from Szegedy et al., *Rethinking
    the Inception Architecture*, CVPR 2016 (https://arxiv.org/abs/1512.00567). ``ε = 0`` (the
    default) is plain CE, the CE baseline of the CLCE paper (Long et al., 2024).
    """

    name: ClassVar[str] = "ce"
    description: ClassVar[str] = "softmax cross-entropy of a linear head (optional label smoothing)"
    paper: ClassVar[str] = "Szegedy et al., CVPR 2016 (label smoothing), https://arxiv.org/abs/1512.00567"
    uses_ce: ClassVar[bool] = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def check_params(self) -> None:
        v: Any = self.label_smoothing
        if not (is_number(v) and 0.0 <= v < 1.0):
            raise ConfigError(f"loss parameter label_smoothing={v!r} must be in [0, 1) (e.g. 0.1)")

    def compute(self, logits, z, labels, z_labels) -> LossTerms:  # noqa: ANN001 (see TrainingLoss)
        ce = cross_entropy(logits, labels, self.label_smoothing)
        return LossTerms(total=ce, ce=ce, contrastive=None)
