"""Transductive fine-tuning (Dhillon et al.): a support-initialised classifier, support CE + query entropy."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..errors import MethodError
from .base import FewShotMethod, class_means, one_hot, register_method

__all__ = ["TransductiveFinetuning", "transductive_ft_logits", "transductive_ft_loss"]

CLASSIFIERS = ("linear", "euclidean")


def transductive_ft_logits(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    classifier: str,
) -> torch.Tensor:
    """Logits ``(E, M, N)`` of features ``(E, M, D)``: weights ``(E, N, D)``, bias ``(E, N)`` (``"linear"``).

    ``"linear"``: ``temperature * (W x + b)`` (the paper's Eq. 7 on L2-normalised ``x``);
    ``"euclidean"``: ``-temperature * ||x - w_k||`` (easyfsl's ``TransductiveFinetuning``; no bias).
    """
    if classifier == "euclidean":
        return -temperature * _distances(features, weights)
    return temperature * (features @ weights.transpose(1, 2) + bias.unsqueeze(1))


def _distances(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``||x - w_k||`` ``(E, M, N)`` as ``torch.cdist`` computes it: directly for at most 25 rows on both
    sides, else by ``sqrt(max(|x|^2 - 2 x.w + |w|^2, 1e-30))``. The latter is written out, so autograd goes
    through one ``baddbmm`` instead of cdist's backward (5x slower on CPU, which dominated this head)."""
    if features.shape[1] <= 25 and weights.shape[1] <= 25:
        return torch.cdist(features, weights)
    x2 = torch.linalg.vector_norm(features, dim=-1, keepdim=True).square()
    w2 = weights.square().sum(-1).unsqueeze(1)
    return torch.baddbmm(x2 + w2, features, weights.transpose(1, 2), alpha=-2.0).clamp_min(1e-30).sqrt()


def _support_ce(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``1/|S| sum_i -log p(y_i | x_i)`` per episode ``(E,)``."""
    return -(onehot * torch.log_softmax(logits, -1)).sum(-1).mean(-1)


def _query_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``1/|Q| sum_i H(p(. | x_i))`` per episode ``(E,)``, Shannon entropy in nats."""
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1).mean(-1)


def transductive_ft_loss(
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    support: torch.Tensor,
    support_onehot: torch.Tensor,
    query: torch.Tensor,
    *,
    temperature: float = 1.0,
    classifier: str = "linear",
    entropy_weight: float = 1.0,
) -> torch.Tensor:
    """The paper's Eq. 8 per episode ``(E,)``: ``1/|S| sum CE(support) + w/|Q| sum H(p(.|query))``.

    support ``(E, |S|, D)`` with one-hot labels ``(E, |S|, N)``, query ``(E, |Q|, D)``; logits from
    :func:`transductive_ft_logits`. Differentiable in ``weights`` and ``bias``.
    """
    ce = _support_ce(transductive_ft_logits(support, weights, bias, temperature, classifier), support_onehot)
    entropy = _query_entropy(transductive_ft_logits(query, weights, bias, temperature, classifier))
    return ce + entropy_weight * entropy


@register_method
class TransductiveFinetuning(FewShotMethod):
    """Transductive fine-tuning of a support-initialised classifier on frozen features. Transductive.

    Guneet S. Dhillon, Pratik Chaudhari, Avinash Ravichandran, Stefano Soatto. "A Baseline for Few-Shot
    Image Classification", ICLR 2020. https://arxiv.org/abs/1909.02729

    Support-based initialisation (Sec. 3.1, Eq. 6-7): logits ``z = W x / ||x|| + b`` with ``w_k`` the
    L2-normalised mean of class ``k``'s (normalised) support features and ``b = 0``. Transductive
    fine-tuning (Sec. 3.2, Eq. 8) minimises ``1/|S| sum_S -log p(y|x) + 1/|Q| sum_Q H(p(.|x))`` with Adam,
    as the paper: ``epochs`` = 25 at ``lr`` = 5e-5, each epoch making two updates, one on the support
    cross-entropy and one on the query entropy (``alternate=True``); ``temperature`` (scales every logit)
    and ``entropy_weight`` are 1 (the paper sets both to 1). Queries are scored with the final logits.
    Preprocessing ``l2n``: the classifier's input is L2-normalised in the paper (Eq. 7).
    Hyper-parameters: ``lr`` 5e-5, ``epochs`` 25, ``temperature`` 1.0, ``entropy_weight`` 1.0,
    ``classifier`` ``"linear"`` (or ``"euclidean"``), ``alternate`` True.

    Differences: the paper fine-tunes the whole network (backbone included) and feeds the classifier
    the backbone's logits after a ReLU; on frozen features only ``W`` and ``b`` are trained, on the
    features as given (no ReLU; features of ReLU networks are non-negative already), and class means
    are taken of L2-normalised features (the paper averages before normalising; equal for 1-shot). With
    only the classifier trained, 25 epochs at lr 5e-5 move it little from its initialisation.
    easyfsl 1.5.0's ``TransductiveFinetuning`` is ``classifier="euclidean", alternate=False`` (one
    update per step on the summed loss; same lr, 25 steps, temperature 1) with ``preprocess="none"``:
    it trains class prototypes scored by ``-||x - c_k||``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> logits ``(E, Q, N)``.
    """

    name = "transductive-ft"
    description = (
        "Transductive fine-tuning: support-initialised classifier, Adam on support CE + query entropy"
    )
    paper = "Dhillon et al., ICLR 2020, https://arxiv.org/abs/1909.02729"
    transductive = True
    preprocessing = "l2n"
    batch_invariant = True

    def __init__(
        self,
        lr: float = 5e-5,
        epochs: int = 25,
        temperature: float = 1.0,
        entropy_weight: float = 1.0,
        classifier: str = "linear",
        alternate: bool = True,
    ) -> None:
        self.lr, self.epochs, self.temperature = lr, epochs, temperature
        self.entropy_weight, self.classifier, self.alternate = entropy_weight, classifier, alternate

    def _check_params(self) -> None:
        for key, low in (("lr", "> 0"), ("temperature", "> 0"), ("entropy_weight", ">= 0")):
            value = getattr(self, key)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
            if not (ok and (value > 0 if low == "> 0" else value >= 0) and value < math.inf):
                raise MethodError(f"{self.name}: {key} must be a finite number {low}, got {value!r}")
        if not (
            isinstance(self.epochs, numbers.Integral)
            and not isinstance(self.epochs, bool)
            and self.epochs >= 0
        ):
            raise MethodError(f"{self.name}: epochs must be an integer >= 0, got {self.epochs!r}")
        if self.classifier not in CLASSIFIERS:
            raise MethodError(
                f"{self.name}: classifier must be one of {', '.join(CLASSIFIERS)}; got {self.classifier!r}"
            )
        if not isinstance(self.alternate, bool):
            raise MethodError(f"{self.name}: alternate must be True or False, got {self.alternate!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        support, query = (t.clone() if t.is_inference() else t for t in (support, query))  # autograd-safe
        onehot = one_hot(support_labels, support.dtype)
        means = class_means(support, support_labels)
        if self.classifier == "euclidean":
            weights, bias, params = means.requires_grad_(), None, [means]
        else:
            weights = F.normalize(means, dim=-1).requires_grad_()
            bias = means.new_zeros(means.shape[:2]).requires_grad_()
            params = [weights, bias]
        t, c, lam = self.temperature, self.classifier, self.entropy_weight

        def support_loss() -> torch.Tensor:
            return _support_ce(transductive_ft_logits(support, weights, bias, t, c), onehot)

        def query_loss() -> torch.Tensor:
            return lam * _query_entropy(transductive_ft_logits(query, weights, bias, t, c))

        # per-episode losses are summed: each episode's parameters get exactly their own gradient
        steps = [support_loss, query_loss] if self.alternate else [lambda: support_loss() + query_loss()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.epochs):
                for loss in steps:
                    optimizer.zero_grad()
                    loss().sum().backward()
                    optimizer.step()
        with torch.no_grad():
            return transductive_ft_logits(query, weights, bias, t, c)
