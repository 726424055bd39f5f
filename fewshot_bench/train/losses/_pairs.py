"""Shared arithmetic of the contrastive losses: similarities, pair masks, masked log-sum-exp, reductions.

Every contrastive loss works on the ``B x B`` matrix ``s = z z^T / tau`` of L2-normalised rows of
``z (B, d)`` with integer ``labels (B,)``: row *i* is the anchor, rows with its label (other than
*i*) are its positives P(i), rows with another label its negatives N(i). Sums of exponentials
are masked log-sum-exps in float32 at least (half-precision inputs are upcast), so nothing
overflows at small temperatures and anchors without positives or negatives give no NaN gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["REDUCTIONS", "check_reduction", "masked_lse", "reduce_anchors", "similarities", "upcast"]

REDUCTIONS = ("mean", "sum", "none")


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; choose from {', '.join(REDUCTIONS)}")


def similarities(
    z: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``s (B, B) = z z^T / tau`` on normalised rows, positive / negative masks, anchors with a positive."""
    if z.ndim != 2:
        raise ValueError(f"z must be (B, d), got shape {tuple(z.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but labels has {labels.shape[0]}")
    z = F.normalize(upcast(z), dim=1)
    s = z @ z.T / temperature
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = same & ~eye
    neg = ~same
    return s, pos, neg, pos.any(1)


def masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp over ``mask``; a finite (huge negative) value for empty rows.

    Masked entries are filled with a finite number rather than ``-inf`` so the backward pass
    never computes ``exp(-inf - -inf)``; callers replace the results of empty rows.
    """
    fill = torch.finfo(x.dtype).min / 4  # stays finite when doubled or shifted
    return torch.logsumexp(x.masked_fill(~mask, fill), dim=1)


def reduce_anchors(
    per_anchor: torch.Tensor, valid: torch.Tensor, reduction: str, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Reduce per-anchor losses ``(B,)`` over the ``valid`` anchors (those with a positive).

    ``"none"``: the per-anchor values, NaN where not valid. ``"sum"``: their sum. ``"mean"``: the
    sum divided by ``denominator`` (default: the number of valid anchors). Without any valid
    anchor ``"sum"`` and ``"mean"`` are a zero still attached to the graph (zero gradient).
    """
    if reduction == "none":
        return torch.where(valid, per_anchor, torch.full_like(per_anchor, math.nan))
    total = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum()
    if reduction == "sum":
        return total
    count = valid.sum() if denominator is None else denominator
    return total / count.clamp(min=1).to(total.dtype)
