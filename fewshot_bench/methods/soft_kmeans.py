"""Soft k-means refinement of prototypes with the (unlabelled) queries, then nearest prototype."""

from __future__ import annotations

import torch

from ..errors import MethodError, is_int
from .base import FewShotMethod, class_means, neg_sq_euclidean, one_hot, register_method

__all__ = ["SoftKMeans", "soft_kmeans_prototypes"]


@register_method
class SoftKMeans(FewShotMethod):
    """Prototypes refined by soft k-means over the queries. Transductive.

    Mengye Ren, Eleni Triantafillou, Sachin Ravi, Jake Snell, Kevin Swersky, Joshua B. Tenenbaum,
    Hugo Larochelle, Richard S. Zemel. "Meta-Learning for Semi-Supervised Few-Shot Classification",
    ICLR 2018. https://arxiv.org/abs/1803.00676 (Sec. 3.2, "Prototypical networks with soft k-means").

    The queries play the unlabelled set of Eq. 2 (no distractor cluster). Starting from the class
    means ``p_c``, each of ``n_iter`` steps computes soft assignments of the queries and the refined
    prototypes (Eq. 2)::

        z_jc = exp(-||q_j - p_c||^2) / sum_c' exp(-||q_j - p_c'||^2)
        p_c  <- (sum_i 1[y_i = c] s_i + sum_j z_jc q_j) / (sum_i 1[y_i = c] + sum_j z_jc)

    (support samples keep their one-hot labels); score = ``-||q - p_c||^2``.

    Hyper-parameters: ``n_iter=1`` refinement steps (the paper and its code, ``num_cluster_steps=1``).
    Preprocessing ``none``: the paper scores the meta-trained embeddings as they are; the soft
    assignment has no temperature, so the feature scale matters (``--preprocess`` changes it).
    Differences: none known; the official code guards a zero total weight, which cannot occur here
    (every class has a support sample).
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "soft-kmeans"
    description = "prototypes refined by soft k-means over the queries (Ren et al. Eq. 2, transductive)"
    paper = "Ren et al., ICLR 2018, https://arxiv.org/abs/1803.00676"
    transductive = True
    batch_invariant = True  # a fixed number of steps, no stopping test: episodes never interact
    nonfinite_propagates = True

    def __init__(self, n_iter: int = 1) -> None:
        self.n_iter = n_iter

    def _check_params(self) -> None:
        if not is_int(self.n_iter, 1):
            raise MethodError(f"soft-kmeans: n_iter must be an integer >= 1, got {self.n_iter!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        return neg_sq_euclidean(query, soft_kmeans_prototypes(support, support_labels, query, self.n_iter))


def soft_kmeans_prototypes(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_iter: int
) -> torch.Tensor:
    """Prototypes ``(E, N, D)`` after ``n_iter`` soft k-means steps (Ren et al. 2018, Eq. 2)."""
    onehot = one_hot(support_labels, support.dtype)  # (E, N*K, N)
    counts, sums = onehot.sum(1), onehot.transpose(1, 2) @ support  # (E, N), (E, N, D)
    prototypes = class_means(support, support_labels)
    for _ in range(n_iter):
        z = neg_sq_euclidean(query, prototypes).softmax(-1)  # (E, Q, N)
        prototypes = (sums + z.transpose(1, 2) @ query) / (counts + z.sum(1)).unsqueeze(-1)
    return prototypes
