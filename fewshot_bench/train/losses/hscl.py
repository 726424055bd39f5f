"""Hard-negative supervised contrastive learning (H-SCL) and its λ-mix with cross-entropy."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ._pairs import check_reduction, masked_lse, reduce_anchors, similarities
from .base import ContrastiveLoss, check_bool, check_nonnegative, check_temperature, register_loss
from .mixed import CEPlusContrastive

__all__ = ["CEHSCL", "HSCL", "hscl_loss"]

_JIANG = (
    "Jiang et al., Supervised Contrastive Learning with Hard Negative Samples, 2022, "
    "https://arxiv.org/abs/2209.00078 (code: github.com/rjiang03/H-SCL)"
)


def hscl_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.5,
    beta: float = 1.0,
    reduction: str = "mean",
    detach_weights: bool = False,
) -> torch.Tensor:
    """H-SCL of ``z (M, d)`` with ``labels (M,)``; see :class:`HSCL` for the equation.

    ``reduction``: ``"mean"`` averages over all (anchor, positive) pairs, as the authors' code
    does; ``"none"`` gives each anchor's mean over its positives (NaN without a positive);
    ``"sum"`` sums those per-anchor values. So ``"mean"`` equals ``nanmean("none")`` only when
    every anchor has the same number of positives (e.g. balanced batches). No pair at all:
    ``"mean"``/``"sum"`` give a zero still attached to the graph.

    Computed in log space: ``c_i = log(M - 2) + lse_k((beta + 1) s_ik) - lse_k(beta s_ik)`` over
    ``k in N(i)`` and ``l_ip = logaddexp(s_ip, c_i) - s_ip``.
    """
    check_temperature(temperature)
    check_nonnegative(beta, "--beta")
    check_reduction(reduction)
    s, pos, neg, valid = similarities(z, labels, temperature)
    m = s.shape[0]
    n_neg = neg.sum(1)
    s_w = s.detach() if detach_weights else s
    # log E_{q_beta}[exp(s_ik)] = lse_k(beta s_w + s) - lse_k(beta s_w), q_beta ∝ exp(beta s_ik) on N(i)
    log_mean_neg = masked_lse(beta * s_w + s, neg) - masked_lse(beta * s_w, neg)
    c = math.log(m - 2) + log_mean_neg if m > 2 else torch.full_like(log_mean_neg, -math.inf)
    c = torch.where(n_neg > 0, c, torch.full_like(log_mean_neg, -math.inf))  # no negatives: no term
    pair = torch.logaddexp(s, c[:, None]) - s  # (M, M): l_ip for every (i, p)
    n_pos = pos.sum(1)
    per_anchor_sum = torch.where(pos, pair, torch.zeros_like(pair)).sum(1)
    if reduction == "mean":
        return reduce_anchors(per_anchor_sum, valid, "mean", denominator=n_pos.sum())
    return reduce_anchors(per_anchor_sum / n_pos.clamp(min=1), valid, reduction)


@register_loss
class HSCL(ContrastiveLoss):
    """H-SCL, hard-negative supervised contrastive loss: Jiang, Nguyen, Ishwar & Aeron (2022).

    ``z (M, d)`` is L2-normalised (``M = B'`` rows: both views of every image, gathered over ranks
    under DDP), ``s_ij = z_i . z_j / tau``; P(i) = other rows with the label of *i*, N(i) = rows with
    another label. The class-conditional negative distribution is tilted towards hard negatives::

        q_ik = exp(beta * s_ik) / sum_{k' in N(i)} exp(beta * s_ik')            (k in N(i))

        l_ip = -log( exp(s_ip) / ( exp(s_ip) + (M - 2) * sum_{k in N(i)} q_ik exp(s_ik) ) )

        L = 1 / sum_i |P(i)| * sum_i sum_{p in P(i)} l_ip

    Only negatives are reweighted (positives never enter another pair's denominator); the weights
    are self-normalised over N(i); there is no debiasing term (the τ+ of Robinson et al.'s H-UCL is
    not used: labels already exclude false negatives). ``beta = 0`` gives uniform ``q`` — the
    authors' SCL baseline ``(M - 2) * mean_k exp(s_ik)``, which is *not* Khosla et al.'s SupCon.

    Source: https://arxiv.org/abs/2209.00078 (H-SCL, building on Robinson et al., ICLR 2021,
    https://arxiv.org/abs/2010.04592); we follow the authors' code (``nce_supervised_hard`` in
    rjiang03/H-SCL ``main/main.py``): the multiplier is the constant ``M - 2`` (the number of
    negatives in unsupervised CL), not ``|N(i)|``, and the mean runs over pairs. That code fixes
    ``tau = 0.5`` (``exp(2 z.z)``) — our default; its ``--beta`` default is 1 in one revision and 0.5
    in another, and its README quotes β = 5 on CIFAR-100: β is tuned per dataset; our default is 1.
    Its weights carry gradient (``gradient_imp=True``) except, in one revision, for ``beta < 1``;
    ``detach_weights=True`` holds them constant here (same value, different gradient).

    Edge cases: an anchor without negatives, or ``M <= 2``, has no negative term (``l_ip = 0``);
    anchors without positives contribute no pair.

    Compared with LACLN (CLCE Eq. 3): LACLN uses β = 1, the multiplier ``|N(i)|``, and one log per
    anchor over the sum of all its positives; H-SCL has one log per (anchor, positive) pair.
    """

    name: ClassVar[str] = "h-scl"
    description: ClassVar[str] = "supervised contrastive loss with β-tilted hard negatives (H-SCL), no CE"
    paper: ClassVar[str] = _JIANG

    def __init__(self, temperature: float = 0.5, beta: float = 1.0, detach_weights: bool = False) -> None:
        self.temperature = temperature
        self.beta = beta
        self.detach_weights = detach_weights

    def check_params(self) -> None:
        check_temperature(self.temperature)
        check_nonnegative(self.beta, "--beta")
        check_bool(self.detach_weights, "detach_weights")

    def term(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hscl_loss(z, labels, self.temperature, self.beta, detach_weights=self.detach_weights)


@register_loss
class CEHSCL(CEPlusContrastive):
    """CE + H-SCL: ``L = (1 - lam) * CE(logits, y) + lam * L_H-SCL(z, y; tau, beta)``.

    ``L_H-SCL`` is :class:`HSCL` (Jiang et al., 2022, https://arxiv.org/abs/2209.00078); the
    weighting is CLCE's (Long et al., 2024, Eq. 4), with its defaults ``lam = 0.9``, ``tau = 0.5``.
    This combination is ours (neither paper trains it); it completes the CE + contrastive grid.
    """

    name: ClassVar[str] = "ce+h-scl"
    description: ClassVar[str] = "(1-lam)*CE + lam*H-SCL, CLCE's weighting with H-SCL as the contrastive term"
    paper: ClassVar[str] = f"{_JIANG}; mix as Long et al. 2024 Eq. 4, https://arxiv.org/abs/2402.14551"
    term_class = HSCL

    def __init__(self, lam: float = 0.9, temperature: float = 0.5, beta: float = 1.0) -> None:
        self.lam = lam
        self.temperature = temperature
        self.beta = beta
