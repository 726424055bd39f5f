"""fewshot_bench.diagnose: similarity histograms and the isotropy score."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from fewshot_bench import diagnose
from fewshot_bench.errors import ConfigError


def _isotropy_reference(w):
    """Mu & Viswanath (2018) written out: min Z(c) / max Z(c) over the eigenvectors of W^T W, both signs."""
    _, vecs = np.linalg.eigh(w.T @ w)
    z = [np.exp(w @ (s * vecs[:, k])).sum() for k in range(vecs.shape[1]) for s in (1, -1)]
    return min(z) / max(z)


def test_isotropy_of_isotropic_gaussian_is_near_one():
    x = np.random.default_rng(0).standard_normal((20000, 8))
    assert diagnose.isotropy(x) > 0.9


def test_isotropy_of_anisotropic_data_is_near_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 8)) * np.array([20.0] + [0.1] * 7)
    assert diagnose.isotropy(x) < 1e-6
    offset = rng.random((2000, 8)) + np.array([10.0] + [0.0] * 7)  # non-negative features far from 0
    assert diagnose.isotropy(offset) < 1e-6


def test_isotropy_matches_definition_and_is_stable():
    w = np.random.default_rng(1).standard_normal((300, 5)) * np.array([1.0, 0.8, 0.5, 0.3, 0.2])
    assert diagnose.isotropy(w) == pytest.approx(_isotropy_reference(w), rel=1e-10)
    big = 1000.0 * w  # exp would overflow; log-sum-exp does not
    assert 0.0 <= diagnose.isotropy(big) <= 1.0
    assert np.isfinite(logsumexp(big[:, 0]))


def test_isotropy_options():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 4)) + 3.0
    assert diagnose.isotropy(x, center=True) > 0.9 > diagnose.isotropy(x)
    assert diagnose.isotropy(x, both_signs=False) >= diagnose.isotropy(x)
    assert diagnose.isotropy(x * 50, normalize=True) == pytest.approx(diagnose.isotropy(x, normalize=True))


def _orthogonal_classes(n_per_class=30, n_classes=4, noise=0.0, seed=0):
    """Class c sits on basis vector e_c: positive cosine 1, negative cosine 0."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.eye(n_classes)[y] * rng.uniform(0.5, 2.0, (y.size, 1)) + noise * rng.standard_normal((y.size, n_classes))
    return x, y


def test_large_float32_memmap_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(diagnose, "_CHUNK", 64)  # many blocks on small data
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 6)).astype(np.float32) + 1.0
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    y = rng.integers(0, 7, 1000)
    assert diagnose.isotropy(mm) == pytest.approx(_isotropy_reference(x.astype(np.float64)), rel=1e-9)
    assert diagnose.isotropy(mm, center=True) == pytest.approx(
        _isotropy_reference(x.astype(np.float64) - x.astype(np.float64).mean(0)), rel=1e-9)
    pos, neg = diagnose.pair_similarities(mm, y, max_pairs=300, seed=1)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert pos.size == neg.size == 300 and np.all(np.abs(pos) <= 1 + 1e-9)
    assert (neg.mean(), pos.mean()) == pytest.approx((np.mean(z @ z.T), np.mean(z @ z.T)), abs=0.1)


def test_pair_similarities_all_pairs():
    x, y = _orthogonal_classes()
    pos, neg = diagnose.pair_similarities(x, y)
    n = y.size
    assert pos.size == 4 * 30 * 29 // 2 and pos.size + neg.size == n * (n - 1) // 2
    np.testing.assert_allclose(pos, 1.0)
    np.testing.assert_allclose(neg, 0.0, atol=1e-12)


def test_pair_similarities_sampled_is_seeded_and_correct():
    x, y = _orthogonal_classes(n_per_class=100, n_classes=5)
    pos, neg = diagnose.pair_similarities(x, y, max_pairs=1000, seed=3)
    assert pos.size == 1000 and neg.size == 1000
    np.testing.assert_allclose(pos, 1.0)
    np.testing.assert_allclose(neg, 0.0, atol=1e-12)
    again = diagnose.pair_similarities(x, y, max_pairs=1000, seed=3)
    np.testing.assert_array_equal(pos, again[0])
    np.testing.assert_array_equal(neg, again[1])


def test_diagnose_means_and_figure(tmp_path):
    x, y = _orthogonal_classes(n_per_class=80, noise=0.05)
    r = diagnose.diagnose(x, y, out_dir=tmp_path, max_pairs=5000, seed=0)
    assert r["pos_mean"] == pytest.approx(1.0, abs=0.02)
    assert r["neg_mean"] == pytest.approx(0.0, abs=0.02)
    assert r["separation"] > 0.95 and r["overlap"] < 0.01
    assert 0 < r["isotropy"] <= 1 and r["n_pos_pairs"] == 5000 and r["n_classes"] == 4
    assert [p.rsplit("/", 1)[1] for p in r["files"]] == ["similarity.png", "similarity.pdf"]
    text = diagnose.format_diagnosis(r)
    assert "isotropy" in text and "positive pairs" in text


def test_diagnose_without_figure_and_bad_input():
    x, y = _orthogonal_classes()
    assert "files" not in diagnose.diagnose(x, y)
    with pytest.raises(ConfigError, match="30 labels for 120"):
        diagnose.diagnose(x, y[:30])
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        diagnose.isotropy(np.zeros(5))
    with pytest.raises(ConfigError, match="all zeros"):
        diagnose.pair_similarities(np.zeros((3, 2)), np.array([0, 0, 1]))
    assert math.isnan(diagnose.diagnose(x, np.arange(y.size))["pos_mean"])  # no positive pairs
