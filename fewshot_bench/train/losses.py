"""Training losses: cross-entropy, SupCon, LACLN and CLCE.

All contrastive losses take raw embeddings ``z (B, d)`` (L2-normalised inside) and
integer ``labels (B,)``; row *i* is the anchor, rows with the same label (other than
*i*) are its positives P(i), rows with another label its negatives N(i). Everything is
computed on the ``B x B`` similarity matrix with masked log-sum-exp, in float32 at least
(half-precision inputs are upcast), so it neither overflows at small temperatures nor
produces NaN gradients for anchors without positives or negatives.

Reductions (``reduction=``) are the same for every contrastive loss here:

``"mean"``
    average over the anchors that have at least one positive;
``"sum"``
    sum over those anchors;
``"none"``
    per-anchor loss ``(B,)``, **NaN** for anchors without a positive (their loss is
    undefined), so ``torch.nanmean(loss)`` equals ``"mean"`` and ``torch.nansum(loss)``
    equals ``"sum"``.

When no anchor in the batch has a positive (all labels distinct, or ``B == 1``),
``"mean"`` and ``"sum"`` return a zero that is still attached to the graph (its gradient
is zero), so a training step on such a batch is a no-op for this term instead of an error.

References
----------
- Khosla et al., *Supervised Contrastive Learning*, NeurIPS 2020 (SupCon, the
  ``L_out`` form). https://arxiv.org/abs/2004.11362
- Long et al., *CLCE: An Approach to Refining Cross-Entropy and Contrastive Learning for
  Optimized Learning Fusion*, 2024, Eq. 3 (LACLN) and Eq. 4 (CLCE).
  https://arxiv.org/abs/2402.14551
- Robinson et al., *Contrastive Learning with Hard Negative Samples*, ICLR 2021 (the
  importance weights LACLN's hard-negative mining follows). https://arxiv.org/abs/2010.04592
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "LOSSES",
    "clce_loss",
    "cross_entropy",
    "lacln_loss",
    "supcon_loss",
]

#: Loss names accepted by :func:`fewshot_bench.train.finetune` (``--loss``).
LOSSES = ("ce", "supcon", "clce", "clce-nohnm")

_REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean softmax cross-entropy of ``logits (B, C)`` against ``labels (B,)`` (computed in float32+)."""
    return F.cross_entropy(_upcast(logits), labels, label_smoothing=label_smoothing)


def supcon_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Supervised contrastive loss, the ``L_out`` form of Khosla et al. (2020), Eq. 2.

    For anchor *i* with positives P(i) and all other rows A(i)::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) ),  s = z z^T / tau

    ``z (B, d)`` is L2-normalised inside. No ``temperature / base_temperature`` factor
    (that scaling is in the authors' code, not in the paper's equation). See the module
    docstring for ``reduction`` and batches without positives.
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    s, pos, _neg, valid = _similarities(z, labels, temperature)
    not_self = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    log_den = _masked_lse(s, not_self)  # (B,)
    n_pos = pos.sum(1)
    log_prob = s - log_den[:, None]  # (B, B)
    per_anchor = -(log_prob * pos).sum(1) / n_pos.clamp(min=1)
    return _reduce(per_anchor, valid, reduction, z)


def lacln_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.5,
    hard_negatives: bool = True,
    reduction: str = "mean",
    detach_weights: bool = False,
) -> torch.Tensor:
    """Label-aware contrastive loss with hard-negative mining (LACLN), CLCE paper Eq. 3.

    ``z (B, d)`` is L2-normalised inside; ``s_ij = z_i . z_j / tau``. For anchor *i* with
    positives P(i) (other rows with the same label) and negatives N(i) (rows with another
    label), negative *k* is weighted by::

        w_ik = |N(i)| * exp(s_ik) / sum_{k' in N(i)} exp(s_ik')       (all 1 if hard_negatives=False)

    and the anchor's loss is::

        l_i = -log[ 1/|P(i)| * sum_p exp(s_ip) / ( sum_p exp(s_ip) + sum_k w_ik exp(s_ik) ) ]

    Computed as ``log|P| - lse_p(s) + log(exp(lse_p(s)) + exp(log|N| + lse_k(2 s) - lse_k(s)))``
    with masked log-sum-exp. An anchor without negatives (all rows share its label) gets
    the formula with an empty negative sum: its loss is ``log|P(i)|``, a constant.

    Gradients through the weights: by default (``detach_weights=False``) ``w`` is treated
    as the function of ``z`` the formula writes, so the gradient is the exact derivative of
    the loss value, as in Robinson et al.'s reference implementation of hard-negative
    importance weighting (their weights are not detached either). With
    ``detach_weights=True`` the weights are held constant in the backward pass (a
    stop-gradient); the loss *value* is identical either way.

    ``hard_negatives=False`` is the paper's "CL without HNM" ablation (every ``w = 1``).
    See the module docstring for ``reduction`` and batches without positives.
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    s, pos, neg, valid = _similarities(z, labels, temperature)
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    lse_pos = _masked_lse(s, pos)  # log sum_p exp(s_ip)
    if hard_negatives:
        s_w = s.detach() if detach_weights else s
        # log w_ik = log|N(i)| + s_ik - lse_{k' in N(i)} s_ik'
        log_w = torch.log(n_neg.clamp(min=1).to(s.dtype))[:, None] + s_w - _masked_lse(s_w, neg)[:, None]
        lse_neg = _masked_lse(log_w + s, neg)  # log sum_k w_ik exp(s_ik)
    else:
        lse_neg = _masked_lse(s, neg)
    lse_neg = torch.where(n_neg > 0, lse_neg, torch.full_like(lse_neg, -math.inf))
    log_den = torch.logaddexp(lse_pos, lse_neg)
    per_anchor = torch.log(n_pos.clamp(min=1).to(s.dtype)) - lse_pos + log_den
    return _reduce(per_anchor, valid, reduction, z)


def clce_loss(
    logits: torch.Tensor,
    z: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.9,
    temperature: float = 0.5,
    hard_negatives: bool = True,
    detach_weights: bool = False,
) -> torch.Tensor:
    """CLCE (CLCE paper Eq. 4): ``(1 - lam) * CE(logits, labels) + lam * LACLN(z, labels)``.

    ``logits (B, C)`` come from the linear head, ``z (B, d)`` from the projection (both
    rows aligned with ``labels (B,)``). ``hard_negatives=False`` gives "CLCE without HNM".
    """
    if not 0.0 <= float(lam) <= 1.0:
        raise ConfigError(f"--lam {lam} is outside [0, 1]; CLCE mixes (1 - lam) * CE + lam * LACLN")
    if logits.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but z has {z.shape[0]}")
    ce = cross_entropy(logits, labels)
    con = lacln_loss(z, labels, temperature, hard_negatives=hard_negatives, detach_weights=detach_weights)
    return (1.0 - lam) * ce + lam * con


# --------------------------------------------------------------------------- helpers


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature {temperature} must be a positive number (e.g. 0.5)")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; choose from {', '.join(_REDUCTIONS)}")


def _similarities(z: torch.Tensor, labels: torch.Tensor, temperature: float):
    """``s = z z^T / tau`` on normalised rows, positive / negative masks, anchors with a positive."""
    if z.ndim != 2:
        raise ValueError(f"z must be (B, d), got shape {tuple(z.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but labels has {labels.shape[0]}")
    z = F.normalize(_upcast(z), dim=1)
    s = z @ z.T / temperature
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(1)
    return s, pos, neg, valid


def _masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp over ``mask``; a finite (huge negative) value for empty rows.

    Masked entries are filled with a finite number rather than ``-inf`` so the backward
    pass never computes ``exp(-inf - -inf)``; callers replace empty rows' results.
    """
    fill = torch.finfo(x.dtype).min / 4  # stays finite when doubled or shifted
    return torch.logsumexp(x.masked_fill(~mask, fill), dim=1)


def _reduce(per_anchor: torch.Tensor, valid: torch.Tensor, reduction: str, z: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return torch.where(valid, per_anchor, torch.full_like(per_anchor, math.nan))
    masked = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    total = masked.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1).to(total.dtype)
