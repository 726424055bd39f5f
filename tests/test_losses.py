"""Losses against slow, literal float64 implementations of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot_bench.errors import ConfigError
from fewshot_bench.train.losses import clce_loss, cross_entropy, lacln_loss, supcon_loss

# --------------------------------------------------------------------------- literal references


def _normalise(z):
    z = z.double()
    return [row / math.sqrt(float((row * row).sum())) for row in z]


def literal_lacln(z, labels, tau, hard_negatives=True):
    """CLCE Eq. 3 written out anchor by anchor; returns per-anchor losses (None: no positive)."""
    z = _normalise(z)
    labels = [int(v) for v in labels]
    b = len(labels)
    dot = [[float((z[i] * z[j]).sum()) for j in range(b)] for i in range(b)]
    out = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and labels[p] == labels[i]]
        neg = [k for k in range(b) if labels[k] != labels[i]]
        if not pos:
            out.append(None)
            continue
        e_pos = sum(math.exp(dot[i][p] / tau) for p in pos)
        z_neg = sum(math.exp(dot[i][k] / tau) for k in neg)
        neg_term = 0.0
        for k in neg:
            w = len(neg) * math.exp(dot[i][k] / tau) / z_neg if hard_negatives else 1.0
            neg_term += w * math.exp(dot[i][k] / tau)
        out.append(-math.log((1.0 / len(pos)) * e_pos / (e_pos + neg_term)))
    return out


def literal_supcon(z, labels, tau):
    """Khosla et al. (2020) Eq. 2 (L_out) anchor by anchor."""
    z = _normalise(z)
    labels = [int(v) for v in labels]
    b = len(labels)
    dot = [[float((z[i] * z[j]).sum()) for j in range(b)] for i in range(b)]
    out = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and labels[p] == labels[i]]
        if not pos:
            out.append(None)
            continue
        den = sum(math.exp(dot[i][a] / tau) for a in range(b) if a != i)
        out.append(-sum(math.log(math.exp(dot[i][p] / tau) / den) for p in pos) / len(pos))
    return out


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else 0.0


LABEL_CASES = {
    "balanced": [0, 0, 1, 1, 2, 2, 3, 3],
    "singletons": [0, 0, 0, 1, 2, 3, 3, 4, 5],  # classes 1, 2, 4, 5 have a single sample
    "all-same": [7] * 6,
    "two-classes": [1, 0, 1, 0, 1, 1, 0],
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("hnm", [True, False])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_lacln_matches_literal_formula(case, hnm, tau):
    labels = torch.tensor(LABEL_CASES[case])
    for seed in range(3):
        z = torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = literal_lacln(z, labels, tau, hnm)
        got = lacln_loss(z, labels, tau, hard_negatives=hnm, reduction="none")
        for r, g in zip(ref, got.tolist(), strict=True):
            if r is None:
                assert math.isnan(g)
            else:
                assert g == pytest.approx(r, rel=1e-10, abs=1e-12)
        assert float(lacln_loss(z, labels, tau, hard_negatives=hnm)) == pytest.approx(_mean(ref), rel=1e-10)
        total = sum(v for v in ref if v is not None)
        assert float(lacln_loss(z, labels, tau, hnm, reduction="sum")) == pytest.approx(total, rel=1e-10)
        # detaching the weights changes the gradient, never the value
        assert torch.allclose(
            lacln_loss(z, labels, tau, hnm, detach_weights=True), lacln_loss(z, labels, tau, hnm)
        )


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_supcon_matches_literal_formula(case):
    labels = torch.tensor(LABEL_CASES[case])
    for seed in range(3):
        z = torch.randn(
            len(labels), 4, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64
        )
        ref = literal_supcon(z, labels, 0.1)
        got = supcon_loss(z, labels, 0.1, reduction="none").tolist()
        for r, g in zip(ref, got, strict=True):
            assert math.isnan(g) if r is None else g == pytest.approx(r, rel=1e-10)
        assert float(supcon_loss(z, labels, 0.1)) == pytest.approx(_mean(ref), rel=1e-10)


def test_hnm_upweights_hard_negatives():
    # With HNM the negative term is |N| * E_softmax[exp(s)] >= mean-weighted sum (Jensen / Chebyshev).
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.arange(12) % 3
    assert lacln_loss(z, labels, hard_negatives=True) >= lacln_loss(z, labels, hard_negatives=False)


def test_clce_is_the_convex_mix():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    want = 0.3 * cross_entropy(logits, labels) + 0.7 * lacln_loss(z, labels, 0.2)
    assert torch.allclose(clce_loss(logits, z, labels, lam=0.7, temperature=0.2), want)
    nohnm = 0.3 * cross_entropy(logits, labels) + 0.7 * lacln_loss(z, labels, 0.2, hard_negatives=False)
    assert torch.allclose(clce_loss(logits, z, labels, 0.7, 0.2, hard_negatives=False), nohnm)
    assert torch.allclose(clce_loss(logits, z, labels, lam=0.0), cross_entropy(logits, labels))


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y: lacln_loss(z, y, 0.3),
        lambda z, y: lacln_loss(z, y, 0.3, hard_negatives=False),
        lambda z, y: supcon_loss(z, y, 0.3),
        lambda z, y: clce_loss(z[:, :3] * 2, z, y, lam=0.6, temperature=0.3),
    ],
    ids=["lacln", "lacln-nohnm", "supcon", "clce"],
)
def test_gradcheck(fn):
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 is a singleton anchor
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, labels), (z,), eps=1e-6, atol=1e-6)


def test_detached_weights_change_only_the_gradient():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    z1 = torch.randn(
        6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True
    )
    z2 = z1.detach().clone().requires_grad_(True)
    lacln_loss(z1, labels).backward()
    lacln_loss(z2, labels, detach_weights=True).backward()
    assert not torch.allclose(z1.grad, z2.grad)


@pytest.mark.parametrize("fn", [lacln_loss, supcon_loss])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stable_at_small_temperature_with_near_identical_embeddings(fn, dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, generator=g)
    z = (base + 1e-4 * torch.randn(32, 16, generator=g)).to(dtype).requires_grad_(True)
    labels = torch.arange(32) % 4
    loss = fn(z, labels, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # and far apart embeddings at the same temperature (exp(±40) terms)
    far = torch.eye(8, dtype=torch.float32).repeat(4, 1).requires_grad_(True)
    loss = fn(far, torch.arange(32) % 8, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()


@pytest.mark.parametrize("fn", [lacln_loss, supcon_loss])
def test_no_positive_anywhere_gives_attached_zero(fn):
    z = torch.randn(5, 3, requires_grad=True)
    loss = fn(z, torch.arange(5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    assert torch.isnan(fn(z, torch.arange(5), reduction="none")).all()
    one = torch.randn(1, 3, requires_grad=True)
    assert fn(one, torch.tensor([0])).item() == 0.0


def test_all_same_labels_is_constant_log_p():
    # no negatives: every anchor's loss is log|P(i)| whatever z is
    z = torch.randn(5, 3, dtype=torch.float64)
    assert float(lacln_loss(z, torch.zeros(5, dtype=torch.long))) == pytest.approx(math.log(4))


def test_bad_parameters():
    z, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="--temperature"):
        lacln_loss(z, y, temperature=0)
    with pytest.raises(ConfigError, match="--lam"):
        clce_loss(torch.randn(4, 2), z, y, lam=1.5)
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss(z, y, reduction="avg")
    with pytest.raises(ValueError, match="rows"):
        lacln_loss(z, y[:3])
