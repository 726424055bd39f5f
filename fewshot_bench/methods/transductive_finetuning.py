"""Transductive fine-tuning (Dhillon et al.): a support-initialised classifier, support CE + query entropy."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..errors import MethodError, is_int, is_number
from .base import FewShotMethod, class_means, one_hot, register_method
from .tim import adam

__all__ = ["TransductiveFinetuning", "transductive_ft_grad", "transductive_ft_logits", "transductive_ft_loss"]

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


def _distances(features: torch.Tensor, weights: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """``||x - w_k||`` ``(E, M, N)`` for features ``(E, M, D)``, weights ``(E, N, D)``; ``x2`` ``(E, M, 1)``:
    the ``|x|^2``, if known.

    ``sqrt(max(|x|^2 - 2 x.w + |w|^2, 1e-30))`` through one ``baddbmm`` (as ``torch.cdist`` for more than
    25 rows; autograd through it is 5x faster than through cdist's backward), except where that
    expansion cancels (``||x - w||^2 < 1e-2 (|x|^2 + |w|^2)``, e.g. a 1-shot support sample and its class
    mean): those pairs are computed directly, ``sum_d (x_d - w_d)^2``, as ``torch.cdist`` does for small inputs.
    """
    if x2 is None:
        x2 = torch.linalg.vector_norm(features, dim=-1, keepdim=True).square()
    base = x2 + weights.square().sum(-1).unsqueeze(1)  # (E, M, N)
    sq = torch.baddbmm(base, features, weights.transpose(1, 2), alpha=-2.0)
    e, m, n = (sq < 1e-2 * base).nonzero(as_tuple=True)
    if len(e):
        (_, rows, dim), n_way = features.shape, weights.shape[1]
        x = features.reshape(-1, dim).index_select(0, e * rows + m)
        w = weights.reshape(-1, dim).index_select(0, e * n_way + n)
        sq = sq.index_put((e, m, n), (x - w).square().sum(-1))
    return sq.clamp_min(1e-30).sqrt()


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


def transductive_ft_grad(
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    support: torch.Tensor,
    support_onehot: torch.Tensor,
    query: torch.Tensor,
    *,
    temperature: float = 1.0,
    classifier: str = "linear",
    entropy_weight: float = 1.0,
    part: str = "both",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form gradients ``(E, N, D)``, ``(E, N)`` (or None) of ``transductive_ft_loss(...).sum()``.

    ``part``: ``"both"`` (the whole loss), ``"support"`` (the cross-entropy only) or ``"query"`` (the
    entropy term only), the alternating updates' losses.
    """
    step = _Gradient(support, support_onehot, query, temperature, classifier, entropy_weight)
    params = weights if bias is None else torch.cat([weights, bias.unsqueeze(-1)], -1)
    grad = step(params, part)
    return (grad, None) if bias is None else (grad[..., :-1], grad[..., -1])


class _Gradient:
    """``(params, part) -> d loss / d params`` for fixed features (the fine-tuning's inner step).

    With ``A = dLoss/dlogits``: support rows ``(softmax(z) - y) / |S|``; query rows
    ``-w p (log p + H(p)) / |Q|`` (``w`` the entropy weight, ``H(p) = -sum_k p_k log p_k``).
    ``"linear"``: params ``[W, b] (E, N, D+1)`` against features ``[x, 1]``, gradient ``t A^T [X, 1]``.
    ``"euclidean"``: params ``W (E, N, D)``, logits ``-t ||x - w_k||`` (:func:`_distances`, ``|x|^2``
    computed once), gradient ``t (B^T X - colsum(B) W)`` with
    ``B = A / ||x - w_k||`` (0 at the distances' floor of 1e-15, where autograd's gradient is 0 too).
    Support and query rows share one product per step when both terms are wanted (``part="both"``).
    """

    def __init__(self, support, onehot, query, temperature, classifier, entropy_weight) -> None:
        features = torch.cat([support, query], 1)  # (E, S+Q, D)
        if classifier == "linear":  # the bias is one more weight, on a constant feature 1
            features = F.pad(features, (0, 1), value=1.0)
        else:
            self.x2 = torch.linalg.vector_norm(features, dim=-1, keepdim=True).square()  # (E, S+Q, 1)
        self.features, self.onehot, self.n_support = features, onehot, onehot.shape[1]
        self.t, self.classifier, self.w = temperature, classifier, entropy_weight

    def __call__(self, params: torch.Tensor, part: str = "both") -> torch.Tensor:
        features = self.features[:, self._rows(part)]
        if self.classifier == "linear":
            return (self._dlogits(self.t * (features @ params.transpose(1, 2)), part).transpose(1, 2)
                    @ features) * self.t  # fmt: skip
        distances = self._distances(params, part)
        b = self._dlogits(-self.t * distances, part)
        b = b.div_(distances).masked_fill_(distances <= 2e-15, 0.0)
        scaled = params * b.sum(1).unsqueeze(-1)
        return torch.baddbmm(scaled, b.transpose(1, 2), features, beta=-self.t, alpha=self.t)

    def _rows(self, part: str) -> slice:
        return {"both": slice(None), "support": slice(self.n_support), "query": slice(self.n_support, None)}[part]

    def _distances(self, params: torch.Tensor, part: str) -> torch.Tensor:
        rows = self._rows(part)
        return _distances(self.features[:, rows], params, self.x2[:, rows])

    def _dlogits(self, logits: torch.Tensor, part: str) -> torch.Tensor:
        """``dLoss/dlogits`` of the ``part``'s rows ``(E, M, N)`` (in place of ``logits``)."""
        log_p = logits.sub_(logits.logsumexp(-1, keepdim=True))
        p = log_p.exp()
        s = self.n_support if part == "both" else logits.shape[1] if part == "support" else 0
        if s < logits.shape[1]:  # query rows: -w/|Q| p (log p + H(p))
            q_log_p, q_p = log_p[:, s:], p[:, s:]
            entropy = (q_p * q_log_p).sum(-1, keepdim=True).neg_()
            q_p.mul_(q_log_p.add_(entropy)).mul_(-self.w / (logits.shape[1] - s))
        if s:  # support rows: (p - y) / |S|
            p[:, :s].sub_(self.onehot).div_(s)
        return p


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
    The gradients are computed in closed form (:func:`transductive_ft_grad`) and Adam is written out
    (:func:`fewshot_bench.methods.tim.adam`, the update of ``torch.optim.Adam``; the bias is one more
    coordinate of each class's weights), without autograd's per-step overhead.
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
            if not (is_number(value, finite=True) and (value > 0 if low == "> 0" else value >= 0)):
                raise MethodError(f"{self.name}: {key} must be a finite number {low}, got {value!r}")
        if not is_int(self.epochs, 0):
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
        onehot = one_hot(support_labels, support.dtype)
        means = class_means(support, support_labels)
        if self.classifier == "euclidean":
            params = means
        else:  # [W, b]: normalised means, zero bias
            params = F.pad(F.normalize(means, dim=-1), (0, 1), value=0.0)
        t, c = self.temperature, self.classifier
        step = _Gradient(support, onehot, query, t, c, self.entropy_weight)
        if self.alternate:  # one update on the support loss, then one on the query loss, per epoch
            parts = itertools.cycle(["support", "query"])
            params = adam(lambda p: step(p, next(parts)), params, 2 * self.epochs, self.lr)
        else:
            params = adam(step, params, self.epochs, self.lr)
        weights, bias = (params, None) if c == "euclidean" else (params[..., :-1], params[..., -1])
        with torch.no_grad():
            return transductive_ft_logits(query, weights, bias, t, c)
