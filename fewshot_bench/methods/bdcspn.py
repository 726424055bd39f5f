"""BD-CSPN: prototypes rectified with soft-weighted pseudo-labelled queries, cosine classifier."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import MethodError, is_int, is_number
from .base import FewShotMethod, class_means, cosine_scores, one_hot, register_method

__all__ = ["BDCSPN", "VARIANTS", "rectified_prototypes"]

VARIANTS = ("paper", "easyfsl")


@register_method
class BDCSPN(FewShotMethod):
    """Bias-diminishing cosine-similarity prototypical network on frozen features. Transductive.

    Jinlu Liu, Liang Song, Yongqiang Qin. "Prototype Rectification for Few-Shot Learning",
    ECCV 2020. https://arxiv.org/abs/1911.10713

    On L2-normalised features (preprocessing ``l2n``), per episode with support ``S`` (labels
    ``y``) and queries ``Q``:

    1. cross-class bias: shift every query by ``xi = mean_{x in S} x - mean_{q in Q} q``;
    2. basic prototypes ``P_n`` = mean of class ``n``'s support; each shifted query gets the
       pseudo-label ``argmax_n cos(q + xi, P_n)``;
    3. intra-class bias: ``X'_n`` = class ``n``'s support samples and the shifted queries
       pseudo-labelled ``n``; rectified prototype ``P'_n = sum_{x in X'_n} w_x x`` with
       ``w_x = exp(eps cos(x, P_n)) / sum_{x' in X'_n} exp(eps cos(x', P_n))``, ``eps = 10``
       (``temperature``);
    4. score of query ``q`` for class ``n``: ``cos(q + xi, P'_n)`` (the shifted query, in the
       space the rectified prototypes live in).

    ``top_z``: the paper grows each class with "top Z" confident pseudo-labelled queries; by
    default (``None``) every query pseudo-labelled ``n`` joins ``X'_n``, as in the public
    reimplementations (easyfsl; Veilleux et al., NeurIPS 2021) — we could not confirm the paper's
    value of Z; ``top_z=Z`` keeps only the ``Z`` most confident (highest ``cos(q + xi, P_n)``)
    per class.

    ``variant="easyfsl"``: easyfsl 1.5's ``BDCSPN`` rule, which scores the *unshifted* query,
    ``cos(q, P'_n)``; with ``temperature=1`` and no preprocessing (preset ``bdcspn:easyfsl``) it
    equals easyfsl's scores. (This library's earlier default was that rule with
    ``temperature=10`` on raw features: ``create("bdcspn", variant="easyfsl", preprocess="none")``.)
    Other reimplementations differ again (Veilleux et al. re-predict the support samples and
    average class-softmax weights; others soft-assign every sample).
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "bdcspn"
    description = "BD-CSPN prototype rectification with pseudo-labelled queries (transductive)"
    paper = "Liu et al., ECCV 2020, https://arxiv.org/abs/1911.10713"
    transductive = True
    preprocessing = "l2n"
    nonfinite_propagates = True
    batch_invariant = True  # closed form, episode by episode
    presets: ClassVar[dict[str, dict]] = {
        "easyfsl": {"variant": "easyfsl", "temperature": 1.0, "preprocessing": "none"},
    }

    def __init__(self, temperature: float = 10.0, variant: str = "paper", top_z: int | None = None) -> None:
        self.temperature, self.variant, self.top_z = temperature, variant, top_z

    def _check_params(self) -> None:
        if not (is_number(self.temperature) and self.temperature > 0):
            raise MethodError(f"bdcspn: temperature must be a number > 0, got {self.temperature!r}")
        if self.variant not in VARIANTS:
            raise MethodError(f"bdcspn: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.top_z is not None and not is_int(self.top_z, 0):
            raise MethodError(f"bdcspn: top_z must be None or an integer >= 0, got {self.top_z!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        rectified = rectified_prototypes(support, support_labels, query, self.temperature, top_z=self.top_z)
        if self.variant == "easyfsl":
            return cosine_scores(query, rectified)
        return cosine_scores(query + _shift(support, query), rectified)


def rectified_prototypes(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, temperature: float,
    *, top_z: int | None = None,
) -> torch.Tensor:
    """BD-CSPN's rectified prototypes ``P'_n`` ``(E, N, D)`` (also LaplacianShot's ``rectification="bdcspn"``).

    Steps 1-3 of :class:`BDCSPN` on the features as given; ``top_z`` keeps only the ``top_z``
    most confident pseudo-labelled queries per class (``None``: all).
    """
    prototypes = class_means(support, support_labels)  # (E, N, D)
    shifted = query + _shift(support, query)
    onehot_s = one_hot(support_labels, support.dtype)  # (E, N*K, N)
    query_cos = cosine_scores(shifted, prototypes)  # (E, Q, N)
    onehot_q = one_hot(query_cos.argmax(-1), support.dtype, onehot_s.shape[-1])
    if top_z is not None:
        confidence = torch.where(onehot_q > 0, query_cos, -torch.inf)
        rank = confidence.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # within each class
        onehot_q = onehot_q * (rank < top_z)
    # exp(t * (cos - 1)): the same weights up to a per-class factor, without overflow
    w_s = onehot_s * torch.exp(temperature * (cosine_scores(support, prototypes) - 1))
    w_q = onehot_q * torch.exp(temperature * (query_cos - 1))
    total = (w_s.sum(1) + w_q.sum(1)).unsqueeze(-1)  # (E, N, 1)
    return (w_s.transpose(1, 2) @ support + w_q.transpose(1, 2) @ shifted) / total


def _shift(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """BD-CSPN's cross-class shift ``xi = mean(support) - mean(query)`` per episode, ``(E, 1, D)``."""
    return support.mean(1, keepdim=True) - query.mean(1, keepdim=True)
