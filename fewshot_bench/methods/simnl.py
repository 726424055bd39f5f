"""SimNL-style dual classifier: similarity to what a class is minus similarity to what it is not."""

from __future__ import annotations

import torch

from ..errors import MethodError
from .base import FewShotMethod, cosine_scores, one_hot, register_method

__all__ = ["SimNL"]


@register_method
class SimNL(FewShotMethod):
    """Positive and negative prototypes, adapted to frozen image features. Inductive.

    Ce Zhang, Simon Stepputtis, Katia Sycara, Yaqi Xie. "Enhancing Vision-Language Few-Shot
    Adaptation with Negative Learning" (SimNL), 2024. https://arxiv.org/abs/2403.12964

    Adaptation: the paper combines positive (what a class is) and negative (what it is not)
    prototypes on CLIP features, with a text branch and instance reweighting; here only the
    visual dual-prototype idea is kept, on frozen features, with no training.

    Positive prototype ``p_n`` = mean of class ``n``'s support; negative prototype ``m_n`` = mean
    of the support features of all *other* classes; score = ``cos(q, p_n) - beta * cos(q, m_n)``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``; N >= 2.
    """

    name = "simnl"
    description = "positive minus beta * negative (other-class) prototype cosine; frozen-feature adaptation"
    paper = "Zhang et al., 2024, arXiv:2403.12964, https://arxiv.org/abs/2403.12964"
    transductive = False
    nonfinite_propagates = True

    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta

    def _check_params(self) -> None:
        if not self.beta >= 0:
            raise MethodError(f"simnl: beta must be >= 0, got {self.beta}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        onehot = one_hot(support_labels, support.dtype)  # (E, N*K, N)
        if onehot.shape[-1] < 2:
            raise MethodError("simnl needs at least 2 classes per episode (negative prototypes)")
        sums, counts = onehot.transpose(1, 2) @ support, onehot.sum(1).unsqueeze(-1)  # (E, N, D), (E, N, 1)
        positive = sums / counts
        negative = (sums.sum(1, keepdim=True) - sums) / (counts.sum(1, keepdim=True) - counts)
        return cosine_scores(query, positive) - self.beta * cosine_scores(query, negative)
