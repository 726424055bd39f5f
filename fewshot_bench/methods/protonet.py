"""ProtoNet: nearest class mean in squared Euclidean distance."""

from __future__ import annotations

import torch

from .base import FewShotMethod, class_means, neg_sq_euclidean, register_method

__all__ = ["ProtoNet"]


@register_method
class ProtoNet(FewShotMethod):
    """Prototypical Networks on frozen features. Inductive.

    Jake Snell, Kevin Swersky, Richard S. Zemel. "Prototypical Networks for Few-shot Learning",
    NeurIPS 2017. https://arxiv.org/abs/1703.05175

    Prototype ``c_n`` = mean of class ``n``'s support features; score = ``-||q - c_n||^2``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    No hyper-parameters.
    """

    name = "protonet"
    description = "nearest class mean, squared Euclidean distance"
    paper = "Snell et al., NeurIPS 2017, https://arxiv.org/abs/1703.05175"
    transductive = False
    batch_invariant = True
    nonfinite_propagates = True

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        return neg_sq_euclidean(query, class_means(support, support_labels))
