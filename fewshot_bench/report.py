"""Read run folders, compare runs episode by episode, and render result tables.

A *run folder* is what ``fewshot-bench eval --out RUN`` writes (``summary.json`` and
``per_episode.csv``, format in ``ARCHITECTURE.md``). Everything here starts from
:func:`load_run` and from one tidy DataFrame (:func:`runs_frame`): one row per
run x dataset x split x ways x shots x queries x method.

* :func:`compare` -- paired comparisons of runs evaluated on identical episodes
  (mean difference with CI, paired t and Wilcoxon p-values, Holm-adjusted, verdicts);
  :func:`format_compare` renders it for a terminal, :func:`write_compare_json` saves it.
* :func:`make_table` -- the Table-1 layout of few-shot papers (rows: models, columns:
  dataset x 1-shot/5-shot, cells ``mean±ci`` in percent) as LaTeX (booktabs, via
  ``pandas.Styler.to_latex``), Markdown or CSV, with its protocol in the caption.

Statistics come from :mod:`fewshot_bench.stats`; the formulas are in
``docs/statistics.md`` and the usage in ``docs/reports.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from ._io import atomic_write_json
from .errors import ConfigError, DataError, EpisodeError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KEY",
    "Run",
    "compare",
    "dataset_display_name",
    "format_compare",
    "latex_escape",
    "load_run",
    "make_table",
    "paired_accuracies",
    "protocol_text",
    "runs_frame",
    "write_compare_json",
]

FORMAT = "fewshot-bench-run"
FORMAT_VERSION = 1
COMPARE_FORMAT = "fewshot-bench-compare"
#: The columns that identify one evaluation inside a run.
KEY = ("dataset", "split", "ways", "shots", "queries", "method")
_CSV_COLUMNS = (*KEY, "episode", "accuracy")
_TABLE_FORMATS = ("latex", "markdown", "csv")
_DISPLAY = {
    "cifarfs": "CIFAR-FS",
    "fc100": "FC100",
    "miniimagenet": "miniImageNet",
    "tieredimagenet": "tieredImageNet",
}
_DATASET_ORDER = ("CIFAR-FS", "FC100", "miniImageNet", "tieredImageNet")
#: Significance level of the table's "beats the baseline" marker.
TABLE_ALPHA = 0.05

Key = tuple  # (dataset, split, ways, shots, queries, method)


def dataset_display_name(name: str) -> str:
    """``cifar-fs`` -> ``CIFAR-FS``, ``fc100`` -> ``FC100``, ``mini-imagenet`` ->
    ``miniImageNet``, ``tiered-imagenet`` -> ``tieredImageNet``; other names unchanged."""
    return _DISPLAY.get(re.sub(r"[-_ .]", "", str(name).lower()), str(name))


def _key_text(key: Key) -> str:
    dataset, split, ways, shots, queries, method = key
    return f"{dataset} {split} {ways}-way {shots}-shot {queries}-query {method}"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True, eq=False)
class Run:
    """One run folder, loaded.

    ``summary`` is ``summary.json`` as a dict; ``results`` maps each evaluation key
    (:data:`KEY`: dataset, split, ways, shots, queries, method) to its entry of
    ``summary["results"]``; ``accuracies`` maps the same keys to the per-episode
    accuracies (fractions) ordered by episode index, and ``episodes`` to those indices.
    """

    path: Path
    summary: dict
    results: dict = field(repr=False)
    accuracies: dict = field(repr=False)
    episodes: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> dict:
        return self.summary.get("checkpoint") or {}

    @property
    def label(self) -> str:
        """A row label from the checkpoint metadata: ``"resnet12 (clce)"``; else the folder name."""
        ck = self.checkpoint
        meta = ck.get("meta") or {}
        arch = meta.get("arch") or meta.get("backbone") or ck.get("arch")
        loss = meta.get("loss")
        if not arch:
            return self.name
        return f"{arch} ({loss})" if loss else str(arch)

    @property
    def seed(self) -> Any:
        cfg = self.summary.get("config") or {}
        return cfg.get("seed")

    def keys(self) -> list[Key]:
        return list(self.results)


def _as_run(run: Run | str | os.PathLike) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder (``summary.json`` + ``per_episode.csv``) written by ``fewshot-bench eval``.

    ``path`` may also name the folder's ``summary.json``. Raises
    :class:`~fewshot_bench.errors.DataError` with a one-line message when the folder is
    missing, is not a run folder, was written by another format version, or its two
    files disagree.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == "summary.json":
        p = p.parent
    if not p.exists():
        raise DataError(f"{p}: no such run folder; pass the --out folder of `fewshot-bench eval`")
    if not p.is_dir():
        raise DataError(f"{p}: is a file, not a run folder; pass the --out folder of `fewshot-bench eval`")
    summary_path = p / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{p}: not a run folder (no summary.json); pass the --out folder of `fewshot-bench eval`")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{summary_path}: unreadable JSON ({exc}); re-run eval to rewrite the run folder") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise DataError(f"{summary_path}: not a fewshot-bench run summary (format is not {FORMAT!r})")
    version = summary.get("format_version", 0)
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise DataError(
                f"{p} was written by fewshot-bench format {version}, newer than this version reads "
                f"({FORMAT_VERSION}); upgrade fewshot-bench"
            )
        raise DataError(f"{p} was written by fewshot-bench format {version}; re-run eval with this version")
    raw_results = summary.get("results")
    if not isinstance(raw_results, list) or not raw_results:
        raise DataError(f"{summary_path}: no results; the run is empty or incomplete, re-run eval")
    results: dict[Key, dict] = {}
    for i, r in enumerate(raw_results):
        try:
            key = (str(r["dataset"]), str(r["split"]), int(r["ways"]), int(r["shots"]), int(r["queries"]),
                   str(r["method"]))
            for name in ("mean", "ci95", "std", "n_episodes"):
                r[name]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{summary_path}: results[{i}] lacks or mangles {exc}; re-run eval") from None
        if key in results:
            raise DataError(f"{summary_path}: results list {_key_text(key)} twice; re-run eval")
        results[key] = r
    accuracies, episodes = _read_per_episode(p / "per_episode.csv", results)
    return Run(path=p, summary=summary, results=results, accuracies=accuracies, episodes=episodes)


def _read_per_episode(csv_path: Path, results: dict[Key, dict]) -> tuple[dict, dict]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path.parent}: not a complete run folder (no per_episode.csv); re-run eval")
    try:
        df = pd.read_csv(csv_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc}); re-run eval") from None
    missing = [c for c in _CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; re-run eval with this version")
    try:
        for c in ("ways", "shots", "queries", "episode"):
            df[c] = df[c].astype(np.int64)
        df["accuracy"] = df["accuracy"].astype(np.float64)
        for c in ("dataset", "split", "method"):
            df[c] = df[c].astype(str)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{csv_path}: a value is not of the expected type ({exc}); re-run eval") from None
    accuracies: dict[Key, np.ndarray] = {}
    episodes: dict[Key, np.ndarray] = {}
    groups = {tuple(k): g for k, g in df.groupby(list(KEY), sort=False)}
    for key, r in results.items():
        g = groups.get(key)
        if g is None:
            raise DataError(f"{csv_path}: no rows for {_key_text(key)} listed in summary.json; re-run eval")
        g = g.sort_values("episode", kind="stable")
        if len(g) != int(r["n_episodes"]):
            raise DataError(
                f"{csv_path}: {len(g)} rows for {_key_text(key)} but summary.json says "
                f"{r['n_episodes']} episodes; the run folder is incomplete, re-run eval"
            )
        accuracies[key] = g["accuracy"].to_numpy(np.float64)
        episodes[key] = g["episode"].to_numpy(np.int64)
    return accuracies, episodes


# --------------------------------------------------------------------------- tidy frame


def _resolve_labels(runs: Sequence[Run], labels: Mapping[str, str] | None) -> list[str]:
    """One label per run: ``labels[path]`` when given, else :attr:`Run.label`, made unique."""
    labels = dict(labels or {})
    by_path = {}
    for key, text in labels.items():
        rp = Path(key).expanduser().resolve()
        hits = [i for i, r in enumerate(runs) if r.path.resolve() == rp]
        if not hits:
            raise ConfigError(f"--label {key}={text}: {key} is not one of the runs given")
        for i in hits:
            by_path[i] = str(text)
    out = [by_path.get(i, r.label) for i, r in enumerate(runs)]
    explicit = set(by_path)
    counts: dict[str, int] = {}
    for lab in out:
        counts[lab] = counts.get(lab, 0) + 1
    for i, lab in enumerate(out):
        if counts[lab] > 1:
            if i in explicit and all(j in explicit for j, other in enumerate(out) if other == lab):
                raise ConfigError(f"--label: two runs share the label {lab!r}; give each run its own label")
            if i not in explicit:
                out[i] = f"{lab} [{runs[i].name}]"
    if len(set(out)) != len(out):  # same folder names in different places
        out = [f"{lab} [{r.path}]" if out.count(lab) > 1 else lab for lab, r in zip(out, runs, strict=True)]
    return out


def _unique_runs(runs: Iterable[Run | str | os.PathLike]) -> list[Run]:
    out: list[Run] = []
    seen: set[Path] = set()
    for r in runs:
        run = _as_run(r)
        rp = run.path.resolve()
        if rp not in seen:
            seen.add(rp)
            out.append(run)
    return out


def runs_frame(runs: Iterable[Run | str | os.PathLike], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One tidy row per run x dataset x split x ways x shots x queries x method.

    Columns: ``run`` (folder path), ``label``, the :data:`KEY` columns, ``mean``,
    ``ci95`` (half-width), ``std`` (ddof=1), ``n`` (episodes), ``ci_method``,
    ``transductive``, ``episodes_sha256``, ``seed``; accuracies as fractions, as stored
    in ``summary.json``. ``labels`` maps run paths to row labels (default
    :attr:`Run.label`).
    """
    runs = _unique_runs(runs)
    if not runs:
        raise ConfigError("no runs given; pass at least one run folder")
    labs = _resolve_labels(runs, labels)
    rows = []
    for run, lab in zip(runs, labs, strict=True):
        for key, r in run.results.items():
            rows.append({
                "run": str(run.path),
                "label": lab,
                **dict(zip(KEY, key, strict=True)),
                "mean": float(r["mean"]),
                "ci95": _float(r["ci95"]),
                "std": _float(r["std"]),
                "n": int(r["n_episodes"]),
                "ci_method": str(r.get("ci_method", "t")),
                "transductive": bool(r.get("transductive", False)),
                "episodes_sha256": r.get("episodes_sha256"),
                "seed": run.seed,
            })
    return pd.DataFrame(rows)


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


# --------------------------------------------------------------------------- comparisons


def paired_accuracies(run_a: Run, run_b: Run, key_a: Key, key_b: Key | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-episode accuracies of ``run_a`` on ``key_a`` and ``run_b`` on ``key_b`` (default
    ``key_a``), after checking both were evaluated on identical episodes.

    Raises :class:`~fewshot_bench.errors.EpisodeError` when the ``episodes_sha256`` are
    missing or differ, or the episode indices differ.
    """
    key_b = key_a if key_b is None else key_b
    ha = run_a.results[key_a].get("episodes_sha256")
    hb = run_b.results[key_b].get("episodes_sha256")
    if not ha or not hb:
        which = run_a.path if not ha else run_b.path
        raise EpisodeError(
            f"{which}: no episodes_sha256 for {_key_text(key_a)}, so a paired comparison cannot check the "
            "episodes are the same; re-run eval with this version"
        )
    if ha != hb:
        raise EpisodeError(
            f"{run_a.path} and {run_b.path} were evaluated on different episodes for {_key_text(key_a)} "
            f"(episodes_sha256 {ha[:8]} vs {hb[:8]}); re-run eval on the same episode file to compare them"
        )
    ea, eb = run_a.episodes[key_a], run_b.episodes[key_b]
    if ea.shape != eb.shape or not np.array_equal(ea, eb):
        raise EpisodeError(
            f"{run_a.path} and {run_b.path} list different episode indices for {_key_text(key_a)} "
            f"({ea.size} vs {eb.size} episodes); re-run eval to compare them"
        )
    return run_a.accuracies[key_a], run_b.accuracies[key_b]


def _verdict(diff: float, p: float, alpha: float) -> str:
    if not (p <= alpha):  # also NaN
        return "n.s."
    return "better" if diff > 0 else "worse" if diff < 0 else "n.s."


def compare(
    runs: Sequence[Run | str | os.PathLike],
    baseline: Run | str | os.PathLike | None = None,
    alpha: Sequence[float] = (0.01, 0.05),
    level: float = 0.95,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Paired comparisons of runs evaluated on identical episodes.

    Without ``baseline`` every pair of runs is compared, ``a`` the earlier in ``runs``
    and ``b`` the later, ``diff = mean(a) - mean(b)``; with ``baseline`` every other
    run is ``a`` and the baseline ``b``. Each pair is
    compared on every dataset x split x ways x shots x queries x method both runs hold.

    Columns: ``a``, ``b`` (labels), ``run_a``, ``run_b`` (paths), the :data:`KEY`
    columns, ``n``, ``mean_a``, ``mean_b``, ``diff``, ``ci`` (half-width of the paired
    ``level`` t-interval of ``diff``), ``diff_low``, ``diff_high``, ``t``, ``p_t``
    (paired t-test, two-sided), ``w``, ``p_wilcoxon`` (signed-rank, zero_method
    "wilcox"), ``p_t_holm``, ``p_wilcoxon_holm`` (Holm-Bonferroni over all rows of the
    frame, each test separately), ``episodes_sha256``, and ``verdict_<alpha>`` for each
    ``alpha``: ``"better"``/``"worse"`` (for ``a`` against ``b``) where the Holm-adjusted
    t-test p-value is ``<= alpha``, else ``"n.s."``. Accuracies are fractions.

    Raises :class:`~fewshot_bench.errors.EpisodeError` when two runs were evaluated on
    different episodes (``episodes_sha256`` differ) for a shared key, and
    :class:`~fewshot_bench.errors.ConfigError` when fewer than two runs are given or a
    pair shares nothing to compare.
    """
    alphas = tuple(float(a) for a in alpha)
    for a in alphas:
        if not 0 < a < 1:
            raise ConfigError(f"alpha={a}: must lie strictly between 0 and 1, e.g. 0.05")
    all_runs = _unique_runs(runs)
    base_run = _as_run(baseline) if baseline is not None else None
    if base_run is not None and all(r.path.resolve() != base_run.path.resolve() for r in all_runs):
        all_runs.append(base_run)
    if len(all_runs) < 2:
        raise ConfigError(f"compare needs at least two different runs, got {len(all_runs)}")
    labs = dict(zip((r.path.resolve() for r in all_runs), _resolve_labels(all_runs, labels), strict=True))
    if base_run is not None:
        bp = base_run.path.resolve()
        base_run = next(r for r in all_runs if r.path.resolve() == bp)
        pairs = [(r, base_run) for r in all_runs if r is not base_run]
    else:
        pairs = list(itertools.combinations(all_runs, 2))

    rows = []
    for ra, rb in pairs:
        shared = [k for k in ra.results if k in rb.results]
        if not shared:
            raise ConfigError(
                f"{ra.path} and {rb.path} share no dataset x split x ways x shots x queries x method; "
                "nothing to compare"
            )
        for key in shared:
            xa, xb = paired_accuracies(ra, rb, key)
            diff, half = stats.mean_difference(xa, xb, level=level)
            if xa.size >= 2:
                tt = stats.paired_ttest(xa, xb)
            else:
                tt = stats.TestResult(math.nan, math.nan)
            ww = stats.wilcoxon(xa, xb)
            rows.append({
                "a": labs[ra.path.resolve()],
                "b": labs[rb.path.resolve()],
                "run_a": str(ra.path),
                "run_b": str(rb.path),
                **dict(zip(KEY, key, strict=True)),
                "n": int(xa.size),
                "mean_a": float(xa.mean()),
                "mean_b": float(xb.mean()),
                "diff": diff,
                "ci": half,
                "diff_low": diff - half,
                "diff_high": diff + half,
                "t": tt.statistic,
                "p_t": tt.pvalue,
                "w": ww.statistic,
                "p_wilcoxon": ww.pvalue,
                "episodes_sha256": ra.results[key].get("episodes_sha256"),
            })
    df = pd.DataFrame(rows)
    df["p_t_holm"] = stats.holm(df["p_t"].to_numpy())
    df["p_wilcoxon_holm"] = stats.holm(df["p_wilcoxon"].to_numpy())
    for a in alphas:
        df[f"verdict_{a:g}"] = [_verdict(d, p, a) for d, p in zip(df["diff"], df["p_t_holm"], strict=True)]
    df.attrs.update({"alpha": list(alphas), "level": level, "baseline": None if base_run is None else str(base_run.path),
                     "protocol": protocol_text(runs_frame(all_runs))})
    return df


def format_compare(df: pd.DataFrame) -> str:
    """The output of :func:`compare` as a fixed-width text table for a terminal.

    Differences and CIs in percentage points; p-values Holm-adjusted; one verdict
    column per alpha.
    """
    if df.empty:
        return "(no comparisons)"
    verdicts = [c for c in df.columns if c.startswith("verdict_")]
    out = pd.DataFrame({
        "a": df["a"],
        "b": df["b"],
        "dataset": [dataset_display_name(d) for d in df["dataset"]],
        "split": df["split"],
        "ways": df["ways"].astype(str) + "-way",
        "shots": df["shots"].astype(str) + "-shot",
        "method": df["method"],
        "n": df["n"],
        "a %": [f"{100 * x:.2f}" for x in df["mean_a"]],
        "b %": [f"{100 * x:.2f}" for x in df["mean_b"]],
        "a-b (pp)": [f"{100 * d:+.2f}±{100 * c:.2f}" for d, c in zip(df["diff"], df["ci"], strict=True)],
        "p_t holm": [_fmt_p(p) for p in df["p_t_holm"]],
        "p_wilcoxon holm": [_fmt_p(p) for p in df["p_wilcoxon_holm"]],
        **{f"α={c.removeprefix('verdict_')}": df[c] for c in verdicts},
    })
    for col in ("split", "ways"):
        if out[col].nunique() == 1:
            out = out.drop(columns=col)
    level = df.attrs.get("level", 0.95)
    note = (
        f"a-b: mean paired difference ± half-width of its {100 * level:g}% t-interval, in percentage points; "
        "p-values Holm-adjusted over all rows; verdict from the adjusted paired t-test."
    )
    protocol = df.attrs.get("protocol")
    return out.to_string(index=False) + "\n" + note + (f"\nprotocol: {protocol}" if protocol else "")


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def write_compare_json(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the output of :func:`compare` to ``path`` (``compare.json``), atomically.

    ``{"format": "fewshot-bench-compare", "format_version": 1, "alpha": [...],
    "level": 0.95, "baseline": path|null, "holm": "...", "comparisons": [row, ...]}``
    with one object per row, NaN written as ``null``.
    """
    records = []
    for rec in df.to_dict(orient="records"):
        records.append({str(k): _json_value(v) for k, v in rec.items()})
    atomic_write_json(path, {
        "format": COMPARE_FORMAT,
        "format_version": 1,
        "alpha": list(df.attrs.get("alpha", [])),
        "level": df.attrs.get("level"),
        "baseline": df.attrs.get("baseline"),
        "protocol": df.attrs.get("protocol"),
        "tests": "paired t-test (scipy.stats.ttest_rel) and Wilcoxon signed-rank (zero_method='wilcox'), two-sided",
        "holm": "Holm-Bonferroni over all comparisons in this file, t and Wilcoxon separately",
        "comparisons": records,
    })


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return None if math.isnan(v) else (str(v) if math.isinf(v) else v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


# --------------------------------------------------------------------------- tables

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _column_names(tidy: pd.DataFrame) -> pd.DataFrame:
    """Add the display columns ``col_dataset`` and ``col_shots`` to the tidy frame."""
    tidy = tidy.copy()
    multi_split = tidy.groupby("dataset")["split"].nunique().max() > 1
    multi_ways = tidy["ways"].nunique() > 1
    multi_queries = tidy["queries"].nunique() > 1
    tidy["col_dataset"] = [
        dataset_display_name(d) + (f" ({s})" if multi_split else "")
        for d, s in zip(tidy["dataset"], tidy["split"], strict=True)
    ]
    tidy["col_shots"] = [
        (f"{w}-way " if multi_ways else "") + f"{k}-shot" + (f" {q}q" if multi_queries else "")
        for w, k, q in zip(tidy["ways"], tidy["shots"], tidy["queries"], strict=True)
    ]
    return tidy


def _row_labels(tidy: pd.DataFrame) -> pd.Series:
    if tidy["method"].nunique() > 1:
        return tidy["label"] + ", " + tidy["method"]
    return tidy["label"]


def _dataset_rank(name: str) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (_DATASET_ORDER.index(base), name) if base in _DATASET_ORDER else (len(_DATASET_ORDER), name)


def _beats_baseline(tidy: pd.DataFrame, runs: dict[str, Run], baseline: Run) -> list[bool]:
    """Per tidy row: mean diff > 0 and two-sided paired t-test p < TABLE_ALPHA against the baseline."""
    out = []
    bpath = str(baseline.path)
    for _, row in tidy.iterrows():
        if row["run"] == bpath:
            out.append(False)
            continue
        key = tuple(row[c] for c in KEY)
        key = (str(key[0]), str(key[1]), int(key[2]), int(key[3]), int(key[4]), str(key[5]))
        bkey = key if key in baseline.results else None
        if bkey is None:  # the baseline evaluated one other method on this column: compare with it
            cands = [k for k in baseline.results if k[:5] == key[:5]]
            bkey = cands[0] if len(cands) == 1 else None
        if bkey is None:
            out.append(False)
            continue
        xa, xb = paired_accuracies(runs[row["run"]], baseline, key, bkey)
        diff = float(np.mean(xa - xb))
        p = stats.paired_ttest(xa, xb).pvalue if xa.size >= 2 else math.nan
        out.append(bool(diff > 0 and p < TABLE_ALPHA))
    return out


def protocol_text(tidy: pd.DataFrame) -> str:
    """One plain-text sentence stating the evaluation protocol of a tidy frame's rows."""

    def values(col: str) -> str:
        vals = sorted({v for v in tidy[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}, key=str)
        return "/".join(str(v) for v in vals) if vals else "unknown"

    ci = tidy["ci_method"].iloc[0] if tidy["ci_method"].nunique() == 1 else "mixed"
    ci_text = {"t": "Student-t interval", "normal": "normal interval"}.get(ci, f"{ci} interval")
    methods = tidy.drop_duplicates("method")
    kinds = ", ".join(
        f"{m} {'transductive' if t else 'inductive'}" for m, t in zip(methods["method"], methods["transductive"], strict=True)
    )
    hashes = []
    for (d, s, k), g in tidy.groupby(["dataset", "split", "shots"], sort=True):
        hs = sorted({h[:8] for h in g["episodes_sha256"] if h})
        hashes.append(f"{dataset_display_name(d)} {s} {k}-shot {'/'.join(hs) if hs else 'unknown'}")
    return (
        f"Mean accuracy (%) with 95% confidence interval ({ci_text}, s with ddof=1) over "
        f"{values('n')} {values('split')} episodes, {values('ways')}-way {values('shots')}-shot, "
        f"{values('queries')} queries per class; {kinds}; episode seed {values('seed')}; "
        f"episode sets (sha256) {'; '.join(hashes)}."
    )


def make_table(
    runs: Sequence[Run | str | os.PathLike],
    fmt: str = "latex",
    baseline: Run | str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
    caption: str | None = None,
    label: str | None = "tab:fewshot",
) -> str:
    """Render runs as the Table-1 layout of few-shot papers; returns the text.

    Rows: one per run (x method when the runs hold several methods), labelled from the
    checkpoint metadata (:attr:`Run.label`, ``"arch (loss)"``) or ``labels``
    (``{run_path: text}``). Columns: dataset (display name) x ``"1-shot"``/``"5-shot"``
    (also split, ways or queries when they vary). Cells: ``mean±ci95`` in percent with
    two decimals (``$\\pm$`` in LaTeX), the best mean of each column in bold (ties at
    two decimals all bold). With ``baseline`` (a run, added to the rows when not among
    ``runs``), a dagger marks a cell whose mean is above the baseline's with a two-sided
    paired t-test p < 0.05 on identical episodes (refused with
    :class:`~fewshot_bench.errors.EpisodeError` when the episode sets differ).

    ``fmt``: ``"latex"`` (``table`` float with booktabs rules via
    ``Styler.to_latex(hrules=True)``; needs ``\\usepackage{booktabs}``), ``"markdown"``
    (pipe table followed by the caption) or ``"csv"`` (two header rows, plain cells,
    no bold, dagger kept). The caption (``caption`` first, then the protocol from
    :func:`protocol_text` and the legend) goes into every format.
    """
    if fmt not in _TABLE_FORMATS:
        raise ConfigError(f"--format {fmt}: unknown table format; use one of: {', '.join(_TABLE_FORMATS)}")
    run_list = _unique_runs(runs)
    base_run = _as_run(baseline) if baseline is not None else None
    if base_run is not None:
        bp = base_run.path.resolve()
        match = [r for r in run_list if r.path.resolve() == bp]
        if match:
            base_run = match[0]
        else:
            run_list.append(base_run)
    tidy = _column_names(runs_frame(run_list, labels))
    tidy["row"] = _row_labels(tidy)
    by_path = {str(r.path): r for r in run_list}
    tidy["dagger"] = _beats_baseline(tidy, by_path, base_run) if base_run is not None else False

    dup = tidy.duplicated(["row", "col_dataset", "col_shots"], keep=False)
    if dup.any():
        r = tidy[dup].iloc[0]
        raise ConfigError(f"two results fall in one table cell ({r['row']}, {r['col_dataset']} {r['col_shots']}); "
                          "give the runs distinct --label values")

    tidy["mean_pct"] = (100 * tidy["mean"]).round(2)
    best = tidy.groupby(["col_dataset", "col_shots"])["mean_pct"].transform("max")
    tidy["best"] = tidy["mean_pct"] == best

    latex = fmt == "latex"
    pm = r"$\pm$" if latex else "±"
    dagger = r"$^\dagger$" if latex else "†"

    def cell(r: pd.Series) -> str:
        ci = "nan" if math.isnan(r["ci95"]) else f"{100 * r['ci95']:.2f}"
        text = f"{r['mean_pct']:.2f}{pm}{ci}"
        if r["best"] and fmt != "csv":
            text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
        return text + (dagger if r["dagger"] else "")

    tidy["cell"] = tidy.apply(cell, axis=1)
    rows = list(dict.fromkeys(tidy["row"]))
    datasets = sorted(dict.fromkeys(tidy["col_dataset"]), key=_dataset_rank)
    col_order = []
    for d in datasets:
        sub = tidy[tidy["col_dataset"] == d].sort_values(["ways", "shots", "queries"])
        col_order += [(d, s) for s in dict.fromkeys(sub["col_shots"])]
    wide = tidy.pivot(index="row", columns=["col_dataset", "col_shots"], values="cell")
    wide = wide.reindex(index=rows, columns=pd.MultiIndex.from_tuples(col_order)).fillna("--" if latex else "")

    legend = "" if fmt == "csv" else "Best mean per column in bold."
    if base_run is not None:
        brow = tidy.loc[tidy["run"] == str(base_run.path), "label"]
        bname = str(brow.iloc[0]) if len(brow) else base_run.name
        legend += (
            f" {dagger}: mean above the baseline ({latex_escape(bname) if latex else bname}) by a two-sided "
            f"paired t-test on the same episodes, p < {TABLE_ALPHA:g} (not adjusted for multiple comparisons)."
        )
    protocol = protocol_text(tidy)
    if latex:
        full_caption = " ".join(p.strip() for p in (caption, latex_escape(protocol), legend) if p)
        return _to_latex(wide, full_caption, label)
    full_caption = " ".join(p.strip() for p in (caption, protocol, legend) if p)
    if fmt == "markdown":
        return _to_markdown(wide) + "\n\n" + full_caption + "\n"
    flat = wide.copy()
    flat.columns = flat.columns.set_names(["dataset", "model"])
    return flat.to_csv(lineterminator="\n") + "# " + full_caption + "\n"


def _to_latex(wide: pd.DataFrame, caption: str, label: str | None) -> str:
    table = wide.copy()
    table.index = [latex_escape(i) for i in table.index]
    table.columns = pd.MultiIndex.from_tuples(
        [(latex_escape(d), latex_escape(s)) for d, s in table.columns], names=["", "Model"]
    )
    return table.style.to_latex(
        hrules=True,
        multicol_align="c",
        column_format="l" + "c" * table.shape[1],
        caption=caption,
        label=label,
        position_float="centering",
        position="t",
    )


def _to_markdown(wide: pd.DataFrame) -> str:
    header = ["Model"] + [f"{d} {s}" for d, s in wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + [":---:"] * wide.shape[1]) + "|"]
    for idx, row in wide.iterrows():
        cells = [str(idx).replace("|", r"\|")] + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
