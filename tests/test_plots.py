"""fewshot_bench.plots: figures are written as PNG and PDF."""

from __future__ import annotations

import json

import matplotlib
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


# ---------------------------------------------------------------- the plot command over any set of runs


def _errorbars(fig):
    """{series label: (x, y, half-widths)} of every error bar drawn in ``fig``."""
    out = {}
    for ax in fig.axes:
        for c in ax.containers:
            data, _, (bars,) = c.lines
            segs = np.array(bars.get_segments())  # (points, 2 ends, xy)
            y = data.get_ydata()
            np.testing.assert_allclose(segs.mean(axis=1)[:, 1], y, rtol=1e-12)  # bars centred on the points
            out.setdefault(c.get_label(), []).append((ax.get_title(), y, (segs[:, 1, 1] - segs[:, 0, 1]) / 2))
    return out


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot command saves, by stem."""
    figs = {}
    real = plots.save_figure

    def keep(fig, out_dir, stem):
        figs[stem] = fig
        return real(fig, out_dir, stem)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figs


def test_plot_command_draws_95_ci_bars_and_paired_differences(tmp_path, captured, capsys):
    from fewshot_bench import report, stats
    from fewshot_bench.cli import main

    rng = np.random.default_rng(4)
    acc = {("cifar-fs", k, "protonet"): rng.binomial(75, 0.6, 40) / 75 for k in (1, 5)}
    ce = make_run(tmp_path / "ce", acc)
    clce = make_run(tmp_path / "clce", {k: np.clip(v + 0.02 + rng.normal(0, 0.03, 40), 0, 1) for k, v in acc.items()},
                    loss="clce")
    assert main(["plot", str(tmp_path / "*"), "--baseline", str(ce), "--out", str(tmp_path / "figs")]) == 0
    assert "wrote " + str(tmp_path / "figs" / "plots.json") in capsys.readouterr().out
    acc = _errorbars(captured["accuracy"])
    for run in (ce, clce):
        r = report.load_run(run)
        for title, y, half in acc[r.label]:
            keys = sorted((k for k in r.results if report.dataset_display_name(k[0]) == title), key=lambda k: k[3])
            np.testing.assert_allclose(y, [100 * r.results[k]["mean"] for k in keys], rtol=1e-12)
            np.testing.assert_allclose(half, [100 * r.results[k]["ci95"] for k in keys], rtol=1e-9)  # CI, not std
            assert not np.allclose(half, [100 * r.results[k]["std"] for k in keys])
    (series, drawn), = _errorbars(captured["differences"]).items()
    assert series == "resnet12 (clce)"
    a, b = report.load_run(clce), report.load_run(ce)
    for title, y, half in drawn:
        keys = sorted((k for k in a.results if report.dataset_display_name(k[0]) == title), key=lambda k: k[3])
        ref = [stats.mean_difference(a.accuracies[k], b.accuracies[k]) for k in keys]
        np.testing.assert_allclose(y, [100 * d for d, _ in ref], rtol=1e-9)
        np.testing.assert_allclose(half, [100 * h for _, h in ref], rtol=1e-9)
    doc = json.loads((tmp_path / "figs" / "plots.json").read_text())
    assert doc["format"] == "fewshot-bench-plots" and doc["skipped"] == [] and len(doc["differences"]) == 2
    assert {d["run_b"] for d in doc["differences"]} == {str(ce)}


def test_many_runs_get_distinct_colours(tmp_path, captured):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}
    runs = [make_run(tmp_path / f"r{i:02d}", acc, loss=f"loss{i}") for i in range(15)]
    plots.plot_accuracy(runs, tmp_path / "figs")
    colours = [c.lines[0].get_color() for c in captured["accuracy"].axes[0].containers]
    assert len(colours) == 15 and len({tuple(matplotlib.colors.to_rgba(c)) for c in colours}) == 15
    styles = {plots.series_style(j) for j in range(160)}
    assert len(styles) == 160


def test_plot_over_mixed_ways_shots_and_episodes_skips_with_reasons(tmp_path, capsys):
    from fewshot_bench.cli import main

    rng = np.random.default_rng(2)
    base = make_run(tmp_path / "base", {("cifar-fs", k, "protonet"): rng.random(20) for k in (1, 5)})
    make_run(tmp_path / "ten", {("cifar-fs", "test", 10, 1, 15, "protonet"): rng.random(20)}, loss="clce")
    make_run(tmp_path / "seed7", {("cifar-fs", 1, "protonet"): rng.random(20)}, loss="supcon", seed=7)
    make_run(tmp_path / "five", {("cifar-fs", 5, "protonet"): rng.random(20)}, loss="h-scl")
    assert main(["plot", str(tmp_path / "*"), "--baseline", str(base), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 2 and any("different episodes" in s for s in skipped)
    assert any("share no dataset x split x ways" in s for s in skipped)
    doc = json.loads((tmp_path / "figs" / "plots.json").read_text())
    assert sorted(s["reason"] for s in doc["skipped"]) == ["different_episodes", "no_shared_cell"]
    assert (tmp_path / "figs" / "paired_differences_five_vs_base.png").is_file()
    assert {d["shots"] for d in doc["differences"]} == {5}
