"""Supervised contrastive loss (SupCon) and its λ-mix with cross-entropy (``ce+supcon``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._pairs import check_reduction, masked_lse, reduce_anchors, similarities
from .base import ContrastiveLoss, check_temperature, register_loss
from .mixed import CEPlusContrastive

__all__ = ["CESupCon", "SupCon", "supcon_loss"]

_KHOSLA = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020, https://arxiv.org/abs/2004.11362"


def supcon_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Supervised contrastive loss, the ``L_out`` form of Khosla et al. (2020), Eq. 2.

    For anchor *i* with positives P(i) and all other rows A(i)::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) ),  s = z z^T / tau

    ``z (B, d)`` is L2-normalised inside. ``reduction``: ``"mean"`` over anchors with a positive,
    ``"sum"``, or ``"none"`` (per anchor, NaN without a positive, so ``nanmean`` equals ``"mean"``).
    No anchor with a positive: ``"mean"``/``"sum"`` give a zero still attached to the graph.
    """
    check_temperature(temperature)
    check_reduction(reduction)
    s, pos, _neg, valid = similarities(z, labels, temperature)
    not_self = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    log_den = masked_lse(s, not_self)  # (B,)
    log_prob = s - log_den[:, None]  # (B, B)
    per_anchor = -(log_prob * pos).sum(1) / pos.sum(1).clamp(min=1)
    return reduce_anchors(per_anchor, valid, reduction)


@register_loss
class SupCon(ContrastiveLoss):
    """Supervised contrastive loss, pure (no CE term): Khosla et al. (2020), Eq. 2 (``L_out``).

    ``z (B', d)`` is L2-normalised, ``s_ij = z_i . z_j / tau``; P(i) = other rows with the label
    of *i*, A(i) = all rows but *i*::

        L = 1/|I| * sum_{i in I} -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )

    averaged over the anchors I that have a positive. Source: Khosla et al., NeurIPS 2020,
    https://arxiv.org/abs/2004.11362; reference code HobbitLong/SupContrast ``losses.py``.

    Differences from that code: it multiplies the loss by ``temperature / base_temperature``
    (1 with its defaults 0.07/0.07) — not part of the paper's equation, not applied here; and it
    averages over *all* anchors, counting an anchor without a positive as 0 (with two views per
    image every anchor has one, so the two agree in training). Default ``temperature=0.1``, the
    paper's value; the SupContrast code defaults to 0.07, and before this registry our training
    loop passed the CLI default 0.5 (give ``--temperature 0.5`` to reproduce such runs).
    """

    name: ClassVar[str] = "supcon"
    description: ClassVar[str] = "supervised contrastive loss L_out (pure, no CE term)"
    paper: ClassVar[str] = _KHOSLA

    def __init__(self, temperature: float = 0.1) -> None:
        self.temperature = temperature

    def check_params(self) -> None:
        check_temperature(self.temperature)

    def term(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, labels, self.temperature)


@register_loss
class CESupCon(CEPlusContrastive):
    """CE + SupCon, the "CE+SupCon" row of the CLCE paper: ``(1 - lam)·CE + lam·SupCon``.

    ``L = (1 - lam) * CE(logits, y) + lam * L_SupCon(z, y; tau)`` with ``L_SupCon`` of
    :class:`SupCon` (Khosla et al., 2020, Eq. 2) — the same weighted combination as CLCE (Long et
    al., 2024, Eq. 4, https://arxiv.org/abs/2402.14551) with SupCon in place of LACLN, and the same
    defaults ``lam=0.9``, ``temperature=0.5``.
    """

    name: ClassVar[str] = "ce+supcon"
    description: ClassVar[str] = "(1-lam)*CE + lam*SupCon, CLCE's weighting with SupCon as the contrastive term"
    paper: ClassVar[str] = f"{_KHOSLA}; mix as Long et al. 2024 Eq. 4, https://arxiv.org/abs/2402.14551"
    term_class = SupCon

    def __init__(self, lam: float = 0.9, temperature: float = 0.5) -> None:
        self.lam = lam
        self.temperature = temperature
