"""BD-CSPN: prototypes rectified with soft-weighted pseudo-labelled queries, cosine classifier."""

from __future__ import annotations

import torch

from ..errors import MethodError
from .base import FewShotMethod, class_means, cosine_scores, one_hot, register_method

__all__ = ["BDCSPN"]


@register_method
class BDCSPN(FewShotMethod):
    """Bias-diminishing cosine-similarity prototypical network on frozen features. Transductive.

    Jinlu Liu, Liang Song, Yongqiang Qin. "Prototype Rectification for Few-Shot Learning",
    ECCV 2020. https://arxiv.org/abs/1911.10713

    Cross-class bias: queries are shifted by ``mean(support) - mean(query)``. Intra-class bias:
    each prototype becomes the average of its support samples and of the (shifted) queries
    predicted as its class, weighted by ``exp(temperature * cos(x, prototype))``. Queries are
    then scored by cosine similarity to the rectified prototypes. ``temperature=1`` reproduces
    easyfsl's ``BDCSPN``; the paper uses 10.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "bdcspn"
    description = "BD-CSPN prototype rectification with pseudo-labelled queries (transductive)"
    paper = "Liu et al., ECCV 2020, https://arxiv.org/abs/1911.10713"
    transductive = True
    nonfinite_propagates = True

    def __init__(self, temperature: float = 10.0) -> None:
        self.temperature = temperature

    def _check_params(self) -> None:
        if not self.temperature > 0:
            raise MethodError(f"bdcspn: temperature must be > 0, got {self.temperature}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        prototypes = class_means(support, support_labels)  # (E, N, D)
        shifted = query + (support.mean(1, keepdim=True) - query.mean(1, keepdim=True))
        onehot_s = one_hot(support_labels, support.dtype)  # (E, N*K, N)
        query_cos = cosine_scores(shifted, prototypes)  # (E, Q, N)
        onehot_q = one_hot(query_cos.argmax(-1), support.dtype, onehot_s.shape[-1])
        # exp(t * (cos - 1)): the same weights up to a per-class factor, without overflow
        w_s = onehot_s * torch.exp(self.temperature * (cosine_scores(support, prototypes) - 1))
        w_q = onehot_q * torch.exp(self.temperature * (query_cos - 1))
        total = (w_s.sum(1) + w_q.sum(1)).unsqueeze(-1)  # (E, N, 1)
        rectified = (w_s.transpose(1, 2) @ support + w_q.transpose(1, 2) @ shifted) / total
        return cosine_scores(query, rectified)
