"""Statistics on per-episode accuracies: confidence intervals, paired tests, Holm.

Everything here works on plain 1-D arrays of per-episode accuracies (fractions in
``[0, 1]``, though nothing depends on that). The formulas are written out in
``docs/statistics.md``; in short:

* :func:`mean_ci` -- mean, sample standard deviation ``s`` (``ddof=1``) and the
  half-width of a two-sided confidence interval, ``t_{(1+level)/2, n-1} * s / sqrt(n)``
  (``method="t"``, the default) or ``z_{(1+level)/2} * s / sqrt(n)`` (``"normal"``;
  1.96 at 95 %).
* :func:`paired_ttest`, :func:`wilcoxon`, :func:`mean_difference` -- two runs scored on
  the *same* episodes, paired episode by episode (``scipy.stats.ttest_rel`` and
  ``scipy.stats.wilcoxon``). Checking that the episodes really are the same is the
  caller's job (:mod:`fewshot_bench.report` compares the episode-set hashes); here only
  the lengths are checked.
* :func:`holm` -- Holm--Bonferroni adjusted p-values for a family of comparisons.

Invalid input (empty arrays, NaN, mismatched lengths, a level outside ``(0, 1)``)
raises :class:`~fewshot_bench.errors.ConfigError` with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.stats

from .errors import ConfigError

__all__ = [
    "CI",
    "CI_METHODS",
    "TestResult",
    "holm",
    "mean_ci",
    "mean_difference",
    "paired_ttest",
    "wilcoxon",
]

CI_METHODS = ("t", "normal")
_ALTERNATIVES = ("two-sided", "greater", "less")
_ZERO_METHODS = ("wilcox", "pratt", "zsplit")


class CI(NamedTuple):
    """Mean with a two-sided confidence interval, as returned by :func:`mean_ci`.

    ``std`` is the sample standard deviation (``ddof=1``); ``ci`` is the half-width,
    so the interval is ``[mean - ci, mean + ci]`` (also available as :attr:`low` and
    :attr:`high`). ``level`` is the coverage (0.95) and ``method`` ``"t"`` or
    ``"normal"``.
    """

    mean: float
    std: float
    ci: float
    n: int
    level: float
    method: str

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci


class TestResult(NamedTuple):
    """Outcome of a paired test: the test statistic and its p-value."""

    statistic: float
    pvalue: float


TestResult.__test__ = False  # not a pytest test class, despite the name


def _as_1d(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"{name}: expected a 1-D array of per-episode accuracies, got shape {arr.shape}")
    if arr.size == 0:
        raise ConfigError(f"{name}: no values (0 episodes); evaluate at least one episode")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ConfigError(
            f"{name}: {int(bad.sum())} of {arr.size} values are NaN or infinite "
            f"(first at index {int(np.flatnonzero(bad)[0])}); check the per-episode accuracies"
        )
    return arr


def _check_level(level: float) -> float:
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"level={level!r}: expected a number in (0, 1), e.g. 0.95") from None
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level={level}: must lie strictly between 0 and 1, e.g. 0.95")
    return level


def _check_method(method: str) -> str:
    if method not in CI_METHODS:
        raise ConfigError(f"CI method {method!r} is unknown; use one of: {', '.join(CI_METHODS)}")
    return method


def _check_alternative(alternative: str) -> str:
    if alternative not in _ALTERNATIVES:
        raise ConfigError(f"alternative={alternative!r}: use one of: {', '.join(_ALTERNATIVES)}")
    return alternative


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.size != b.size:
        raise ConfigError(
            f"paired arrays differ in length ({a.size} vs {b.size} episodes); "
            "a paired comparison needs both runs on the same episodes"
        )
    return a, b


def _quantile(level: float, method: str, n: int) -> float:
    q = (1.0 + level) / 2.0
    if method == "t":
        return float(scipy.stats.t.ppf(q, n - 1))
    return float(scipy.stats.norm.ppf(q))


def mean_ci(acc: Sequence[float] | np.ndarray, level: float = 0.95, method: str = "t") -> CI:
    """Mean of ``acc`` with the half-width of its two-sided ``level`` confidence interval.

    * ``method="t"`` (default): ``ci = t.ppf((1 + level) / 2, n - 1) * s / sqrt(n)``,
      the Student-t interval (equals ``scipy.stats.t.interval``).
    * ``method="normal"``: ``ci = norm.ppf((1 + level) / 2) * s / sqrt(n)``
      (``1.959964 * s / sqrt(n)`` at 95 %), the convention of most few-shot papers.
      With 3,000 episodes the two differ in the fourth significant digit.

    ``s`` is the **sample** standard deviation, ``ddof=1``; it is returned as ``std``.

    With a single value (``n = 1``) the spread cannot be estimated: ``std`` and ``ci``
    are ``nan`` (the mean is still the value). An empty array, NaN or infinite
    values, a level outside ``(0, 1)`` or an unknown method raise
    :class:`~fewshot_bench.errors.ConfigError`.
    """
    level = _check_level(level)
    method = _check_method(method)
    x = _as_1d(acc, "accuracies")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        return CI(mean, math.nan, math.nan, 1, level, method)
    std = float(x.std(ddof=1))
    half = _quantile(level, method, n) * std / math.sqrt(n)
    return CI(mean, std, float(half), n, level, method)


def paired_ttest(a, b, alternative: str = "two-sided") -> TestResult:
    """Paired t-test of ``a`` against ``b`` (per-episode accuracies on identical episodes).

    The same as ``scipy.stats.ttest_rel(a, b, alternative=alternative)``: the
    statistic is ``mean(d) / (s_d / sqrt(n))`` with ``d = a - b`` and ``s_d`` the
    ``ddof=1`` standard deviation, compared with a t distribution on ``n - 1`` degrees
    of freedom. ``alternative="greater"`` tests ``mean(a) > mean(b)``.

    Degenerate cases, where scipy would return NaN or a rounding artefact: if every
    difference is zero the runs are indistinguishable and the result is
    ``statistic=0.0, pvalue=1.0``; if the differences are all equal and non-zero
    (``s_d = 0``), the statistic is ``±inf`` and the p-value 0.0 in the direction of the
    difference (1.0 against it). "Equal" is up to the rounding of ``a - b``
    (:func:`_equal_differences`): accuracies ``k / (N*Q)`` that always differ by the same
    count of queries give differences a few ulps apart, on which scipy returns a finite
    ``t`` of ~1e15 (sometimes warning of catastrophic cancellation). Fewer than two episodes raise
    :class:`~fewshot_bench.errors.ConfigError`.
    """
    alternative = _check_alternative(alternative)
    a, b = _paired(a, b)
    if a.size < 2:
        raise ConfigError(f"a paired t-test needs at least 2 episodes, got {a.size}")
    d = a - b
    if np.all(d == 0):
        return TestResult(0.0, 1.0)
    if _equal_differences(a, b, d):
        stat = math.copysign(math.inf, d.mean())
        wins = {"two-sided": True, "greater": stat > 0, "less": stat < 0}[alternative]
        return TestResult(stat, 0.0 if wins else 1.0)
    res = scipy.stats.ttest_rel(a, b, alternative=alternative)
    return TestResult(float(res.statistic), float(res.pvalue))


def _equal_differences(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> bool:
    """Whether the differences ``d = a - b`` are one value up to their rounding (``s_d`` is then noise).

    If ``a_i``, ``b_i`` are themselves rounded (e.g. ``k / 75``), each computed ``d_i`` is within
    ``eps/2 (|a_i| + |b_i| + |d_i|) <= 2 eps max(|a|, |b|)`` of the exact difference, so two of them
    can be ``4 eps max(|a|, |b|)`` apart: ``max(d) - min(d) <= 4 eps max(|a|, |b|)``. Exactly equal
    differences pass; accuracies (steps of ``1 / (N*Q)``) that truly differ are ~10^13 times further apart.
    """
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    return bool(np.ptp(d) <= 4 * np.finfo(d.dtype).eps * scale)


def wilcoxon(a, b, alternative: str = "two-sided", zero_method: str = "wilcox") -> TestResult:
    """Wilcoxon signed-rank test of ``a`` against ``b`` on identical episodes.

    The same as ``scipy.stats.wilcoxon(a, b, zero_method=zero_method,
    alternative=alternative)`` with scipy's default ``method="auto"`` (exact
    distribution for small samples without ties, normal approximation otherwise).
    ``zero_method="wilcox"`` (default) drops episodes where both runs score the same
    -- frequent with few-shot accuracies, which take only ``ways * queries + 1``
    values; ``"pratt"`` ranks them and then drops them, ``"zsplit"`` splits them
    between the signs.

    If every difference is zero there is nothing to rank: the result is
    ``statistic=0.0, pvalue=1.0`` (scipy would fail or return NaN).
    """
    alternative = _check_alternative(alternative)
    if zero_method not in _ZERO_METHODS:
        raise ConfigError(f"zero_method={zero_method!r}: use one of: {', '.join(_ZERO_METHODS)}")
    a, b = _paired(a, b)
    d = a - b
    if np.all(d == 0):
        return TestResult(0.0, 1.0)
    res = scipy.stats.wilcoxon(a, b, zero_method=zero_method, alternative=alternative)
    return TestResult(float(res.statistic), float(res.pvalue))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm--Bonferroni adjusted p-values, in the order given.

    Sort the ``m`` p-values ascending, ``p_(1) <= ... <= p_(m)``; the adjusted value of
    the ``i``-th is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the
    raw p-values and capped at 1. Rejecting where the adjusted value is ``<= alpha``
    controls the family-wise error rate at ``alpha``.

    NaN entries (comparisons that could not be tested) are left NaN and do not count
    towards ``m``. An empty input gives an empty array. Values outside ``[0, 1]``
    raise :class:`~fewshot_bench.errors.ConfigError`.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ConfigError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)][:3].tolist()}")
    idx = np.flatnonzero(ok)
    m = idx.size
    if m == 0:
        return out
    # any sort will do: tied p-values end with equal adjusted values (the running maximum carries the
    # first one's larger multiplier over the rest of the tie), whichever order the tie is in
    order = np.argsort(p[idx])
    scaled = (m - np.arange(m)) * p[idx][order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out[idx[order]] = adjusted
    return out


def mean_difference(a, b, level: float = 0.95, method: str = "t") -> tuple[float, float]:
    """Mean paired difference ``mean(a - b)`` and the half-width of its confidence interval.

    The paired interval: :func:`mean_ci` applied to the per-episode differences
    ``d = a - b``, i.e. ``t_{(1+level)/2, n-1} * s_d / sqrt(n)`` with ``s_d`` at
    ``ddof=1`` (or the normal quantile with ``method="normal"``). It is far narrower
    than the two runs' separate intervals when the runs are correlated across
    episodes, which they are. With one episode the half-width is ``nan``.
    """
    a, b = _paired(a, b)
    r = mean_ci(a - b, level=level, method=method)
    return r.mean, r.ci
