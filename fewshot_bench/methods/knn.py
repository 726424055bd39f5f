"""k-nearest-neighbour vote over the support samples."""

from __future__ import annotations

import torch

from ..errors import MethodError
from .base import FewShotMethod, cosine_scores, neg_sq_euclidean, one_hot, register_method

__all__ = ["KNearestNeighbours"]


@register_method
class KNearestNeighbours(FewShotMethod):
    """k-NN majority vote over the support samples, ties broken by distance. Inductive.

    Cover & Hart, "Nearest neighbor pattern classification", IEEE Trans. Inf. Theory 1967.
    https://doi.org/10.1109/TIT.1967.1053964

    Score of class ``n`` = number of its samples among the ``k`` nearest (``k`` capped at N*K)
    plus a tie-break in (0, 1): ``(k - r) / (k + 1)``, ``r`` the rank (0 = nearest) of the class's
    nearest voter; so equal votes go to the class with the nearer neighbour. ``metric`` is
    ``"euclidean"`` or ``"cosine"``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "knn"
    description = "k-nearest-neighbour majority vote (euclidean or cosine), nearest-voter tie-break"
    paper = "Cover & Hart, 1967, https://doi.org/10.1109/TIT.1967.1053964"
    transductive = False
    batch_invariant = True

    def __init__(self, k: int = 5, metric: str = "euclidean") -> None:
        self.k, self.metric = k, metric

    def _check_params(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise MethodError(f"knn: k must be an integer >= 1, got {self.k!r}")
        if self.metric not in ("euclidean", "cosine"):
            raise MethodError(f"knn: metric must be 'euclidean' or 'cosine', got {self.metric!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        sim = (cosine_scores if self.metric == "cosine" else neg_sq_euclidean)(query, support)  # (E, Q, N*K)
        k = min(self.k, support.shape[1])
        nearest = sim.topk(k, dim=-1).indices  # (E, Q, k), nearest first
        labels = torch.gather(support_labels.unsqueeze(1).expand_as(sim), 2, nearest)
        voters = one_hot(labels, support.dtype, int(support_labels.max()) + 1)  # (E, Q, k, N)
        rank_weight = torch.arange(k, 0, -1, dtype=support.dtype, device=support.device) / (k + 1)
        return voters.sum(2) + (voters * rank_weight[:, None]).amax(2)
