"""SimNL's visual branch: positive and negative cache classifiers with few-shot instance reweighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MethodError, is_number
from .base import FewShotMethod, one_hot, register_method

__all__ = ["SimNL"]


@register_method
class SimNL(FewShotMethod):
    """SimNL, image-only and training-free: positive plus negative cache classifiers. Inductive.

    Ce Zhang, Simon Stepputtis, Katia Sycara, Yaqi Xie. "Enhancing Vision-Language Few-Shot
    Adaptation with Negative Learning" (SimNL; first version titled DualAdapter), WACV 2025.
    https://arxiv.org/abs/2403.12964 — code: https://github.com/zhangce01/SimNL

    On L2-normalised features (preprocessing ``l2n``; their features are unit CLIP embeddings),
    support ``f_j`` with labels ``y_j``, ``K_n`` shots of class ``n``, query ``q``:

    * few-shot instance reweighting (their ``generate_soft_label``): ``a_j`` = mean cosine of
      ``f_j`` to the other shots of its class (0 with one shot), and the one-hot label of ``f_j``
      is scaled by ``w_j = K_{y_j} softmax_{k: y_k = y_j}(a_k / tau)_j``, ``tau = 1``;
    * positive cache classifier (Tip-Adapter's affinity): ``pos_n = sum_{j: y_j = n} w_j
      exp(-beta (1 - q . f_j))``;
    * negative cache classifier: a negative key ``k_n = normalise(mean of the other classes'
      mean features)`` stands for "not class ``n``", ``neg_n = K_n exp(-beta q . k_n)``: large
      when the query is far from everything that is not ``n``;
    * score ``lam pos_n + (1 - lam) neg_n``.

    Kept from the paper: the positive/negative dual classifiers on the visual cache and the
    instance reweighting, with their code's formulas. Dropped, since we have frozen image
    features only: the CLIP text branch (positive prompts ``100 q . W`` and negative prompts
    ``15 (1 - q . W_neg)``, and with it the cache weight ``alpha``, which then scales both terms
    alike), the trained residual adapters on keys and text weights, and the per-dataset search of
    ``beta``, ``alpha``, ``lam`` on a validation split. Defaults therefore are fixed: ``beta = 1``
    (their initial value), ``lam = 0.8`` (the middle of their searched range, 0.6-1.0),
    ``tau = 1``. One departure for ``K > 1`` shots: their code builds ``K`` negative keys per class
    by pairing the ``s``-th shot of every other class (an order-dependent pairing); we use one key
    from the other classes' means, weighted by ``K_n`` (identical for 1 shot). Their "other
    classes" are the ``N - 1`` least similar class means, which is all other classes whenever a
    class mean is most similar to itself.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``; N >= 2.
    """

    name = "simnl"
    description = "SimNL visual branch: positive + negative cache classifiers, instance reweighting (no text)"
    paper = "Zhang et al., WACV 2025, https://arxiv.org/abs/2403.12964"
    transductive = False
    batch_invariant = True
    preprocessing = "l2n"
    nonfinite_propagates = True

    def __init__(self, beta: float = 1.0, lam: float = 0.8, tau: float = 1.0) -> None:
        self.beta, self.lam, self.tau = beta, lam, tau

    def _check_params(self) -> None:
        if not (all(is_number(v) for v in (self.beta, self.lam, self.tau))
                and self.beta > 0 and 0 <= self.lam <= 1 and self.tau > 0):
            raise MethodError(f"simnl: need beta > 0, 0 <= lam <= 1, tau > 0; got {self!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        onehot = one_hot(support_labels, support.dtype)  # (E, n, N)
        if onehot.shape[-1] < 2:
            raise MethodError("simnl needs at least 2 classes per episode (negative classifier)")
        counts = onehot.sum(1)  # (E, N)
        weighted = onehot * _instance_weights(support, onehot, counts, self.tau)[..., None]
        positive = torch.exp(-self.beta * (1 - query @ support.transpose(1, 2))) @ weighted  # (E, Q, N)
        means = (onehot.transpose(1, 2) @ support) / counts[..., None]  # (E, N, D)
        others = F.normalize(means.sum(1, keepdim=True) - means, dim=-1)  # (E, N, D): "not class n"
        negative = counts[:, None, :] * torch.exp(-self.beta * (query @ others.transpose(1, 2)))
        return self.lam * positive + (1 - self.lam) * negative


def _instance_weights(support: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor, tau: float) -> torch.Tensor:
    """SimNL's shot weights ``(E, n)``: ``K_c`` times a softmax, within each class, of the mean
    cosine of a shot to the other shots of its class (divided by ``tau``); 1 for a single shot."""
    same = onehot @ onehot.transpose(1, 2)  # (E, n, n): same class
    gram = support @ support.transpose(1, 2)
    k = (onehot * counts[:, None, :]).sum(-1)  # (E, n): shots of each sample's class
    others = (gram * same).sum(-1) - gram.diagonal(dim1=1, dim2=2)
    mean_sim = torch.where(k > 1, others / (k - 1).clamp_min(1), torch.zeros_like(k)) / tau
    peak = torch.where(same > 0, mean_sim[:, None, :], -torch.inf).amax(-1)  # per-class max, stable softmax
    expo = torch.exp(mean_sim - peak)
    return k * expo / (same * expo[:, None, :]).sum(-1)
