"""Every registered loss against a literal Python loop over its paper's formula (float64, math.exp).

The loops go anchor by anchor, positive by positive, negative by negative, on plain floats; the
vectorised losses are called through the registry (``create_loss(name)(logits, z, labels)``).
"""

from __future__ import annotations

import math

import pytest
import torch

from fewshot_bench.train.losses import create_loss, hscl_loss

RTOL = 1e-6

# --------------------------------------------------------------------------- literal references


def _unit_rows(z):
    rows = [[float(v) for v in row] for row in z]
    return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]


def _sims(z, tau):
    u = _unit_rows(z)
    return [[sum(a * b for a, b in zip(ui, uj, strict=True)) / tau for uj in u] for ui in u]


def _sets(labels, i):
    labels = [int(v) for v in labels]
    pos = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
    neg = [k for k in range(len(labels)) if labels[k] != labels[i]]
    return pos, neg


def literal_ce(logits, labels, eps=0.0):
    """-1/B sum_i sum_c t_ic log softmax(x_i)_c, t = (1 - eps) onehot + eps / C."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        c = len(row)
        log_z = math.log(sum(math.exp(x) for x in row))
        for k, x in enumerate(row):
            t = (1 - eps) * (k == y) + eps / c
            total -= t * (x - log_z)
    return total / len(labels)


def literal_supcon(z, labels, tau):
    """Khosla et al. 2020 Eq. 2: per-anchor -1/|P| sum_p log(e^{s_ip} / sum_{a != i} e^{s_ia})."""
    s = _sims(z, tau)
    out = []
    for i in range(len(s)):
        pos, _ = _sets(labels, i)
        if not pos:
            out.append(None)
            continue
        den = 0.0
        for a in range(len(s)):
            if a != i:
                den += math.exp(s[i][a])
        acc = 0.0
        for p in pos:
            acc += math.log(math.exp(s[i][p]) / den)
        out.append(-acc / len(pos))
    return out


def literal_lacln(z, labels, tau, hard_negatives=True):
    """CLCE paper Eq. 3 anchor by anchor (w_ik = |N| e^{s_ik} / sum_k' e^{s_ik'}, or 1)."""
    s = _sims(z, tau)
    out = []
    for i in range(len(s)):
        pos, neg = _sets(labels, i)
        if not pos:
            out.append(None)
            continue
        e_pos = 0.0
        for p in pos:
            e_pos += math.exp(s[i][p])
        z_neg = 0.0
        for k in neg:
            z_neg += math.exp(s[i][k])
        neg_term = 0.0
        for k in neg:
            w = len(neg) * math.exp(s[i][k]) / z_neg if hard_negatives else 1.0
            neg_term += w * math.exp(s[i][k])
        out.append(-math.log((1.0 / len(pos)) * e_pos / (e_pos + neg_term)))
    return out


def literal_hscl_pairs(z, labels, tau, beta):
    """Jiang et al. 2022 (authors' code): l_ip = -log(e^{s_ip} / (e^{s_ip} + (M-2) sum_k q_ik e^{s_ik}))."""
    s = _sims(z, tau)
    m = len(s)
    pairs = {}
    for i in range(m):
        pos, neg = _sets(labels, i)
        q_den = 0.0
        for k in neg:
            q_den += math.exp(beta * s[i][k])
        tilted = 0.0
        for k in neg:
            q = math.exp(beta * s[i][k]) / q_den
            tilted += q * math.exp(s[i][k])
        n_const = max(m - 2, 0) if neg else 0
        for p in pos:
            e = math.exp(s[i][p])
            pairs[(i, p)] = -math.log(e / (e + n_const * tilted))
    return pairs


def literal_scl_baseline_pairs(z, labels, tau):
    """The H-SCL authors' SCL baseline (``nce_supervised_easy``): (M-2) * mean_k e^{s_ik}."""
    s = _sims(z, tau)
    m = len(s)
    pairs = {}
    for i in range(m):
        pos, neg = _sets(labels, i)
        mean_neg = sum(math.exp(s[i][k]) for k in neg) / len(neg) if neg else 0.0
        for p in pos:
            e = math.exp(s[i][p])
            pairs[(i, p)] = -math.log(e / (e + (m - 2) * mean_neg))
    return pairs


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else 0.0


def _pair_mean(pairs):
    return sum(pairs.values()) / len(pairs) if pairs else 0.0


LITERAL_CONTRASTIVE = {
    "supcon": lambda z, y, p: _mean(literal_supcon(z, y, p["temperature"])),
    "lacln": lambda z, y, p: _mean(literal_lacln(z, y, p["temperature"], p.get("hard_negatives", True))),
    "h-scl": lambda z, y, p: _pair_mean(literal_hscl_pairs(z, y, p["temperature"], p["beta"])),
}
#: the mixes: (contrastive literal, fixed switches of the term)
MIXES = {
    "ce+supcon": ("supcon", {}),
    "clce": ("lacln", {"hard_negatives": True}),
    "clce-nohnm": ("lacln", {"hard_negatives": False}),
    "ce+h-scl": ("h-scl", {}),
}

LABEL_CASES = {
    "balanced": [0, 0, 1, 1, 2, 2, 3, 3],
    "singletons": [0, 0, 0, 1, 2, 3, 3, 4, 5],  # anchors 1, 2, 4, 5 have no positive
    "all-same": [7] * 6,  # no anchor has a negative
    "repeated-unsorted": [1, 0, 1, 0, 1, 1, 0, 2, 2],  # unequal positive counts
}


def _data(n, seed, c=8, d=6):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return logits, z


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_ce_matches_literal_formula(eps):
    logits, _ = _data(9, 0)
    labels = torch.tensor(LABEL_CASES["singletons"])
    terms = create_loss("ce", label_smoothing=eps)(logits, None, labels)
    assert float(terms.total) == pytest.approx(literal_ce(logits, labels, eps), rel=RTOL)
    assert terms.contrastive is None and terms.ce is terms.total


CONTRASTIVE_CASES = [
    ("supcon", {"temperature": 0.1}),
    ("supcon", {"temperature": 0.5}),
    ("lacln", {"temperature": 0.5}),
    ("lacln", {"temperature": 0.2, "hard_negatives": False}),
    ("lacln", {"temperature": 0.3, "detach_weights": True}),
    ("h-scl", {"temperature": 0.5, "beta": 1.0}),
    ("h-scl", {"temperature": 0.5, "beta": 0.0}),
    ("h-scl", {"temperature": 0.2, "beta": 2.5}),
    ("h-scl", {"temperature": 0.5, "beta": 0.5, "detach_weights": True}),
]


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize(("name", "params"), CONTRASTIVE_CASES, ids=lambda v: str(v))
def test_contrastive_loss_matches_literal_formula(name, params, case):
    labels = torch.tensor(LABEL_CASES[case])
    literal = LITERAL_CONTRASTIVE[name]
    loss = create_loss(name, **params)
    for seed in range(2):
        _, z = _data(len(labels), seed)
        terms = loss(None, z, labels)
        assert terms.ce is None and terms.contrastive is terms.total
        assert float(terms.total) == pytest.approx(literal(z, labels, {**loss.params, **params}), rel=RTOL, abs=1e-12)


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("name", sorted(MIXES))
def test_mix_matches_literal_formula(name, case):
    labels = torch.tensor(LABEL_CASES[case])
    term_name, fixed = MIXES[name]
    loss = create_loss(name, lam=0.9, temperature=0.3)
    logits, z = _data(len(labels), 3)
    ce = literal_ce(logits, labels)
    con = LITERAL_CONTRASTIVE[term_name](z, labels, {**loss.params, **fixed})
    terms = loss(logits, z, labels)
    assert float(terms.ce) == pytest.approx(ce, rel=RTOL)
    assert float(terms.contrastive) == pytest.approx(con, rel=RTOL, abs=1e-12)
    assert float(terms.total) == pytest.approx(0.1 * ce + 0.9 * con, rel=RTOL)


@pytest.mark.parametrize("name", sorted(MIXES))
def test_mix_weights_are_not_swapped(name):
    # CE and contrastive values far apart: (1-λ)·CE + λ·con and λ·CE + (1-λ)·con differ clearly
    labels = torch.tensor(LABEL_CASES["balanced"])
    logits, z = _data(len(labels), 5)
    logits = 10 * logits  # a large CE
    terms = create_loss(name, lam=0.9, temperature=0.5)(logits, z, labels)
    ce, con = float(terms.ce), float(terms.contrastive)
    assert abs(ce - con) > 1.0
    assert float(terms.total) == pytest.approx(0.1 * ce + 0.9 * con, rel=1e-12)
    assert abs(float(terms.total) - (0.9 * ce + 0.1 * con)) > 0.5


def test_z_labels_label_the_embeddings_and_labels_the_logits():
    # two views: logits (B, C) with labels (B,), z (2B, d) with z_labels (2B,)
    labels = torch.tensor([0, 1, 2, 0])
    z_labels = torch.cat([labels, labels])
    logits, _ = _data(4, 7)
    _, z = _data(8, 8)
    terms = create_loss("clce")(logits, z, labels, z_labels=z_labels)
    assert float(terms.ce) == pytest.approx(literal_ce(logits, labels), rel=RTOL)
    assert float(terms.contrastive) == pytest.approx(_mean(literal_lacln(z, z_labels, 0.5)), rel=RTOL)


# --------------------------------------------------------------------------- what the switches do


def test_hard_negative_weighting_matters():
    labels = torch.tensor(LABEL_CASES["repeated-unsorted"])
    logits, z = _data(len(labels), 11)
    clce = create_loss("clce")(logits, z, labels)
    nohnm = create_loss("clce-nohnm")(logits, z, labels)
    assert torch.equal(clce.ce, nohnm.ce)
    assert abs(float(clce.contrastive) - float(nohnm.contrastive)) > 1e-3
    # with HNM the negative term is |N|·E_softmax[e^s] >= sum_k e^s (Chebyshev), so LACLN grows
    assert float(clce.contrastive) > float(nohnm.contrastive)


def test_hscl_beta_zero_is_the_authors_scl_baseline_not_supcon():
    labels = torch.tensor(LABEL_CASES["repeated-unsorted"])
    _, z = _data(len(labels), 12)
    beta0 = float(create_loss("h-scl", beta=0.0)(None, z, labels).total)
    assert beta0 == pytest.approx(_pair_mean(literal_scl_baseline_pairs(z, labels, 0.5)), rel=RTOL)
    assert abs(beta0 - float(create_loss("supcon", temperature=0.5)(None, z, labels).total)) > 1e-3
    beta1 = float(create_loss("h-scl", beta=1.0)(None, z, labels).total)
    beta3 = float(create_loss("h-scl", beta=3.0)(None, z, labels).total)
    # tilting towards hard negatives raises the weighted mean of e^{s}: the loss grows with beta
    assert beta0 < beta1 < beta3


def test_hscl_mean_runs_over_pairs_not_anchors():
    labels = torch.tensor(LABEL_CASES["repeated-unsorted"])  # anchors have 3, 2 or 1 positives
    _, z = _data(len(labels), 13)
    pairs = literal_hscl_pairs(z, labels, 0.5, 1.0)
    none = hscl_loss(z, labels, 0.5, 1.0, reduction="none")
    for i, got in enumerate(none.tolist()):
        mine = [v for (a, _p), v in pairs.items() if a == i]
        assert got == pytest.approx(sum(mine) / len(mine), rel=RTOL)
    anchor_mean = float(torch.nanmean(none))
    pair_mean = float(create_loss("h-scl")(None, z, labels).total)
    assert pair_mean == pytest.approx(_pair_mean(pairs), rel=RTOL)
    assert abs(pair_mean - anchor_mean) > 1e-4
    assert float(hscl_loss(z, labels, reduction="sum")) == pytest.approx(float(torch.nansum(none)), rel=RTOL)


@pytest.mark.parametrize(("name", "params"), [("lacln", {}), ("h-scl", {"beta": 2.0})])
def test_detached_weights_change_the_gradient_not_the_value(name, params):
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    _, z = _data(6, 14)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    a = create_loss(name, **params)(None, z1, labels).total
    b = create_loss(name, detach_weights=True, **params)(None, z2, labels).total
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    a.backward()
    b.backward()
    assert not torch.allclose(z1.grad, z2.grad)


# --------------------------------------------------------------------------- gradients

GRAD_CASES = [
    ("supcon", {"temperature": 0.3}),
    ("lacln", {"temperature": 0.3}),
    ("lacln", {"temperature": 0.3, "hard_negatives": False}),
    ("h-scl", {"temperature": 0.3, "beta": 0.0}),
    ("h-scl", {"temperature": 0.3, "beta": 1.5}),
    ("ce", {"label_smoothing": 0.1}),
    ("ce+supcon", {"lam": 0.6, "temperature": 0.3}),
    ("clce", {"lam": 0.6, "temperature": 0.3}),
    ("clce-nohnm", {"lam": 0.6, "temperature": 0.3}),
    ("ce+h-scl", {"lam": 0.6, "temperature": 0.3, "beta": 1.5}),
]


@pytest.mark.parametrize(("name", "params"), GRAD_CASES, ids=lambda v: str(v))
def test_gradcheck(name, params):
    # (detach_weights=True is a stop-gradient: by design not the derivative of the value)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 is a singleton anchor
    logits, z = _data(6, 1, c=3, d=4)
    logits.requires_grad_(True)
    z.requires_grad_(True)
    loss = create_loss(name, **params)

    def f(lg, zz):
        return loss(lg if loss.uses_ce else None, zz if loss.uses_contrastive else None, labels).total

    inputs = tuple(t for t, used in ((logits, loss.uses_ce), (z, loss.uses_contrastive)) if used)
    if len(inputs) == 2:
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    elif loss.uses_ce:
        assert torch.autograd.gradcheck(lambda lg: f(lg, None), inputs, eps=1e-6, atol=1e-6)
    else:
        assert torch.autograd.gradcheck(lambda zz: f(None, zz), inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["supcon", "lacln", "h-scl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stable_at_small_temperature(name, dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, generator=g)
    z = (base + 1e-4 * torch.randn(32, 16, generator=g)).to(dtype).requires_grad_(True)
    loss = create_loss(name, temperature=0.05)
    total = loss(None, z, torch.arange(32) % 4).total
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(z.grad).all()
    far = torch.eye(8, dtype=torch.float32).repeat(4, 1).requires_grad_(True)  # exp(±20) terms
    total = loss(None, far, torch.arange(32) % 8).total
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(far.grad).all()


@pytest.mark.parametrize("name", ["supcon", "lacln", "h-scl"])
def test_no_pair_gives_an_attached_zero(name):
    z = torch.randn(5, 3, requires_grad=True)
    total = create_loss(name)(None, z, torch.arange(5)).total
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
