"""fewshot_bench.stats against scipy.stats and a literal Holm reference."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import scipy.stats

from fewshot_bench import stats
from fewshot_bench.errors import ConfigError, FewshotBenchError

TOL = 1e-12  # absolute, for accuracies and interval ends (values near 0.5)
RTOL = 1e-9  # relative, for statistics and p-values (a p-value can be 1e-54: never an absolute tolerance)


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
    assert r.statistic == pytest.approx(float(ref.statistic), rel=RTOL, abs=0)
    assert r.pvalue == pytest.approx(float(ref.pvalue), rel=RTOL, abs=0)


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
    assert r.statistic == pytest.approx(float(ref.statistic), rel=RTOL, abs=0)
    assert r.pvalue == pytest.approx(float(ref.pvalue), rel=RTOL, abs=0)


def test_wilcoxon_default_zero_method_is_wilcox(rng):
    a, b = _acc(rng, 200), _acc(rng, 200)
    ref = scipy.stats.wilcoxon(a, b, zero_method="wilcox")
    assert stats.wilcoxon(a, b).pvalue == pytest.approx(float(ref.pvalue), rel=RTOL, abs=0)


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


# ---------------------------------------------------------------- exact messages, boundaries, defaults
# Each case below pins one thing a wrong implementation would change: the whole error message (not a
# fragment), the edges of every comparison (n = 1, n = 2, p = 0, p = 1, level = 0 and 1), every default.


def _raises_exactly(message: str):
    """pytest.raises(ConfigError) matching the entire one-line message."""
    return pytest.raises(ConfigError, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: stats.mean_ci([]), "accuracies: no values (0 episodes); evaluate at least one episode"),
        (
            lambda: stats.mean_ci([[0.5, 0.6]]),
            "accuracies: expected a 1-D array of per-episode accuracies, got shape (1, 2)",
        ),
        (
            lambda: stats.mean_ci([0.5, np.nan, 0.6, np.inf, 0.7]),
            "accuracies: 2 of 5 values are NaN or infinite (first at index 1); check the per-episode accuracies",
        ),
        (
            lambda: stats.mean_ci([0.5, 0.6], level=1.0),
            "level=1.0: must lie strictly between 0 and 1, e.g. 0.95",
        ),
        (
            lambda: stats.mean_ci([0.5, 0.6], level=0),
            "level=0.0: must lie strictly between 0 and 1, e.g. 0.95",
        ),
        (
            lambda: stats.mean_ci([0.5, 0.6], level=-0.5),
            "level=-0.5: must lie strictly between 0 and 1, e.g. 0.95",
        ),
        (
            lambda: stats.mean_ci([0.5, 0.6], level="high"),
            "level='high': expected a number in (0, 1), e.g. 0.95",
        ),
        (lambda: stats.mean_ci([0.5, 0.6], level=None), "level=None: expected a number in (0, 1), e.g. 0.95"),
        (
            lambda: stats.mean_ci([0.5, 0.6], method="bootstrap"),
            "CI method 'bootstrap' is unknown; use one of: t, normal",
        ),
        (
            lambda: stats.paired_ttest([0.1, 0.2], [0.1, 0.2], alternative="bigger"),
            "alternative='bigger': use one of: two-sided, greater, less",
        ),
        (
            lambda: stats.wilcoxon([0.1, 0.2], [0.2, 0.1], alternative="bigger"),
            "alternative='bigger': use one of: two-sided, greater, less",
        ),
        (
            lambda: stats.wilcoxon([0.1, 0.2], [0.2, 0.1], zero_method="drop"),
            "zero_method='drop': use one of: wilcox, pratt, zsplit",
        ),
        (
            lambda: stats.paired_ttest([[0.1, 0.2]], [0.1, 0.2]),
            "a: expected a 1-D array of per-episode accuracies, got shape (1, 2)",
        ),
        (
            lambda: stats.paired_ttest([0.1, 0.2], [0.1, np.nan]),
            "b: 1 of 2 values are NaN or infinite (first at index 1); check the per-episode accuracies",
        ),
        (lambda: stats.wilcoxon([], []), "a: no values (0 episodes); evaluate at least one episode"),
        (
            lambda: stats.paired_ttest([0.1, 0.2, 0.3], [0.1, 0.2]),
            "paired arrays differ in length (3 vs 2 episodes); a paired comparison needs both runs on the same episodes",
        ),
        (lambda: stats.paired_ttest([0.1], [0.2]), "a paired t-test needs at least 2 episodes, got 1"),
        (
            lambda: stats.mean_difference([0.1, 0.2], [0.3, 0.4], level=1.5),
            "level=1.5: must lie strictly between 0 and 1, e.g. 0.95",
        ),
        (
            lambda: stats.mean_difference([0.1, 0.2], [0.3, 0.4], method="z"),
            "CI method 'z' is unknown; use one of: t, normal",
        ),
        (  # 0 and 1 are valid; four are not, the first three are named
            lambda: stats.holm([1.5, 0.0, 1.0, 0.2, -0.1, 2.0, 3.0]),
            "p-values must lie in [0, 1], got [1.5, -0.1, 2.0]",
        ),
        (lambda: stats.holm([-1e-300]), "p-values must lie in [0, 1], got [-1e-300]"),
    ],
)
def test_error_messages_are_exact(call, message):
    with _raises_exactly(message):
        call()


def test_level_given_as_text_is_read_as_a_number():
    r = stats.mean_ci([0.5, 0.6, 0.7], level="0.9")
    assert r.level == 0.9 and isinstance(r.level, float)
    assert r.ci == pytest.approx(scipy.stats.t.ppf(0.95, 2) * 0.1 / math.sqrt(3), rel=RTOL)


def test_mean_ci_single_value_is_a_complete_result():
    r = stats.mean_ci([0.7])
    assert (r.mean, r.n, r.level, r.method) == (0.7, 1, 0.95, "t")
    r = stats.mean_ci(np.array([0.25]), level=0.9, method="normal")
    assert (r.mean, r.n, r.level, r.method) == (0.25, 1, 0.9, "normal")
    assert math.isnan(r.std) and math.isnan(r.ci) and math.isnan(r.low) and math.isnan(r.high)


def test_mean_ci_two_values_pinned():
    # t_{0.975, 1} = 12.706204736174707; s = 0.1 * sqrt(2); half-width t * s / sqrt(2) = 1.2706...
    r = stats.mean_ci([0.4, 0.6])
    assert (r.n, r.level, r.method) == (2, 0.95, "t")
    assert r.mean == pytest.approx(0.5, rel=1e-15)
    assert r.std == pytest.approx(0.1 * math.sqrt(2), rel=1e-12)
    assert r.ci == pytest.approx(1.270620473617469, rel=1e-12)
    assert (r.low, r.high) == pytest.approx((0.5 - 1.270620473617469, 0.5 + 1.270620473617469), rel=1e-12)


def test_mean_ci_four_values_pinned():
    r = stats.mean_ci([0.5, 0.6, 0.7, 0.8])
    assert r.std == pytest.approx(0.12909944487358058, rel=1e-12)
    assert r.ci == pytest.approx(0.20542602567605212, rel=1e-12)
    assert stats.mean_ci([0.5, 0.6, 0.7, 0.8], method="normal").ci == pytest.approx(
        1.959963984540054 * 0.12909944487358058 / 2, rel=1e-12
    )


def test_integer_inputs_are_differenced_without_wrap_around():
    # correct-query counts as uint8: 3 - 5 must be -2, not 254
    a = np.array([3, 5, 4, 6], dtype=np.uint8)
    b = np.array([5, 4, 4, 2], dtype=np.uint8)
    af, bf = a.astype(float), b.astype(float)
    ref = scipy.stats.ttest_rel(af, bf)
    r = stats.paired_ttest(a, b)
    assert r.statistic == pytest.approx(float(ref.statistic), rel=RTOL)
    assert r.pvalue == pytest.approx(float(ref.pvalue), rel=RTOL)
    diff, half = stats.mean_difference(a, b)
    assert diff == pytest.approx(0.75, rel=1e-12)
    assert half == pytest.approx(stats.mean_ci(af - bf).ci, rel=1e-12)
    assert stats.wilcoxon(a, b).pvalue == pytest.approx(float(scipy.stats.wilcoxon(af, bf).pvalue), rel=RTOL)
    assert stats.mean_ci(np.array([250, 251], dtype=np.uint8)).mean == 250.5


# five episodes: statistic and p-values from scipy 1.x, pinned
_A5 = [0.6, 0.7, 0.8, 0.65, 0.9]
_B5 = [0.55, 0.6, 0.8, 0.6, 0.7]


@pytest.mark.parametrize(
    "alternative, pvalue",
    [
        ("two-sided", 0.07774164094789987),
        ("greater", 0.038870820473949935),
        ("less", 0.96112917952605),
    ],
)
def test_paired_ttest_pinned(alternative, pvalue):
    r = stats.paired_ttest(_A5, _B5, alternative=alternative)
    assert r.statistic == pytest.approx(2.3590712984783533, rel=1e-12)
    assert r.pvalue == pytest.approx(pvalue, rel=1e-9)


def test_paired_ttest_default_is_two_sided():
    assert stats.paired_ttest(_A5, _B5).pvalue == pytest.approx(0.07774164094789987, rel=1e-9)


@pytest.mark.parametrize(
    "alternative, zero_method, statistic, pvalue",
    [
        ("two-sided", "wilcox", 0.0, 0.125),
        ("two-sided", "zsplit", 0.5, 0.125),
        ("greater", "wilcox", 10.0, 0.0625),
        ("greater", "pratt", 14.0, 0.0625),
        ("greater", "zsplit", 14.5, 0.0625),
        ("less", "wilcox", 10.0, 1.0),
    ],
)
def test_wilcoxon_pinned(alternative, zero_method, statistic, pvalue):
    assert stats.wilcoxon(_A5, _B5, alternative=alternative, zero_method=zero_method) == pytest.approx(
        (statistic, pvalue), rel=1e-12
    )


def test_wilcoxon_defaults_are_two_sided_wilcox():
    assert stats.wilcoxon(_A5, _B5) == pytest.approx((0.0, 0.125), rel=1e-12)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_matches_scipy_in_every_direction(rng, alternative):
    a = _acc(rng, 60, 0.6)
    b = _acc(rng, 60, 0.65)
    ref = scipy.stats.wilcoxon(a, b, alternative=alternative)
    assert stats.wilcoxon(a, b, alternative=alternative) == pytest.approx(
        (float(ref.statistic), float(ref.pvalue)), rel=RTOL, abs=0
    )


def test_tiny_p_values_agree_to_relative_precision(rng):
    a = _acc(rng, 300, 0.6)
    b = np.clip(a - 0.02 + rng.normal(0, 0.02, 300), 0, 1)
    r, ref = stats.paired_ttest(a, b), scipy.stats.ttest_rel(a, b)
    assert 0 < r.pvalue < 1e-40  # an absolute tolerance would accept any tiny number here
    assert r.pvalue == pytest.approx(float(ref.pvalue), rel=RTOL, abs=0)
    w, wref = stats.wilcoxon(a, b), scipy.stats.wilcoxon(a, b)
    assert 0 < w.pvalue < 1e-20
    assert w.pvalue == pytest.approx(float(wref.pvalue), rel=RTOL, abs=0)


def test_paired_ttest_two_episodes_is_scipy():
    a, b = [0.6, 0.9], [0.5, 0.6]
    ref = scipy.stats.ttest_rel(a, b)
    assert stats.paired_ttest(a, b) == pytest.approx((float(ref.statistic), float(ref.pvalue)), rel=RTOL)


@pytest.mark.parametrize(
    "shift, alternative, expected",
    [
        (0.125, "two-sided", (math.inf, 0.0)),
        (0.125, "greater", (math.inf, 0.0)),
        (0.125, "less", (math.inf, 1.0)),
        (-0.125, "two-sided", (-math.inf, 0.0)),
        (-0.125, "greater", (-math.inf, 1.0)),
        (-0.125, "less", (-math.inf, 0.0)),
        (0.5, "greater", (math.inf, 0.0)),
        (-0.5, "less", (-math.inf, 0.0)),
    ],
)
def test_paired_ttest_constant_shift_in_both_directions(shift, alternative, expected):
    a = np.array([0.25, 0.5])
    assert stats.paired_ttest(a + shift, a, alternative=alternative) == expected


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_identical_runs_in_every_direction(alternative):
    a = [0.5, 0.6]
    assert stats.paired_ttest(a, a, alternative=alternative) == (0.0, 1.0)
    assert stats.wilcoxon(a, a, alternative=alternative) == (0.0, 1.0)
    assert stats.wilcoxon([0.5], [0.5]) == (0.0, 1.0)


def test_wilcoxon_one_differing_episode_is_scipy():
    ref = scipy.stats.wilcoxon([0.5, 0.7], [0.5, 0.6])
    assert stats.wilcoxon([0.5, 0.7], [0.5, 0.6]) == pytest.approx((float(ref.statistic), float(ref.pvalue)))


def test_mean_difference_defaults_are_95_t():
    a = np.array([0.6, 0.7, 0.8, 0.65, 0.9])
    b = np.array([0.55, 0.6, 0.8, 0.6, 0.7])
    d = a - b
    diff, half = stats.mean_difference(a, b)
    assert diff == pytest.approx(d.mean(), rel=1e-12)
    assert half == pytest.approx(scipy.stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5), rel=1e-12)
    _, half90 = stats.mean_difference(a, b, level=0.9, method="normal")
    assert half90 == pytest.approx(scipy.stats.norm.ppf(0.95) * d.std(ddof=1) / math.sqrt(5), rel=1e-12)


def test_mean_difference_sign_and_single_episode():
    diff, half = stats.mean_difference([0.4], [0.7])
    assert diff == pytest.approx(-0.3, rel=1e-12) and math.isnan(half)


def test_holm_boundaries_zero_and_one_are_valid():
    np.testing.assert_allclose(stats.holm([0.0, 0.3]), [0.0, 0.3], rtol=1e-15)
    np.testing.assert_allclose(stats.holm([1.0, 0.2]), [1.0, 0.4], rtol=1e-15)
    np.testing.assert_array_equal(stats.holm([1.0]), [1.0])


def test_holm_single_p_value_is_unchanged():
    np.testing.assert_array_equal(stats.holm([0.037]), [0.037])
    np.testing.assert_array_equal(stats.holm(np.float64(0.037)), [0.037])  # a scalar is a family of one


def test_holm_caps_at_one():
    np.testing.assert_allclose(stats.holm([0.6, 0.7, 0.01]), [1.0, 1.0, 0.03], rtol=1e-15)


def test_holm_tied_p_values_get_equal_adjustments_whatever_their_order():
    # m = 4: sorted multipliers 4, 3, 2, 1. The tied pair takes 3 * 0.02 = 0.06 (the step-up maximum),
    # which member of the tie comes first cannot matter: adjusted values are equal within a tie.
    adj = stats.holm([0.02, 0.5, 0.02, 0.001])
    np.testing.assert_allclose(adj, [0.06, 0.5, 0.06, 0.004], rtol=1e-15)
    for perm in ([2, 0, 1, 3], [3, 1, 0, 2]):
        p = np.array([0.02, 0.5, 0.02, 0.001])[perm]
        np.testing.assert_allclose(stats.holm(p), adj[perm], rtol=1e-15)


def test_holm_nan_does_not_count_towards_m():
    adj = stats.holm([np.nan, 0.01, np.nan, 0.02])
    assert adj.dtype == np.float64 and adj.shape == (4,)
    assert np.isnan(adj[[0, 2]]).all()
    np.testing.assert_allclose(adj[[1, 3]], [0.02, 0.02], rtol=1e-15)  # m = 2, not 4
    all_nan = stats.holm([np.nan, np.nan])
    assert all_nan.dtype == np.float64 and np.isnan(all_nan).all()


def test_holm_flattens_a_table_of_p_values():
    np.testing.assert_allclose(stats.holm([[0.01, 0.04], [0.03, 0.5]]), [0.04, 0.09, 0.09, 0.5], rtol=1e-15)


def test_holm_tiny_p_values_relative():
    np.testing.assert_allclose(stats.holm([1e-54, 3e-60, 0.2]), [2e-54, 9e-60, 0.2], rtol=1e-14, atol=0)


def test_holm_reads_missing_p_values_as_nan():
    # p-values read back from a compare JSON, where an untestable comparison is null
    adj = stats.holm([0.01, None, 0.02])
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.02], rtol=1e-15)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_paired_ttest_constant_difference_is_exactly_infinite():
    # d = [0.1, 0.1, 0.1] exactly, but its mean is not exactly 0.1: scipy's s_d is 1.7e-17, not 0, and
    # it reports t = 1.0e16, p = 9.6e-33; the difference is constant, so t is infinite and p is 0
    a, b = [0.1, 0.1, 0.1], [0.0, 0.0, 0.0]
    assert scipy.stats.ttest_rel(a, b).statistic < 1e17  # the case exists
    assert stats.paired_ttest(a, b) == (math.inf, 0.0)
    assert stats.paired_ttest(b, a) == (-math.inf, 0.0)
    assert stats.paired_ttest(b, a, alternative="greater") == (-math.inf, 1.0)



EPS = float(np.finfo(float).eps)


@pytest.mark.parametrize("k", [np.arange(10, 60, 7), np.arange(0, 75), np.array([3, 30, 45, 60, 70])])
def test_paired_ttest_differences_equal_up_to_rounding_are_constant(k):
    # 5-way 15-query accuracies k / 75 where b always gets exactly one more query right: the differences
    # are all 1/75 mathematically, a few ulps apart as floats; scipy returns t ~ 1e15 (a rounding
    # artefact, sometimes with a precision-loss warning); the difference is constant: t = -inf, p = 0
    a, b = k / 75, (k + 1) / 75
    assert len(set(a - b)) > 1  # not bit-equal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert 1e13 < abs(scipy.stats.ttest_rel(a, b).statistic) < math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.paired_ttest(a, b) == (-math.inf, 0.0)
        assert stats.paired_ttest(a, b, alternative="less") == (-math.inf, 0.0)
        assert stats.paired_ttest(a, b, alternative="greater") == (-math.inf, 1.0)
        assert stats.paired_ttest(b, a, alternative="greater") == (math.inf, 0.0)


@pytest.mark.parametrize(
    ("a", "b", "constant"),
    [  # spread of d against 4 eps max(|a|, |b|) (= 4 eps here, eps = 2^-52): at the bound, past it
        ([1.0, 1.0 - 4 * EPS], [0.0, 0.0], True),
        ([1.0, 1.0 - 4.5 * EPS], [0.0, 0.0], False),
        ([0.0, 0.0], [-1.0, -1.0 + 4 * EPS], True),  # the scale from b
        ([0.0, 0.0], [-1.0, -1.0 + 4.5 * EPS], False),
        ([0.5, 0.5 - 4 * EPS], [-1.0, -1.0], True),  # the larger of |a|, |b|
        ([1.0, 1.0 - 4 * EPS], [-0.5, -0.5], True),
        ([-1.0, -1.0 + 4 * EPS], [0.5, 0.5], True),  # |a|, not a
        ([0.5, 0.5 - 2 * EPS], [0.0, 0.0], True),  # the bound scales with max(|a|, |b|) = 0.5: 2 eps
        ([0.5, 0.5 - 2.25 * EPS], [0.0, 0.0], False),
    ],
)
def test_paired_ttest_equal_up_to_rounding_boundary(a, b, constant):
    a, b = np.array(a), np.array(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss warning, past the bound
        r = stats.paired_ttest(a, b)
    if constant:
        assert r == (math.copysign(math.inf, (a - b).mean()), 0.0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = scipy.stats.ttest_rel(a, b)
        assert math.isfinite(r.statistic) and abs(r.statistic) > 1e13
        assert r == pytest.approx((float(ref.statistic), float(ref.pvalue)), rel=1e-12)
