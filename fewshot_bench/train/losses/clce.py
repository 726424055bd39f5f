"""CLCE (CLCE paper Eq. 4) and its "without hard-negative mining" ablation."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import check_lam, register_loss
from .ce import cross_entropy
from .lacln import CLCE_PAPER, LACLN, lacln_loss
from .mixed import CEPlusContrastive

__all__ = ["CLCE", "CLCENoHNM", "clce_loss"]


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

    ``logits (B, C)`` from the linear head, ``z (B, d)`` from the projection, rows aligned with
    ``labels (B,)``. ``hard_negatives=False`` gives "CLCE without HNM". Functional form of
    :class:`CLCE` / :class:`CLCENoHNM`.
    """
    check_lam(lam)
    if logits.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but z has {z.shape[0]}")
    ce = cross_entropy(logits, labels)
    con = lacln_loss(z, labels, temperature, hard_negatives=hard_negatives, detach_weights=detach_weights)
    return (1.0 - lam) * ce + lam * con


@register_loss
class CLCE(CEPlusContrastive):
    """CLCE, Long et al. (2024), Eq. 4: ``L = (1 - lam) * CE(logits, y) + lam * LACLN(z, y; tau)``.

    LACLN is :class:`~.lacln.LACLN` (Eq. 3) with hard-negative weights
    ``w_ik = |N(i)| exp(s_ik) / sum_{k' in N(i)} exp(s_ik')``. Defaults are the paper's
    ``lam = 0.9``, ``tau = 0.5``. Source: https://arxiv.org/abs/2402.14551.
    """

    name: ClassVar[str] = "clce"
    description: ClassVar[str] = "(1-lam)*CE + lam*LACLN with hard-negative weights (CLCE Eq. 4)"
    paper: ClassVar[str] = f"{CLCE_PAPER} (Eq. 4)"
    term_class = LACLN
    term_fixed: ClassVar[dict] = {"hard_negatives": True}

    def __init__(self, lam: float = 0.9, temperature: float = 0.5) -> None:
        self.lam = lam
        self.temperature = temperature


@register_loss
class CLCENoHNM(CLCE):
    """CLCE without hard-negative mining (the paper's ablation): Eq. 4 with every ``w_ik = 1`` in Eq. 3.

    ``L = (1 - lam) * CE + lam * l``, ``l_i = -log[ 1/|P(i)| * sum_p exp(s_ip) / (sum_p exp(s_ip) +
    sum_{k in N(i)} exp(s_ik)) ]``. Source: https://arxiv.org/abs/2402.14551 (ablation "w/o HNM").
    """

    name: ClassVar[str] = "clce-nohnm"
    description: ClassVar[str] = "CLCE ablation without hard-negative mining (all weights 1)"
    paper: ClassVar[str] = f"{CLCE_PAPER} (Eq. 4, ablation without HNM)"
    term_fixed: ClassVar[dict] = {"hard_negatives": False}  # CLCE's parameters and defaults, every w_ik = 1
