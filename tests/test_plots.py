"""fewshot_bench.plots: figures are written as PNG and PDF."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_bench import plots
from fewshot_bench.errors import EpisodeError

from runs import make_run


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    a = {(ds, k, "protonet"): rng.binomial(75, 0.6, 50) / 75 for ds in ("cifar-fs", "fc100") for k in (1, 5)}
    b = {key: np.clip(v + 0.02 + rng.normal(0, 0.03, 50), 0, 1) for key, v in a.items()}
    return make_run(tmp_path / "ce", a), make_run(tmp_path / "clce", b, loss="clce")


def _check_files(paths, out, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    assert all(p.parent == out for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test_plot_accuracy(two_runs, tmp_path):
    out = tmp_path / "figs"
    _check_files(plots.plot_accuracy(list(two_runs), out), out, "accuracy")


def test_plot_paired_differences(two_runs, tmp_path):
    out = tmp_path / "figs"
    _check_files(plots.plot_paired_differences(two_runs[1], two_runs[0], out), out, "paired_differences_clce_vs_ce")
    _check_files(plots.plot_paired_differences(two_runs[1], two_runs[0], out, stem="d"), out, "d")


def test_plot_paired_differences_needs_same_episodes(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}
    a, b = make_run(tmp_path / "a", acc, seed=0), make_run(tmp_path / "b", acc, seed=1)
    with pytest.raises(EpisodeError, match="different episodes"):
        plots.plot_paired_differences(a, b, tmp_path / "figs")


def test_paired_differences_with_constant_difference(tmp_path):
    """Identical predictions give all-equal differences; the histogram is one bar, not a crash."""
    acc = {("cifar-fs", 1, "protonet"): np.full(30, 0.6)}
    a, b = make_run(tmp_path / "a", acc), make_run(tmp_path / "b", acc)
    paths = plots.plot_paired_differences(a, b, tmp_path / "out")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
