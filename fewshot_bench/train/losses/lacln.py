"""Label-aware contrastive loss with hard-negative mining (LACLN), CLCE paper Eq. 3."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ._pairs import check_reduction, masked_lse, reduce_anchors, similarities
from .base import ContrastiveLoss, check_bool, check_temperature, register_loss

__all__ = ["LACLN", "lacln_loss"]

CLCE_PAPER = (
    "Long et al., CLCE: An Approach to Refining Cross-Entropy and Contrastive Learning for Optimized "
    "Learning Fusion, 2024, https://arxiv.org/abs/2402.14551"
)


def lacln_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.5,
    hard_negatives: bool = True,
    reduction: str = "mean",
    detach_weights: bool = False,
) -> torch.Tensor:
    """LACLN (CLCE paper Eq. 3) of ``z (B, d)`` with ``labels (B,)``; see :class:`LACLN`.

    Computed as ``log|P| - lse_p(s) + log(exp(lse_p(s)) + exp(log|N| + lse_k(2 s) - lse_k(s)))`` with
    masked log-sum-exp. ``reduction`` as :func:`~.supcon.supcon_loss` (mean over anchors with a
    positive; ``"none"`` gives NaN for anchors without one).
    """
    check_temperature(temperature)
    check_reduction(reduction)
    s, pos, neg, valid = similarities(z, labels, temperature)
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    lse_pos = masked_lse(s, pos)  # log sum_p exp(s_ip)
    if hard_negatives:
        s_w = s.detach() if detach_weights else s
        # log w_ik = log|N(i)| + s_ik - lse_{k' in N(i)} s_ik'
        log_w = torch.log(n_neg.clamp(min=1).to(s.dtype))[:, None] + s_w - masked_lse(s_w, neg)[:, None]
        lse_neg = masked_lse(log_w + s, neg)  # log sum_k w_ik exp(s_ik)
    else:
        lse_neg = masked_lse(s, neg)
    lse_neg = torch.where(n_neg > 0, lse_neg, torch.full_like(lse_neg, -math.inf))
    log_den = torch.logaddexp(lse_pos, lse_neg)
    per_anchor = torch.log(n_pos.clamp(min=1).to(s.dtype)) - lse_pos + log_den
    return reduce_anchors(per_anchor, valid, reduction)


@register_loss
class LACLN(ContrastiveLoss):
    """Label-aware contrastive loss with hard-negative mining (LACLN), Long et al. (2024), Eq. 3.

    ``z (B', d)`` is L2-normalised, ``s_ij = z_i . z_j / tau``; P(i) = other rows with the label of
    *i*, N(i) = rows with another label. Negative *k* of anchor *i* is weighted by::

        w_ik = |N(i)| * exp(s_ik) / sum_{k' in N(i)} exp(s_ik')        (all 1 if hard_negatives=False)

        l_i = -log[ 1/|P(i)| * sum_{p in P(i)} exp(s_ip) / ( sum_{p in P(i)} exp(s_ip) + sum_{k in N(i)} w_ik exp(s_ik) ) ]

    and ``L`` is the mean of ``l_i`` over anchors with a positive. The weights are Robinson et al.'s
    importance weights (ICLR 2021, https://arxiv.org/abs/2010.04592) with concentration β = 1,
    normalised to mean 1 over N(i). An anchor without negatives gets the empty negative sum: its
    loss is ``log|P(i)|``, a constant.

    ``detach_weights=False`` (default) differentiates through ``w`` as the formula is written (as
    Robinson et al.'s code does); ``True`` holds the weights constant in the backward pass; the
    value is identical. Source: https://arxiv.org/abs/2402.14551 (CLCE), Eq. 3; ``tau = 0.5``.
    """

    name: ClassVar[str] = "lacln"
    description: ClassVar[str] = "label-aware contrastive loss with hard-negative weights (CLCE Eq. 3), no CE"
    paper: ClassVar[str] = f"{CLCE_PAPER} (Eq. 3)"

    def __init__(self, temperature: float = 0.5, hard_negatives: bool = True, detach_weights: bool = False) -> None:
        self.temperature = temperature
        self.hard_negatives = hard_negatives
        self.detach_weights = detach_weights

    def check_params(self) -> None:
        check_temperature(self.temperature)
        check_bool(self.hard_negatives, "hard_negatives")
        check_bool(self.detach_weights, "detach_weights")

    def term(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return lacln_loss(z, labels, self.temperature, self.hard_negatives, detach_weights=self.detach_weights)
