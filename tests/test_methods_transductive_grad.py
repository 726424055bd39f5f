"""Gradient-based transductive heads: TIM, alpha-TIM (``methods/tim.py``), transductive fine-tuning
(``methods/transductive_finetuning.py``).

Objectives against literal Python loops over the papers' formulas, gradients against autograd, the
Adam loop against ``torch.optim.Adam``, predictions against easyfsl 1.5.0 on identical episodes,
batch invariance, and hyper-parameter errors. The generic contract is in ``test_methods.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods_reference import easyfsl_scores, episodes
from threadpoolctl import threadpool_limits
from torch import nn

from fewshot_bench.errors import MethodError
from fewshot_bench.methods import create
from fewshot_bench.methods.base import class_means, cosine_scores, neg_sq_euclidean, one_hot
from fewshot_bench.methods.tim import adam, alpha_tim_default_alpha, tim_grad, tim_loss
from fewshot_bench.methods.transductive_finetuning import (
    _distances,
    transductive_ft_grad,
    transductive_ft_logits,
    transductive_ft_loss,
)

easyfsl = pytest.importorskip("easyfsl.methods")


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of tiny steps: OpenMP threads only add contention on a shared machine."""
    with threadpool_limits(1):
        yield


def tiny(seed=0, e=2, n=3, k=2, q=4, d=3):
    """L2-normalised float64 episodes, perturbed class means: weights (E, N, D), support, labels, query."""
    support, labels, query, _ = episodes(e, n, k, q, d, 1.0, seed=seed)
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    g = torch.Generator().manual_seed(seed + 1)
    weights = class_means(support, labels) + 0.3 * torch.randn(e, n, d, generator=g, dtype=torch.float64)
    return weights, support, labels, query


# -- the objectives, written as loops over samples and classes ------------------------------------------
def _softmax(logits):
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [v / sum(exps) for v in exps]


def _entropy(p, alpha):
    if alpha is None:
        return -sum(pk * math.log(pk) for pk in p)
    return (1 - sum(pk**alpha for pk in p)) / (alpha - 1)


def _tim_probs(x, w, tau, classifier):
    if classifier == "l2":
        return _softmax([-tau / 2 * sum((xd - wd) ** 2 for xd, wd in zip(x, wk)) for wk in w])
    norm = math.sqrt(sum(xd * xd for xd in x))
    return _softmax(
        [tau * sum(xd * wd for xd, wd in zip(x, wk)) / norm / math.sqrt(sum(v * v for v in wk)) for wk in w]
    )


def tim_objective_loops(weights, support, labels, query, tau, classifier, lam, marg, cond, alpha):
    """TIM (Boudiaf et al. 2020): lam * CE - (marg * H(mean_i p_i) - cond * mean_i H(p_i)), per episode."""
    losses = []
    for w, s, y, q in zip(weights.tolist(), support.tolist(), labels.tolist(), query.tolist()):
        ce = -sum(math.log(_tim_probs(x, w, tau, classifier)[yi]) for x, yi in zip(s, y)) / len(s)
        p_query = [_tim_probs(x, w, tau, classifier) for x in q]
        p_bar = [sum(p[k] for p in p_query) / len(q) for k in range(len(w))]
        conditional = sum(_entropy(p, alpha) for p in p_query) / len(q)
        losses.append(lam * ce - (marg * _entropy(p_bar, alpha) - cond * conditional))
    return torch.tensor(losses, dtype=torch.float64)


VARIANTS = [
    dict(classifier="l2", alpha=None),  # TIM
    dict(classifier="cosine", alpha=None),  # easyfsl's TIM
    dict(classifier="l2", alpha=2.0),  # alpha-TIM, 1-shot
    dict(classifier="cosine", alpha=7.0),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tim_loss_equals_literal_loops(variant):
    weights, support, labels, query = tiny()
    kw = dict(temperature=15.0, ce_weight=0.1, marginal_weight=1.0, conditional_weight=0.1, **variant)
    ours = tim_loss(weights, support, one_hot(labels, torch.float64), query, **kw)
    ref = tim_objective_loops(
        weights, support, labels, query, 15.0, variant["classifier"], 0.1, 1.0, 0.1, variant["alpha"]
    )
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)  # both exact formulas: ~1e-15 in practice


@pytest.mark.parametrize("variant", VARIANTS)
def test_tim_closed_form_gradient_equals_autograd(variant):
    weights, support, labels, query = tiny(seed=3)
    onehot = one_hot(labels, torch.float64)
    kw = dict(temperature=15.0, ce_weight=0.7, marginal_weight=1.3, conditional_weight=0.4, **variant)
    leaf = weights.clone().requires_grad_()
    torch.autograd.gradcheck(
        lambda w: tim_loss(w, support, onehot, query, **kw), (leaf,)
    )  # autograd is right
    tim_loss(leaf, support, onehot, query, **kw).sum().backward()
    torch.testing.assert_close(
        tim_grad(weights, support, onehot, query, **kw), leaf.grad, rtol=1e-10, atol=1e-13
    )


def test_adam_equals_torch_optim_adam():
    weights, support, labels, query = tiny(seed=5)
    onehot = one_hot(labels, torch.float64)
    grad = lambda w: tim_grad(w, support, onehot, query)  # noqa: E731
    ours = adam(grad, weights.clone(), steps=7, lr=1e-2)
    leaf = weights.clone().requires_grad_()
    optimizer = torch.optim.Adam([leaf], lr=1e-2)
    for _ in range(7):
        leaf.grad = grad(leaf.detach())
        optimizer.step()
    torch.testing.assert_close(ours, leaf.detach(), rtol=1e-14, atol=1e-15)


def _tft_probs(x, w, b, tau, classifier):
    if classifier == "linear":
        return _softmax([tau * (sum(xd * wd for xd, wd in zip(x, wk)) + bk) for wk, bk in zip(w, b)])
    return _softmax([-tau * math.sqrt(sum((xd - wd) ** 2 for xd, wd in zip(x, wk))) for wk in w])


def tft_objective_loops(weights, bias, support, labels, query, tau, classifier, lam):
    """Dhillon et al. 2020, Eq. 8: 1/|S| sum -log p(y|x) + lam/|Q| sum H(p(.|x)), per episode."""
    losses = []
    bias = bias.tolist() if bias is not None else [None] * len(weights)
    for w, b, s, y, q in zip(weights.tolist(), bias, support.tolist(), labels.tolist(), query.tolist()):
        ce = -sum(math.log(_tft_probs(x, w, b, tau, classifier)[yi]) for x, yi in zip(s, y)) / len(s)
        entropy = sum(_entropy(_tft_probs(x, w, b, tau, classifier), None) for x in q) / len(q)
        losses.append(ce + lam * entropy)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("classifier", ["linear", "euclidean"])
def test_transductive_ft_loss_equals_literal_loops(classifier):
    weights, support, labels, query = tiny(seed=7)
    bias = (
        torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]], dtype=torch.float64)
        if classifier == "linear"
        else None
    )
    ours = transductive_ft_loss(
        weights,
        bias,
        support,
        one_hot(labels, torch.float64),
        query,
        temperature=2.0,
        classifier=classifier,
        entropy_weight=0.5,
    )
    ref = tft_objective_loops(weights, bias, support, labels, query, 2.0, classifier, 0.5)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("classifier", ["linear", "euclidean"])
@pytest.mark.parametrize("part", ["both", "support", "query"])
def test_transductive_ft_closed_form_gradient_equals_autograd(classifier, part):
    weights, support, labels, query = tiny(seed=9)
    weights[0, 1] = support[0, 2]  # a support sample on its class weight: distance exactly 0
    onehot = one_hot(labels, torch.float64)
    bias = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]], dtype=torch.float64)
    bias = bias if classifier == "linear" else None
    kw = dict(temperature=3.0, classifier=classifier)
    leaves = [t.clone().requires_grad_() for t in (weights, bias) if t is not None]

    def loss(w, b=None):  # the part's loss: CE only (entropy weight 0), entropy only, or both
        whole = transductive_ft_loss(w, b, support, onehot, query, entropy_weight=0.7, **kw)
        ce = transductive_ft_loss(w, b, support, onehot, query, entropy_weight=0.0, **kw)
        return {"both": whole, "support": ce, "query": whole - ce}[part]

    loss(*leaves).sum().backward()
    ours = transductive_ft_grad(weights, bias, support, onehot, query, entropy_weight=0.7, part=part, **kw)
    torch.testing.assert_close(ours[0], leaves[0].grad, rtol=1e-10, atol=1e-13)
    if classifier == "linear":
        torch.testing.assert_close(ours[1], leaves[1].grad, rtol=1e-10, atol=1e-13)
    else:
        assert ours[1] is None


def tft_autograd_reference(support, labels, query, *, lr, epochs, classifier, alternate, temperature=1.0):
    """Dhillon et al.'s fine-tuning as autograd + ``torch.optim.Adam`` (this head's code before its
    gradient was written out): L2-normalised inputs, normalised class means (``"linear"``), Adam steps on
    the support CE then the query entropy (``alternate``) or on their sum."""
    if classifier == "linear":
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    onehot, means = one_hot(labels, support.dtype), class_means(support, labels)
    weights = (means if classifier == "euclidean" else F.normalize(means, dim=-1)).clone().requires_grad_()
    bias = None if classifier == "euclidean" else means.new_zeros(means.shape[:2]).requires_grad_()
    optimizer = torch.optim.Adam([t for t in (weights, bias) if t is not None], lr=lr)
    kw = dict(temperature=temperature, classifier=classifier)
    losses = [(1.0, 0.0), (0.0, 1.0)] if alternate else [(1.0, 1.0)]
    for _ in range(epochs):
        for ce_w, entropy_w in losses:
            optimizer.zero_grad()
            total = transductive_ft_loss(weights, bias, support, onehot, query, entropy_weight=entropy_w, **kw)
            if ce_w == 0.0:  # the entropy term alone
                total = total - transductive_ft_loss(weights, bias, support, onehot, query, entropy_weight=0.0, **kw)
            total.sum().backward()
            optimizer.step()
    with torch.no_grad():
        return transductive_ft_logits(query, weights, bias, temperature, classifier)


@pytest.mark.parametrize(("classifier", "alternate", "shots"),
                         [("linear", True, 1), ("linear", False, 5), ("euclidean", False, 1), ("euclidean", True, 5)])
def test_transductive_ft_equals_autograd_adam_loop(classifier, alternate, shots):
    support, labels, query, _ = episodes(6, 5, shots, 7, 12, 0.5, seed=40 + shots, offset=1.0)
    kw = dict(lr=2e-2, epochs=6, classifier=classifier, alternate=alternate)
    ours = create("transductive-ft", temperature=2.0, **kw, preprocess="none" if classifier == "euclidean" else None)
    ref = tft_autograd_reference(support, labels, query, temperature=2.0, **kw)
    torch.testing.assert_close(ours.scores(support, labels, query), ref, rtol=1e-10, atol=1e-12)


def test_distances_are_exact_where_the_expansion_cancels():
    g = torch.Generator().manual_seed(3)
    x = 100 + torch.randn(2, 30, 16, generator=g, dtype=torch.float64)  # |x|^2 ~ 1.6e5
    w = x[:, :4].clone()
    w[:, 0] += 1e-6  # distance 4e-6: the expansion would be all rounding (eps * 3e5 ~ 7e-11 >> 1.6e-11)
    w[:, 1] += 1.0  # distance 4: the expansion is fine
    d = _distances(x, w)
    direct = (x.unsqueeze(2) - w.unsqueeze(1)).square().sum(-1).clamp_min(1e-30).sqrt()
    torch.testing.assert_close(d, direct, rtol=1e-9, atol=0)
    assert float(d[0, 0, 0]) == pytest.approx(4e-6, rel=1e-6) and float(d[0, 2, 2]) == 1e-15  # x == w: floor
    # (torch.cdist, which expands for more than 25 rows, is off by ~5e-6 on these pairs)


# -- what the solvers start from and return ----------------------------------------------------------------
def test_zero_steps_give_the_initial_classifiers():
    support, labels, query, _ = episodes(4, 5, 3, 6, 8, 1.0, seed=11)
    s, q = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    means = class_means(s, labels)
    torch.testing.assert_close(
        create("tim", iterations=0).scores(support, labels, query), 7.5 * neg_sq_euclidean(q, means)
    )  # -tau/2 ||x - mean||^2
    torch.testing.assert_close(
        create("alpha-tim", iterations=0, classifier="cosine").scores(support, labels, query),
        15 * cosine_scores(q, means),
    )
    torch.testing.assert_close(
        create("transductive-ft", epochs=0).scores(support, labels, query), cosine_scores(q, means)
    )  # W = normalised means, b = 0, unit queries


def test_alpha_tim_default_alpha_follows_the_shots():
    assert [alpha_tim_default_alpha(k) for k in (1, 2, 4, 5, 10)] == [2.0, 5.0, 5.0, 7.0, 7.0]
    for shots, alpha in ((1, 2.0), (5, 7.0)):
        support, labels, query, _ = episodes(3, 5, shots, 4, 8, 1.0, seed=shots)
        auto = create("alpha-tim", iterations=20, lr=1e-2).scores(support, labels, query)
        torch.testing.assert_close(
            auto,
            create("alpha-tim", iterations=20, lr=1e-2, alpha=alpha).scores(support, labels, query),
            rtol=0,
            atol=0,
        )


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("tim", dict(iterations=30, lr=1e-2)),
        ("alpha-tim", dict(iterations=30, lr=1e-2)),
        ("transductive-ft", dict(epochs=10, lr=1e-2)),
        ("transductive-ft", dict(epochs=10, lr=1e-2, classifier="euclidean", alternate=False)),
    ],
)
def test_batch_invariant_as_declared(name, kw):
    """Per-episode parameters, summed per-episode losses, per-coordinate Adam: an episode's scores do not
    depend on the other episodes of its batch (declared ``batch_invariant = True``)."""
    method = create(name, **kw)
    assert type(method).batch_invariant
    support, labels, query, _ = episodes(5, 5, 2, 6, 16, 0.5, seed=13)
    batch = method.scores(support, labels, query)
    alone = torch.cat(
        [method.scores(support[i : i + 1], labels[i : i + 1], query[i : i + 1]) for i in range(5)]
    )
    torch.testing.assert_close(batch, alone, rtol=1e-12, atol=1e-12)
    # an episode copied into a batch of different ones scores the same
    mixed = (
        torch.cat([support[2:3], support[:2]]),
        torch.cat([labels[2:3], labels[:2]]),
        torch.cat([query[2:3], query[:2]]),
    )
    torch.testing.assert_close(method.scores(*mixed)[0], batch[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["tim", "transductive-ft"])
def test_inference_mode_features_are_accepted(name):
    with torch.inference_mode():
        support, labels, query, _ = episodes(2, 3, 2, 4, 8, 1.0, seed=17)
    method = create(name, preprocess="none", **({"iterations": 5} if name == "tim" else {"epochs": 2}))
    assert method.scores(support, labels, query).shape == (2, 12, 3)


# -- agreement with easyfsl 1.5.0 ----------------------------------------------------------------------------
# easyfsl's TIM: cosine logits, temperature 10, CE weight 1, 50 Adam steps, lr 1e-4; fed the same
# L2-normalised features (feature_normalization=2) as our "l2n" chain. Steps and lr are matched at 8 and
# 3e-3 to keep the test short while fine-tuning changes many predictions (asserted). Measured: 100 %
# identical predictions, scores equal to ~1e-15 (ours are tau * cos, easyfsl's cos); the only difference
# in the computation is easyfsl's log(p + 1e-12). Tolerance: >= 99 % predictions, scores atol 1e-9.
@pytest.mark.parametrize("shots", [1, 5])
def test_tim_cosine_agrees_with_easyfsl(shots):
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=80 + shots, offset=1.0)
    ours = create("tim", classifier="cosine", temperature=10.0, ce_weight=1.0, iterations=8, lr=3e-3)
    ours = ours.scores(support, labels, query)
    model = easyfsl.TIM(nn.Identity(), fine_tuning_steps=8, fine_tuning_lr=3e-3, feature_normalization=2)
    ref = easyfsl_scores(model, support, labels, query)
    start = cosine_scores(F.normalize(query, dim=-1), class_means(F.normalize(support, dim=-1), labels))
    assert (start.argmax(-1) != ref.argmax(-1)).double().mean() > 0.05, (
        "fine-tuning should change predictions"
    )
    assert (ours.argmax(-1) == ref.argmax(-1)).double().mean() >= 0.99
    torch.testing.assert_close(ours / 10.0, ref, rtol=0, atol=1e-9)


# easyfsl's TransductiveFinetuning: prototypes scored by -||x - c||, one Adam step per iteration on
# CE + entropy, 25 steps, lr 5e-5, temperature 1, raw features = ours with classifier="euclidean",
# alternate=False, preprocess="none". lr raised to 2e-2 (5 steps) on both sides so that predictions move.
# Measured: 100 % identical predictions, scores equal to ~4e-15; the only difference in the computation is
# easyfsl's log(p + 1e-12) in the entropy. Tolerance: >= 99 % predictions, scores atol 1e-9.
@pytest.mark.parametrize("shots", [1, 5])
def test_transductive_ft_euclidean_agrees_with_easyfsl(shots):
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=90 + shots, offset=1.0)
    ours = create(
        "transductive-ft", classifier="euclidean", alternate=False, epochs=5, lr=2e-2, preprocess="none"
    )
    ours = ours.scores(support, labels, query)
    ref = easyfsl_scores(
        easyfsl.TransductiveFinetuning(nn.Identity(), fine_tuning_steps=5, fine_tuning_lr=2e-2),
        support,
        labels,
        query,
    )
    start = create("protonet").scores(support, labels, query)
    assert (start.argmax(-1) != ref.argmax(-1)).double().mean() > 0.05, (
        "fine-tuning should change predictions"
    )
    assert (ours.argmax(-1) == ref.argmax(-1)).double().mean() >= 0.99
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


# -- hyper-parameters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("tim", {"temperature": 0}, r"^tim: temperature must be a finite number > 0, got 0$"),
        ("tim", {"lr": float("inf")}, "tim: lr must be a finite number > 0, got inf"),
        ("tim", {"ce_weight": -0.1}, "tim: ce_weight must be a finite number >= 0, got -0.1"),
        ("tim", {"conditional_weight": float("nan")}, "tim: conditional_weight must be a finite number >= 0"),
        ("tim", {"iterations": 2.5}, "tim: iterations must be an integer >= 0, got 2.5"),
        ("tim", {"iterations": True}, "tim: iterations must be an integer >= 0, got True"),
        ("tim", {"classifier": "dot"}, "tim: classifier must be one of l2, cosine; got 'dot'"),
        ("alpha-tim", {"marginal_weight": -1}, "alpha-tim: marginal_weight must be a finite number >= 0"),
        (
            "alpha-tim",
            {"alpha": 1},
            r"alpha-tim: alpha must be a finite number > 0 and != 1 .*use method 'tim'",
        ),
        ("alpha-tim", {"alpha": -2.0}, "alpha-tim: alpha must be a finite number > 0 and != 1"),
        ("transductive-ft", {"lr": 0.0}, "transductive-ft: lr must be a finite number > 0, got 0.0"),
        (
            "transductive-ft",
            {"entropy_weight": -1},
            "transductive-ft: entropy_weight must be a finite number >= 0",
        ),
        ("transductive-ft", {"epochs": -1}, "transductive-ft: epochs must be an integer >= 0, got -1"),
        (
            "transductive-ft",
            {"classifier": "cosine"},
            "classifier must be one of linear, euclidean; got 'cosine'",
        ),
        (
            "transductive-ft",
            {"alternate": "yes"},
            "transductive-ft: alternate must be True or False, got 'yes'",
        ),
    ],
)
def test_bad_hyper_parameters_are_explained(name, kw, match):
    with pytest.raises(MethodError, match=match):
        create(name, **kw)


def test_defaults_are_the_papers():
    tim, atim, tft = create("tim"), create("alpha-tim"), create("transductive-ft")
    assert (
        tim.temperature,
        tim.ce_weight,
        tim.marginal_weight,
        tim.conditional_weight,
        tim.lr,
        tim.iterations,
        tim.classifier,
    ) == (15.0, 0.1, 1.0, 0.1, 1e-4, 1000, "l2")
    assert (atim.ce_weight, atim.marginal_weight, atim.conditional_weight, atim.alpha) == (
        1.0,
        1.0,
        1.0,
        None,
    )
    assert (tft.lr, tft.epochs, tft.temperature, tft.entropy_weight, tft.classifier, tft.alternate) == (
        5e-5,
        25,
        1.0,
        1.0,
        "linear",
        True,
    )
    assert tim.preprocessing == atim.preprocessing == tft.preprocessing == "l2n"
