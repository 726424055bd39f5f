"""Figures from run folders: accuracy with CIs, paired differences against a baseline, and
per-episode difference histograms.

matplotlib with the non-interactive Agg backend; every figure is written as PNG and
PDF (atomically) and the functions return the written paths. Accuracies are shown in
percent, differences in percentage points; every error bar is a 95 % confidence interval
(never a standard deviation). :func:`plot_runs` is the ``plot`` command: all figures plus
``plots.json`` (the numbers drawn and the pairs skipped). See ``docs/reports.md``.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, ever
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ._io import atomic_write_bytes, atomic_write_json
from .errors import ConfigError
from .report import (
    KEY,
    Run,
    _as_run,
    _dataset_rank,
    _json_value,
    _resolve_labels,
    _unique_runs,
    compare,
    dataset_display_name,
    paired_accuracies,
    pct,
    protocol_text,
    runs_frame,
)

__all__ = ["PALETTE", "plot_accuracy", "plot_differences", "plot_paired_differences", "plot_runs", "save_figure",
           "series_style"]

FORMATS = ("png", "pdf")
PLOTS_FORMAT = "fewshot-bench-plots"
#: Series colours: matplotlib's ``tab20``, its 10 dark shades first, then the 10 light ones, so
#: that the first 10 series are as far apart as ``tab10`` and the next 10 still differ.
PALETTE = tuple(matplotlib.colormaps["tab20"](i) for i in (*range(0, 20, 2), *range(1, 20, 2)))
#: Series markers: series 1-20 are circles, 21-40 squares, ... (with :data:`PALETTE`, no two of
#: the first 160 series look alike).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def series_style(j: int) -> tuple[tuple[float, float, float, float], str]:
    """``(colour, marker)`` of the ``j``-th series (from 0): :data:`PALETTE` x :data:`MARKERS`."""
    return PALETTE[j % len(PALETTE)], MARKERS[(j // len(PALETTE)) % len(MARKERS)]


def save_figure(fig: matplotlib.figure.Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` (150 dpi) and ``.pdf``, atomically; close it."""
    out_dir = Path(out_dir)
    paths = []
    try:
        for ext in FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight", metadata=_metadata(ext))
            path = out_dir / f"{stem}.{ext}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _footnote(fig: matplotlib.figure.Figure, text: str) -> None:
    """State the protocol under the figure (every report carries it)."""
    fig.text(0.0, 0.0, textwrap.fill(text, 160), fontsize=6, ha="left", va="top")


def _metadata(ext: str) -> dict:
    # No creation dates: the same runs give the same PDF bytes.
    return {"CreationDate": None} if ext == "pdf" else {"Software": None}


def _bins(d: np.ndarray, default: int) -> np.ndarray | int:
    """Bin edges on the lattice of the differences (accuracies take ways*queries+1 values),
    so discrete data does not alias into spiky histograms; ``default`` bins otherwise."""
    u = np.unique(np.round(d, 9))
    if u.size == 0:
        return default
    if u.size == 1:  # every episode differs by the same amount (e.g. identical predictions): one bar
        return np.array([u[0] - 0.5, u[0] + 0.5])
    step = float(np.min(np.diff(u)))
    if step <= 0 or (u[-1] - u[0]) / step > 400:
        return default
    return np.arange(u[0] - step / 2, u[-1] + step, step)


def _panels(tidy: pd.DataFrame) -> list[str]:
    """Panel names: dataset, plus split, ways and queries where they vary (so no two results of
    one series fall on one x position)."""
    vary = {c: tidy[c].nunique() > 1 for c in ("split", "ways", "queries")}
    return [dataset_display_name(d) + (f" ({s})" if vary["split"] else "") + (f", {w}-way" if vary["ways"] else "")
            + (f", {q}q" if vary["queries"] else "")
            for d, s, w, q in zip(tidy["dataset"], tidy["split"], tidy["ways"], tidy["queries"], strict=True)]


def _errorbar_panels(tidy: pd.DataFrame, y: str, half: str, ylabel: str, zero: bool = False,
                     order: Sequence[str] | None = None) -> matplotlib.figure.Figure:
    """One panel per ``tidy["panel"]``, shots on x, one series per ``tidy["series"]`` (offset
    along x), ``100 * tidy[y]`` with error bars ``100 * tidy[half]``. The style of a series is
    :func:`series_style` of its position in ``order`` (so that a run keeps its colour across
    figures), else after them."""
    ordered = tidy.assign(_rank=[_dataset_rank(dataset_display_name(d)) for d in tidy["dataset"]])
    panels = list(dict.fromkeys(ordered.sort_values(["_rank", "split", "ways", "queries"], kind="stable")["panel"]))
    series = list(dict.fromkeys(tidy["series"]))
    style_index = {name: i for i, name in enumerate(dict.fromkeys([*(order or []), *series]))}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 3.4), squeeze=False)
    width = 0.6 / max(len(series), 1)
    for ax, panel in zip(axes[0], panels, strict=True):
        sub = tidy[tidy["panel"] == panel]
        shots = sorted(sub["shots"].unique())
        pos = {k: i for i, k in enumerate(shots)}
        for j, name in enumerate(series):
            s = sub[sub["series"] == name].sort_values("shots")
            if s.empty:
                continue
            colour, marker = series_style(style_index[name])
            x = np.array([pos[k] for k in s["shots"]]) + (j - (len(series) - 1) / 2) * width
            ax.errorbar(x, 100 * s[y].to_numpy(float), yerr=100 * s[half].fillna(0).to_numpy(float), fmt=marker,
                        capsize=3, color=colour, label=name)
        if zero:
            ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(shots)), [f"{k}-shot" for k in shots])
        ax.set_xlim(-0.6, len(shots) - 0.4)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    labs = [name for name in series if name in handles]  # in series order
    fig.legend([handles[lab] for lab in labs], labs, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _accuracy_frame(runs: Sequence[Run | str | os.PathLike], labels: Mapping[str, str] | None) -> pd.DataFrame:
    tidy = runs_frame(runs, labels)
    several = tidy["method"].nunique() > 1
    return tidy.assign(series=tidy["label"] + (", " + tidy["method"] if several else ""), panel=_panels(tidy))


def plot_accuracy(
    runs: Sequence[Run | str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Mapping[str, str] | None = None,
    stem: str = "accuracy",
) -> list[Path]:
    """Mean accuracy with its 95 % CI error bars (``ci95`` of ``summary.json``), one panel per
    dataset (x split, ways, queries where they vary), shots on the x axis.

    Each run (x method when several) is one series (:func:`series_style`), offset slightly
    along x so the bars do not overlap. Returns ``[out_dir/accuracy.png, out_dir/accuracy.pdf]``.
    """
    tidy = _accuracy_frame(runs, labels)
    fig = _errorbar_panels(tidy, "mean", "ci95", "accuracy (%) ± 95% CI")
    _footnote(fig, protocol_text(tidy))
    return save_figure(fig, out_dir, stem)


def plot_differences(df: pd.DataFrame, out_dir: str | os.PathLike, stem: str = "differences",
                     order: Sequence[str] | None = None) -> list[Path]:
    """Mean paired difference ``a - b`` ± the half-width of its CI (``diff`` and ``ci`` of
    :func:`fewshot_bench.report.compare`, percentage points), one series per row ``a`` (x
    method when several; x seed pair when a row pair has several), one panel per dataset (x
    split, ways, queries where they vary), shots on x, zero marked. ``b`` is the baseline
    row when ``compare`` had one. ``order``: series names whose colours to keep (e.g. those of
    :func:`plot_accuracy`). Returns ``[out_dir/<stem>.png, .pdf]``.
    """
    if df.empty:
        raise ConfigError("nothing to plot: no comparison was made on identical episodes")
    several_b = df["b"].nunique() > 1
    several_m = df["method"].nunique() > 1
    several_s = df.groupby(["a", "b", *KEY]).size().max() > 1
    series = [a + (f" − {b}" if several_b else "") + (f", {m}" if several_m else "")
              + (f", seed {sa}" if several_s else "")
              for a, b, m, sa in zip(df["a"], df["b"], df["method"], df["seed_a"], strict=True)]
    tidy = df.assign(series=series, panel=_panels(df))
    b = "" if several_b else f" {df['b'].iloc[0]}"
    fig = _errorbar_panels(tidy, "diff", "ci", f"a − b{b} (pp) ± {100 * df.attrs.get('level', 0.95):g}% CI",
                           zero=True, order=order)
    if df.attrs.get("protocol"):
        _footnote(fig, df.attrs["protocol"])
    return save_figure(fig, out_dir, stem)


def plot_paired_differences(
    run_a: Run | str | os.PathLike,
    run_b: Run | str | os.PathLike,
    out_dir: str | os.PathLike,
    stem: str | None = None,
    bins: int = 41,
    keys: Sequence[tuple] | None = None,
) -> list[Path]:
    """Histograms of per-episode accuracy differences ``a - b`` (percentage points).

    One panel per dataset x split x ways x shots x queries x method both runs hold (or
    per entry of ``keys``), with the mean difference and zero marked. Bins follow the
    lattice of the differences (one bin per possible value) unless that needs more than
    400 bins; then ``bins``. The runs must share the episodes
    (:class:`~fewshot_bench.errors.EpisodeError` otherwise).
    Returns ``[out_dir/<stem>.png, .pdf]``, the stem defaulting to
    ``paired_differences_<a folder>_vs_<b folder>`` so that several pairs can share one
    ``out_dir``.
    """
    ra, rb = _as_run(run_a), _as_run(run_b)
    if stem is None:
        stem = f"paired_differences_{ra.name}_vs_{rb.name}"
    shared = [tuple(k) for k in keys] if keys is not None else [k for k in ra.results if k in rb.results]
    if not shared:
        raise ConfigError(f"{ra.path} and {rb.path} share no dataset x shots x method; nothing to plot")
    shared.sort(key=lambda k: (_dataset_rank(dataset_display_name(k[0])), k))
    n = len(shared)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, shared, strict=False):
        xa, xb = paired_accuracies(ra, rb, key)
        d = 100 * (xa - xb)
        ax.hist(d, bins=_bins(d, bins), color=PALETTE[0], alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(d.mean(), color=PALETTE[3], lw=1.5, label=f"mean {pct(float(np.mean(xa - xb)), signed=True)}")
        k = dict(zip(KEY, key, strict=True))
        ax.set_title(f"{dataset_display_name(k['dataset'])} {k['ways']}-way {k['shots']}-shot {k['method']}",
                     fontsize=9)
        ax.set_xlabel("a - b (pp)")
        ax.legend(fontsize=8, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"a = {ra.name}, b = {rb.name}: per-episode accuracy differences", fontsize=10)
    fig.tight_layout()
    _footnote(fig, protocol_text(runs_frame([ra, rb])))
    return save_figure(fig, out_dir, stem)


def plot_runs(
    runs: Sequence[Run | str | os.PathLike],
    out_dir: str | os.PathLike,
    baseline: Run | str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every figure of a set of runs (the ``plot`` command); returns what it wrote to
    ``out_dir/plots.json``.

    * ``accuracy.{png,pdf}`` (:func:`plot_accuracy`), one series per run;
    * with two runs or more, every run against ``baseline`` (default: the first run), run by
      run (``labels`` maps run paths to series names; each run is its own series, seeds are
      not merged): :func:`fewshot_bench.report.compare` pairs only identical episodes and skips
      the rest; ``differences.{png,pdf}`` (:func:`plot_differences`) and, per run, the
      histograms ``paired_differences_<run>_vs_<baseline>.{png,pdf}``
      (:func:`plot_paired_differences`) of the cells it could pair.

    ``plots.json``: ``{"format": "fewshot-bench-plots", "format_version": 1, "baseline": path,
    "files": [...], "accuracy": [{"series", "panel", "run", dataset, split, ways, shots, queries,
    method, "mean", "ci95", "n"}], "differences": [rows of compare(): a, b, run_a, run_b, ...,
    diff, ci, p_t_holm, ...], "skipped": [{"a", "b", "run_a", "run_b", KEY..., "reason",
    "message"}]}`` -- fractions, not percent; the error bars drawn are ``ci95`` and ``ci``.
    """
    run_list = _unique_runs(runs)
    if not run_list:
        raise ConfigError("no runs given; pass at least one run folder")
    base = _as_run(baseline) if baseline is not None else run_list[0]
    if all(r.path.resolve() != base.path.resolve() for r in run_list):
        run_list.append(base)
    by_path = {str(r.path): lab for r, lab in zip(run_list, _resolve_labels(run_list, labels), strict=True)}
    out = Path(out_dir)
    acc = _accuracy_frame(run_list, by_path)
    files = plot_accuracy(run_list, out, labels=by_path)
    diffs = pd.DataFrame()
    skipped: list[dict] = []
    if len(run_list) > 1:
        diffs = compare(run_list, baseline=base, labels=by_path)
        skipped = list(diffs.attrs.get("skipped", []))
        if not diffs.empty:
            files += plot_differences(diffs, out, order=list(dict.fromkeys(acc["series"])))
            loaded = {str(r.path): r for r in run_list}
            for (pa, pb), g in diffs.groupby(["run_a", "run_b"], sort=False):
                keys = list(dict.fromkeys(tuple(k) for k in g[list(KEY)].itertuples(index=False)))
                files += plot_paired_differences(loaded[pa], loaded[pb], out, keys=keys)
    doc = {
        "format": PLOTS_FORMAT,
        "format_version": 1,
        "baseline": str(base.path),
        "files": [str(p) for p in files],
        "accuracy": _records(acc, ["series", "panel", "run", *KEY, "mean", "ci95", "n"]),
        "differences": _records(diffs, list(diffs.columns)),
        "skipped": skipped,
    }
    atomic_write_json(out / "plots.json", doc)
    return doc


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    return [{str(k): _json_value(v) for k, v in rec.items()} for rec in frame[columns].to_dict(orient="records")]
