"""TIM and alpha-TIM: class weights fitted by Adam on support cross-entropy and query mutual information."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import MethodError, is_int, is_number
from .base import FewShotMethod, class_means, cosine_scores, neg_sq_euclidean, one_hot, register_method

__all__ = ["AlphaTIM", "TIM", "adam", "alpha_tim_default_alpha", "tim_grad", "tim_logits", "tim_loss"]

CLASSIFIERS = ("l2", "cosine")


def tim_logits(
    features: torch.Tensor, weights: torch.Tensor, temperature: float, classifier: str
) -> torch.Tensor:
    """Logits ``(E, M, N)`` of features ``(E, M, D)`` against class weights ``(E, N, D)``.

    ``"l2"``: ``-temperature / 2 * ||x - w_k||^2`` (the paper's Eq. and TIM's default code);
    ``"cosine"``: ``temperature * cos(x, w_k)`` (TIM's code option, easyfsl's ``TIM``). Built without
    in-place operations, so autograd can differentiate it in ``weights``.
    """
    if classifier == "cosine":
        return temperature * cosine_scores(features, weights)
    if not weights.requires_grad:
        return (0.5 * temperature) * neg_sq_euclidean(features, weights)
    # -t/2 ||x - w||^2 = t (x.w - |w|^2 / 2) - t |x|^2 / 2, built without in-place ops (autograd-safe)
    cross = features @ weights.transpose(1, 2) - 0.5 * weights.square().sum(-1).unsqueeze(1)
    return temperature * (cross - 0.5 * features.square().sum(-1, keepdim=True))


def tim_loss(
    weights: torch.Tensor,
    support: torch.Tensor,
    support_onehot: torch.Tensor,
    query: torch.Tensor,
    *,
    temperature: float = 15.0,
    classifier: str = "l2",
    ce_weight: float = 0.1,
    marginal_weight: float = 1.0,
    conditional_weight: float = 0.1,
    alpha: float | None = None,
) -> torch.Tensor:
    """The TIM objective of each episode ``(E,)``, minimised over ``weights (E, N, D)``.

    ``ce_weight * CE - (marginal_weight * H(Y_Q) - conditional_weight * H(Y_Q|X_Q))`` with
    ``CE = -1/|S| sum_i sum_k y_ik log p_ik`` over the support ``(E, |S|, D)`` (one-hot ``(E, |S|, N)``),
    ``H(Y_Q) = H(mean_i p_i)`` and ``H(Y_Q|X_Q) = 1/|Q| sum_i H(p_i)`` over the query ``(E, |Q|, D)``,
    ``p_i = softmax(tim_logits(x_i))``. Shannon entropies ``H(p) = -sum_k p_k log p_k`` when ``alpha``
    is None; Tsallis alpha-entropies ``H_a(p) = (1 - sum_k p_k^a) / (a - 1)`` for both entropy terms
    otherwise (alpha-TIM; its cross-entropy stays Shannon, as in its code).
    """
    log_ps = torch.log_softmax(tim_logits(support, weights, temperature, classifier), -1)
    ce = -(support_onehot * log_ps).sum(-1).mean(-1)
    log_pq = torch.log_softmax(tim_logits(query, weights, temperature, classifier), -1)  # (E, Q, N)
    pq = log_pq.exp()
    if alpha is None:
        conditional = -(pq * log_pq).sum(-1).mean(-1)
        log_marginal = torch.logsumexp(log_pq, 1) - math.log(pq.shape[1])  # log mean_i p_i, (E, N)
        marginal = -(log_marginal.exp() * log_marginal).sum(-1)
    else:
        conditional = ((1 - pq.pow(alpha).sum(-1)) / (alpha - 1)).mean(-1)
        marginal = (1 - pq.mean(1).pow(alpha).sum(-1)) / (alpha - 1)
    return ce_weight * ce - (marginal_weight * marginal - conditional_weight * conditional)


def tim_grad(
    weights: torch.Tensor,
    support: torch.Tensor,
    support_onehot: torch.Tensor,
    query: torch.Tensor,
    *,
    temperature: float = 15.0,
    classifier: str = "l2",
    ce_weight: float = 0.1,
    marginal_weight: float = 1.0,
    conditional_weight: float = 0.1,
    alpha: float | None = None,
) -> torch.Tensor:
    """Closed-form gradient ``(E, N, D)`` of ``tim_loss(...).sum()`` with respect to ``weights``."""
    return _Gradient(
        support,
        support_onehot,
        query,
        temperature=temperature,
        classifier=classifier,
        ce_weight=ce_weight,
        marginal_weight=marginal_weight,
        conditional_weight=conditional_weight,
        alpha=alpha,
    )(weights)


class _Gradient:
    """``weights -> d tim_loss(weights).sum() / d weights`` for fixed features (the solver's inner step).

    With ``A = dLoss/dlogits (E, S+Q, N)``: support rows ``ce_weight * (p - y) / S``; query rows
    ``p * (g - <p, g>)`` with ``g_ik = dLoss/dp_ik`` up to per-row constants, i.e.
    ``(m log pbar_k - c log p_ik) / Q`` (Shannon) or ``a/(a-1) (m pbar_k^(a-1) - c p_ik^(a-1)) / Q``.
    Then ``"l2"``: ``tau (A^T X - colsum(A) * W)``;
    ``"cosine"``: ``tau / |w_k| (A^T Xn - (sum_i A_ik cos_ik) wn_k)`` (``Xn``, ``wn``: unit vectors).
    """

    def __init__(
        self,
        support,
        onehot,
        query,
        *,
        temperature,
        classifier,
        ce_weight,
        marginal_weight,
        conditional_weight,
        alpha,
    ) -> None:
        features = torch.cat([support, query], 1)  # one product for support and query logits
        self.features = F.normalize(features, dim=-1) if classifier == "cosine" else features
        self.onehot, self.n_support = onehot, onehot.shape[1]
        self.t, self.classifier, self.alpha = temperature, classifier, alpha
        self.ce, self.m, self.c = ce_weight, marginal_weight, conditional_weight

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        feats, t = self.features, self.t
        if self.classifier == "cosine":
            norms = torch.linalg.vector_norm(weights, dim=-1, keepdim=True).clamp_min(1e-12)  # (E, N, 1)
            unit = weights / norms
            cos = feats @ unit.transpose(1, 2)
            logits = t * cos
        else:  # -t/2 |x - w|^2 up to a per-row constant, which softmax ignores
            logits = torch.baddbmm(
                weights.square().sum(-1).unsqueeze(1), feats, weights.transpose(1, 2), beta=-0.5 * t, alpha=t
            )
        ls, lq = logits[:, : self.n_support], logits[:, self.n_support :]
        n_q = lq.shape[1]
        grad_s = (torch.softmax(ls, -1) - self.onehot) * (self.ce / self.n_support)
        log_pq = torch.log_softmax(lq, -1)
        pq = log_pq.exp()
        if self.alpha is None:
            log_marginal = torch.logsumexp(log_pq, 1, keepdim=True) - math.log(n_q)
            g = (self.m * log_marginal - self.c * log_pq) / n_q
        else:
            a = self.alpha
            g = (self.m * pq.mean(1, keepdim=True).pow(a - 1) - self.c * pq.pow(a - 1)) * (a / (a - 1) / n_q)
        grad_q = pq * (g - (pq * g).sum(-1, keepdim=True))
        grad_logits = torch.cat([grad_s, grad_q], 1)  # (E, S+Q, N)
        if self.classifier == "cosine":
            radial = (grad_logits * cos).sum(1).unsqueeze(-1)  # (E, N, 1)
            return (grad_logits.transpose(1, 2) @ feats - radial * unit) * (t / norms)
        return (grad_logits.transpose(1, 2) @ feats - grad_logits.sum(1).unsqueeze(-1) * weights) * t


def adam(
    grad, params: torch.Tensor, steps: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8
) -> torch.Tensor:
    """``steps`` Adam updates of ``params`` (in place, returned) with gradients ``grad(params)``.

    The update of ``torch.optim.Adam`` (default options: no weight decay, no amsgrad) written out, without its
    per-step overhead; every coordinate has its own moments, so independent episodes stay independent.
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = torch.zeros_like(params), torch.zeros_like(params)
    for step in range(1, steps + 1):
        g = grad(params)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        params.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    return params


def alpha_tim_default_alpha(shots: float) -> float:
    """alpha-TIM's tuned alpha for ``shots`` support samples per class: 2 (1-shot), 7 (5+ shots), else 5."""
    return 2.0 if shots <= 1 else 7.0 if shots >= 5 else 5.0


@register_method
class TIM(FewShotMethod):
    """TIM-GD: transductive information maximisation by gradient descent on frozen features. Transductive.

    Malik Boudiaf, Ziko Imtiaz Masud, Jérôme Rony, José Dolz, Pablo Piantanida, Ismail Ben Ayed.
    "Transductive Information Maximization for Few-Shot Learning", NeurIPS 2020.
    https://arxiv.org/abs/2008.11297
    Reference code: https://github.com/mboudiaf/TIM (``src/tim.py``, ``TIM_GD``).

    Class weights ``W (N, D)`` start at the support class means and minimise, with Adam,
    ``lambda * CE(support) - (H(Y_Q) - alpha * H(Y_Q|X_Q))`` (the paper's objective, mutual information
    weighted as ``I_alpha``; see :func:`tim_loss`) with ``p_ik = softmax_k(-tau/2 ||x_i - w_k||^2)``,
    by the closed-form gradient (:func:`tim_grad`); queries are scored with the final logits.

    Hyper-parameters (paper / official code defaults): ``temperature`` tau = 15; ``ce_weight`` lambda = 0.1,
    ``marginal_weight`` = 1.0, ``conditional_weight`` alpha = 0.1 (code ``loss_weights [0.1, 1.0, 0.1]``);
    ``lr`` = 1e-4 (Adam), ``iterations`` = 1000 (the paper's TIM-GD; the code's config default is 150,
    its evaluation scripts pass 1000); ``classifier`` ``"l2"`` (or ``"cosine"``: ``tau * cos(x, w_k)``).
    Preprocessing ``l2n``: the official code L2-normalises features before TIM (``norms_types ["L2N"]``).

    Differences: the logs use log-softmax / log-sum-exp instead of ``log(p + 1e-12)`` (identical up to
    that epsilon); the gradient is computed in closed form and Adam is written out (:func:`adam`, the
    update of ``torch.optim.Adam``), without autograd's per-step overhead. The loss is summed over
    episodes and Adam is per-coordinate, so each episode is
    optimised exactly as on its own (batch-invariant, as the official code's batched tasks).
    easyfsl 1.5.0's ``TIM`` is ``classifier="cosine", temperature=10, ce_weight=1.0, iterations=50``
    (same Adam lr and entropy weights) with ``preprocess="none"`` (easyfsl does not normalise features;
    cosine logits ignore their scale, the initial class means do not).
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> logits ``(E, Q, N)``.
    """

    name = "tim"
    description = (
        "TIM-GD: class weights fitted by Adam on support CE + query mutual information (transductive)"
    )
    paper = "Boudiaf et al., NeurIPS 2020, https://arxiv.org/abs/2008.11297"
    transductive = True
    preprocessing = "l2n"
    batch_invariant = True

    def __init__(
        self,
        temperature: float = 15.0,
        ce_weight: float = 0.1,
        marginal_weight: float = 1.0,
        conditional_weight: float = 0.1,
        lr: float = 1e-4,
        iterations: int = 1000,
        classifier: str = "l2",
    ) -> None:
        self.temperature, self.lr, self.iterations, self.classifier = temperature, lr, iterations, classifier
        self.ce_weight, self.marginal_weight, self.conditional_weight = (
            ce_weight,
            marginal_weight,
            conditional_weight,
        )

    def _check_params(self) -> None:
        name = self.name
        for key in ("temperature", "lr"):
            value = getattr(self, key)
            if not (is_number(value, finite=True) and value > 0):
                raise MethodError(f"{name}: {key} must be a finite number > 0, got {value!r}")
        for key in ("ce_weight", "marginal_weight", "conditional_weight"):
            value = getattr(self, key)
            if not (is_number(value, finite=True) and value >= 0):
                raise MethodError(f"{name}: {key} must be a finite number >= 0, got {value!r}")
        if not is_int(self.iterations, 0):
            raise MethodError(f"{name}: iterations must be an integer >= 0, got {self.iterations!r}")
        if self.classifier not in CLASSIFIERS:
            raise MethodError(
                f"{name}: classifier must be one of {', '.join(CLASSIFIERS)}; got {self.classifier!r}"
            )

    def _alpha(self, shots: float) -> float | None:
        """The alpha of the entropies (None: Shannon)."""
        return None

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        onehot = one_hot(support_labels, support.dtype)
        kw = dict(
            temperature=self.temperature,
            classifier=self.classifier,
            ce_weight=self.ce_weight,
            marginal_weight=self.marginal_weight,
            conditional_weight=self.conditional_weight,
            alpha=self._alpha(support.shape[1] / onehot.shape[-1]),
        )
        weights = adam(
            _Gradient(support, onehot, query, **kw),
            class_means(support, support_labels),
            self.iterations,
            self.lr,
        )
        return tim_logits(query, weights, self.temperature, self.classifier)


@register_method
class AlphaTIM(TIM):
    """alpha-TIM: TIM with alpha-entropies, for query sets of unknown class proportions. Transductive.

    Olivier Veilleux, Malik Boudiaf, Pablo Piantanida, Ismail Ben Ayed. "Realistic evaluation of
    transductive few-shot learning", NeurIPS 2021. https://arxiv.org/abs/2204.11181
    Reference code: https://github.com/oveilleux/Realistic_Transductive_Few_Shot (``src/methods/tim.py``,
    ``ALPHA_TIM``; ``config/dirichlet/methods_config/alpha_tim.yaml``).

    As :class:`TIM` with both query entropies replaced by ``H_a(p) = (1 - sum_k p_k^a) / (a - 1)``
    (Shannon's as ``a -> 1``): minimises ``CE(support) - (H_a(Y_Q) - H_a(Y_Q|X_Q))`` (the code's
    ``entropies ['Shannon', 'Alpha', 'Alpha']``, see :func:`tim_loss`).

    Hyper-parameters (official code defaults): ``temperature`` 15; ``ce_weight``, ``marginal_weight``,
    ``conditional_weight`` 1.0 (``loss_weights [1.0, 1.0, 1.0]``); ``lr`` 1e-4 (Adam); ``iterations``
    1000; ``classifier`` ``"l2"``; ``alpha`` None picks the code's tuned values by support shots per class
    (``use_tuned_alpha_values``): 2 for 1-shot, 7 for 5 shots or more, else 5 (the config's value);
    with unequal shots, shots = support size / classes. Preprocessing ``l2n`` (the code's ``F.normalize``).
    Differences: exact ``p^a`` where the code raises ``p + 1e-12`` for the conditional entropy.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> logits ``(E, Q, N)``.
    """

    name = "alpha-tim"
    description = "alpha-TIM: TIM with alpha-entropies, robust to imbalanced query sets (transductive)"
    paper = "Veilleux et al., NeurIPS 2021, https://arxiv.org/abs/2204.11181"

    def __init__(
        self,
        temperature: float = 15.0,
        ce_weight: float = 1.0,
        marginal_weight: float = 1.0,
        conditional_weight: float = 1.0,
        lr: float = 1e-4,
        iterations: int = 1000,
        classifier: str = "l2",
        alpha: float | None = None,
    ) -> None:
        super().__init__(
            temperature, ce_weight, marginal_weight, conditional_weight, lr, iterations, classifier
        )
        self.alpha = alpha

    def _check_params(self) -> None:
        super()._check_params()
        a = self.alpha
        if a is not None and not (is_number(a, finite=True) and a > 0 and a != 1):
            raise MethodError(
                "alpha-tim: alpha must be a finite number > 0 and != 1 "
                "(or None: 2 for 1-shot, 7 for 5+ shots), "
                f"got {a!r}; alpha -> 1 is Shannon's entropy, use method 'tim'"
            )

    def _alpha(self, shots: float) -> float:
        return float(self.alpha) if self.alpha is not None else alpha_tim_default_alpha(shots)
