"""fewshot_bench.stats against scipy.stats and a literal Holm reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from fewshot_bench import stats
from fewshot_bench.errors import ConfigError, FewshotBenchError

TOL = 1e-12


def _acc(rng: np.random.Generator, n: int, p: float = 0.6, queries: int = 75) -> np.ndarray:
    """Quantised per-episode accuracies, like a 5-way 15-query episode gives."""
    return rng.binomial(queries, p, size=n) / queries


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- mean_ci


@pytest.mark.parametrize("n", [2, 3, 30, 3000])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_t_matches_scipy_t_interval(rng, n, level):
    x = _acc(rng, n)
    r = stats.mean_ci(x, level=level, method="t")
    lo, hi = scipy.stats.t.interval(level, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert r.mean == pytest.approx(x.mean(), abs=TOL)
    assert r.std == pytest.approx(np.std(x, ddof=1), abs=TOL)
    assert r.low == pytest.approx(lo, abs=TOL)
    assert r.high == pytest.approx(hi, abs=TOL)
    assert (r.n, r.level, r.method) == (n, level, "t")


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_normal_matches_scipy_norm_interval(rng, level):
    x = _acc(rng, 500)
    r = stats.mean_ci(x, level=level, method="normal")
    lo, hi = scipy.stats.norm.interval(level, loc=x.mean(), scale=scipy.stats.sem(x))
    assert r.low == pytest.approx(lo, abs=TOL)
    assert r.high == pytest.approx(hi, abs=TOL)


def test_mean_ci_default_is_95_t_with_ddof_1():
    x = np.array([0.5, 0.6, 0.7, 0.8])
    r = stats.mean_ci(x)
    s = math.sqrt(np.sum((x - x.mean()) ** 2) / 3)
    assert r.std == pytest.approx(s, abs=TOL)
    assert r.ci == pytest.approx(scipy.stats.t.ppf(0.975, 3) * s / 2, abs=TOL)
    assert (r.level, r.method) == (0.95, "t")


def test_mean_ci_normal_95_is_1_96_sigma_over_sqrt_n(rng):
    x = _acc(rng, 3000)
    r = stats.mean_ci(x, method="normal")
    assert r.ci == pytest.approx(1.959963984540054 * np.std(x, ddof=1) / math.sqrt(3000), abs=TOL)


def test_mean_ci_single_value_has_nan_spread():
    r = stats.mean_ci([0.7])
    assert r.mean == 0.7 and r.n == 1
    assert math.isnan(r.std) and math.isnan(r.ci)


def test_mean_ci_constant_values_have_zero_width():
    r = stats.mean_ci([0.4] * 10)
    assert r.std == 0.0 and r.ci == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"acc": []}, "no values"),
        ({"acc": [0.5, float("nan")]}, "NaN or infinite"),
        ({"acc": [[0.5, 0.6]]}, "1-D"),
        ({"acc": [0.5, 0.6], "level": 1.0}, "between 0 and 1"),
        ({"acc": [0.5, 0.6], "level": "high"}, "number"),
        ({"acc": [0.5, 0.6], "method": "bootstrap"}, "unknown"),
    ],
)
def test_mean_ci_rejects_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        stats.mean_ci(**kwargs)


def test_errors_are_user_errors():
    with pytest.raises(FewshotBenchError):
        stats.mean_ci([])


# ---------------------------------------------------------------- paired tests


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("n", [5, 40, 2000])
def test_paired_ttest_matches_scipy(rng, n, alternative):
    a = _acc(rng, n, 0.6)
    b = np.clip(a + rng.normal(0.01, 0.05, n), 0, 1)
    r = stats.paired_ttest(a, b, alternative=alternative)
    ref = scipy.stats.ttest_rel(a, b, alternative=alternative)
    assert r.statistic == pytest.approx(float(ref.statistic), abs=TOL)
    assert r.pvalue == pytest.approx(float(ref.pvalue), abs=TOL)


def test_paired_ttest_identical_runs_p_is_one():
    a = np.array([0.5, 0.6, 0.7])
    assert stats.paired_ttest(a, a.copy()) == (0.0, 1.0)


def test_paired_ttest_constant_shift():
    a = np.array([0.5, 0.6, 0.7])
    r = stats.paired_ttest(a + 0.1, a)
    assert r.statistic == math.inf and r.pvalue == 0.0
    assert stats.paired_ttest(a + 0.1, a, alternative="less").pvalue == 1.0


def test_paired_ttest_rejects_different_lengths():
    with pytest.raises(ConfigError, match=r"differ in length \(3 vs 2"):
        stats.paired_ttest([0.1, 0.2, 0.3], [0.1, 0.2])


def test_paired_ttest_needs_two_episodes():
    with pytest.raises(ConfigError, match="at least 2"):
        stats.paired_ttest([0.1], [0.2])


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
@pytest.mark.parametrize("n", [12, 300])
def test_wilcoxon_matches_scipy(rng, n, alternative, zero_method):
    a = _acc(rng, n, 0.6)
    b = _acc(rng, n, 0.62)  # ties and zero differences, as in real runs
    r = stats.wilcoxon(a, b, alternative=alternative, zero_method=zero_method)
    ref = scipy.stats.wilcoxon(a, b, alternative=alternative, zero_method=zero_method)
    assert r.statistic == pytest.approx(float(ref.statistic), abs=TOL)
    assert r.pvalue == pytest.approx(float(ref.pvalue), abs=TOL)


def test_wilcoxon_default_zero_method_is_wilcox(rng):
    a, b = _acc(rng, 200), _acc(rng, 200)
    ref = scipy.stats.wilcoxon(a, b, zero_method="wilcox")
    assert stats.wilcoxon(a, b).pvalue == pytest.approx(float(ref.pvalue), abs=TOL)


def test_wilcoxon_all_zero_differences_p_is_one():
    a = np.array([0.5, 0.6, 0.7, 0.8])
    assert stats.wilcoxon(a, a.copy()) == (0.0, 1.0)


def test_wilcoxon_rejects_bad_zero_method():
    with pytest.raises(ConfigError, match="zero_method"):
        stats.wilcoxon([0.1, 0.2], [0.2, 0.1], zero_method="drop")


# ---------------------------------------------------------------- mean difference


@pytest.mark.parametrize("method", ["t", "normal"])
def test_mean_difference_is_paired_interval(rng, method):
    a = _acc(rng, 600, 0.6)
    b = np.clip(a - rng.normal(0.02, 0.04, 600), 0, 1)
    diff, half = stats.mean_difference(a, b, level=0.95, method=method)
    d = a - b
    if method == "t":
        lo, hi = scipy.stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    else:
        lo, hi = scipy.stats.norm.interval(0.95, loc=d.mean(), scale=scipy.stats.sem(d))
    assert diff == pytest.approx(d.mean(), abs=TOL)
    assert diff - half == pytest.approx(lo, abs=TOL)
    assert diff + half == pytest.approx(hi, abs=TOL)


# ---------------------------------------------------------------- Holm


def _holm_reference(p: list[float]) -> list[float]:
    """Holm (1979) literally: step down through sorted p-values, m - j + 1 multipliers."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    adjusted = [0.0] * m
    running = 0.0
    for j, i in enumerate(order, start=1):
        running = max(running, min(1.0, (m - j + 1) * p[i]))
        adjusted[i] = running
    return adjusted


@pytest.mark.parametrize("m", [1, 2, 7, 50])
def test_holm_matches_definition(rng, m):
    p = rng.random(m) ** 3
    np.testing.assert_allclose(stats.holm(p), _holm_reference(list(p)), atol=TOL, rtol=0)


def test_holm_known_values():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5], atol=TOL)


def test_holm_is_monotone_and_capped(rng):
    p = rng.random(40)
    adj = stats.holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj <= 1.0) and np.all(adj >= p)


def test_holm_ties_and_nan():
    adj = stats.holm([0.02, np.nan, 0.02, 0.9])
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2, 3]], _holm_reference([0.02, 0.02, 0.9]), atol=TOL)


def test_holm_empty_and_invalid():
    assert stats.holm([]).shape == (0,)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        stats.holm([0.5, 1.5])
