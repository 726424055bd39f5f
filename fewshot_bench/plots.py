"""Figures from run folders: accuracy with CIs, and paired per-episode differences.

matplotlib with the non-interactive Agg backend; every figure is written as PNG and
PDF (atomically) and the functions return the written paths. Accuracies are shown in
percent. See ``docs/reports.md``.
"""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, ever
import matplotlib.pyplot as plt
import numpy as np

from ._io import atomic_write_bytes
from .errors import ConfigError
from .report import (
    KEY,
    Run,
    _as_run,
    _dataset_rank,
    dataset_display_name,
    paired_accuracies,
    protocol_text,
    runs_frame,
)

__all__ = ["plot_accuracy", "plot_paired_differences", "save_figure"]

FORMATS = ("png", "pdf")


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


def _footnote(fig: matplotlib.figure.Figure, tidy) -> None:
    """State the protocol under the figure (every report carries it)."""
    fig.text(0.0, 0.0, textwrap.fill(protocol_text(tidy), 160), fontsize=6, ha="left", va="top")


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


def plot_accuracy(
    runs: Sequence[Run | str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Mapping[str, str] | None = None,
    stem: str = "accuracy",
) -> list[Path]:
    """Mean accuracy with its 95 % CI error bars, one panel per dataset, shots on the x axis.

    Each run (x method when several) is one series, offset slightly along x so the bars
    do not overlap. Returns ``[out_dir/accuracy.png, out_dir/accuracy.pdf]``.
    """
    tidy = runs_frame(runs, labels)
    series_col = tidy["label"] + (", " + tidy["method"] if tidy["method"].nunique() > 1 else "")
    tidy = tidy.assign(series=series_col, panel=[
        dataset_display_name(d) + (f" ({s})" if tidy["split"].nunique() > 1 else "")
        + (f", {w}-way" if tidy["ways"].nunique() > 1 else "")
        for d, s, w in zip(tidy["dataset"], tidy["split"], tidy["ways"], strict=True)
    ])
    panels = sorted(dict.fromkeys(tidy["panel"]), key=_dataset_rank)
    series = list(dict.fromkeys(tidy["series"]))
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
            x = np.array([pos[k] for k in s["shots"]]) + (j - (len(series) - 1) / 2) * width
            ax.errorbar(x, 100 * s["mean"], yerr=100 * s["ci95"].fillna(0), fmt="o", capsize=3,
                        color=f"C{j}", label=name)
        ax.set_xticks(range(len(shots)), [f"{k}-shot" for k in shots])
        ax.set_xlim(-0.6, len(shots) - 0.4)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%) ± 95% CI")
    handles, labs = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    fig.legend(handles, labs, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _footnote(fig, tidy)
    return save_figure(fig, out_dir, stem)


def plot_paired_differences(
    run_a: Run | str | os.PathLike,
    run_b: Run | str | os.PathLike,
    out_dir: str | os.PathLike,
    stem: str | None = None,
    bins: int = 41,
) -> list[Path]:
    """Histograms of per-episode accuracy differences ``a - b`` (percentage points).

    One panel per dataset x split x ways x shots x queries x method both runs hold,
    with the mean difference and zero marked. Bins follow the lattice of the differences
    (one bin per possible value) unless that needs more than 400 bins; then ``bins``. The runs must share the episodes
    (:class:`~fewshot_bench.errors.EpisodeError` otherwise).
    Returns ``[out_dir/<stem>.png, .pdf]``, the stem defaulting to
    ``paired_differences_<a folder>_vs_<b folder>`` so that several pairs can share one
    ``out_dir``.
    """
    ra, rb = _as_run(run_a), _as_run(run_b)
    if stem is None:
        stem = f"paired_differences_{ra.name}_vs_{rb.name}"
    shared = [k for k in ra.results if k in rb.results]
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
        ax.hist(d, bins=_bins(d, bins), color="C0", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(d.mean(), color="C3", lw=1.5, label=f"mean {d.mean():+.2f}")
        k = dict(zip(KEY, key, strict=True))
        ax.set_title(f"{dataset_display_name(k['dataset'])} {k['shots']}-shot {k['method']}", fontsize=9)
        ax.set_xlabel("a - b (pp)")
        ax.legend(fontsize=8, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"a = {ra.name}, b = {rb.name}: per-episode accuracy differences", fontsize=10)
    fig.tight_layout()
    _footnote(fig, runs_frame([ra, rb]))
    return save_figure(fig, out_dir, stem)
