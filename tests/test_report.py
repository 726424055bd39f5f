"""fewshot_bench.report: run folders, paired comparisons, tables."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from fewshot_bench import report, stats
from fewshot_bench.errors import ConfigError, DataError, EpisodeError

from runs import make_run

E = 200  # episodes per result: enough for the tests, fast


def _acc(rng, p, n=E, queries=75):
    return rng.binomial(queries, p, size=n) / queries


@pytest.fixture
def three_runs(tmp_path):
    """Baseline CE, a better CLCE (+5 pp, paired), and a tied run, on two datasets x two shots."""
    rng = np.random.default_rng(0)
    base, better, tied = {}, {}, {}
    for ds, p in (("cifar-fs", 0.6), ("mini-imagenet", 0.5)):
        for shots in (1, 5):
            b = _acc(rng, p + 0.1 * (shots == 5))
            base[(ds, shots, "protonet")] = b
            better[(ds, shots, "protonet")] = np.clip(b + 0.05 + rng.normal(0, 0.03, E), 0, 1)
            tied[(ds, shots, "protonet")] = np.clip(b + rng.normal(0, 0.03, E), 0, 1)
    return (
        make_run(tmp_path / "ce", base, loss="ce"),
        make_run(tmp_path / "clce", better, loss="clce"),
        make_run(tmp_path / "tied", tied, loss="supcon"),
        (base, better, tied),
    )


# ---------------------------------------------------------------- load_run


def test_load_run_reads_both_files(three_runs):
    ce, _, _, (base, _, _) = three_runs
    run = report.load_run(ce)
    key = ("cifar-fs", "test", 5, 1, 15, "protonet")
    assert set(run.results) == {(d, "test", 5, k, 15, "protonet") for d in ("cifar-fs", "mini-imagenet") for k in (1, 5)}
    np.testing.assert_array_equal(run.accuracies[key], base[("cifar-fs", 1, "protonet")])
    np.testing.assert_array_equal(run.episodes[key], np.arange(E))
    assert run.label == "resnet12 (ce)"
    assert report.load_run(ce / "summary.json").path == ce


def test_load_run_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such run folder"):
        report.load_run(tmp_path / "nope")


def test_load_run_not_a_run_folder(tmp_path):
    with pytest.raises(DataError, match=r"not a run folder \(no summary.json\)"):
        report.load_run(tmp_path)


def test_load_run_old_format_version(tmp_path):
    run = make_run(tmp_path / "old", {("cifar-fs", 1, "protonet"): [0.5, 0.6]}, format_version=0)
    with pytest.raises(DataError, match=rf"^{run} was written by fewshot-bench format 0; re-run eval with this version$"):
        report.load_run(run)


def test_load_run_missing_format_version_is_format_0(tmp_path):
    run = make_run(tmp_path / "old", {("cifar-fs", 1, "protonet"): [0.5, 0.6]})
    summary = json.loads((run / "summary.json").read_text())
    del summary["format_version"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataError, match="format 0; re-run eval"):
        report.load_run(run)


def test_load_run_newer_format_version(tmp_path):
    run = make_run(tmp_path / "new", {("cifar-fs", 1, "protonet"): [0.5, 0.6]}, format_version=7)
    with pytest.raises(DataError, match="format 7, newer.*upgrade fewshot-bench"):
        report.load_run(run)


def test_load_run_other_json(tmp_path):
    (tmp_path / "summary.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a fewshot-bench run summary"):
        report.load_run(tmp_path)


def test_load_run_missing_csv(tmp_path):
    run = make_run(tmp_path / "r", {("cifar-fs", 1, "protonet"): [0.5, 0.6]})
    (run / "per_episode.csv").unlink()
    with pytest.raises(DataError, match="no per_episode.csv"):
        report.load_run(run)


def test_load_run_truncated_csv(tmp_path):
    run = make_run(tmp_path / "r", {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]})
    lines = (run / "per_episode.csv").read_text().splitlines()
    (run / "per_episode.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="2 rows for cifar-fs test 5-way 1-shot 15-query protonet but summary.json says 3"):
        report.load_run(run)


def test_load_run_refuses_an_episode_listed_twice(tmp_path):
    """Episodes are paired by index across runs: a duplicated index would pair by row order."""
    run = make_run(tmp_path / "r", {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]})
    lines = (run / "per_episode.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    episode = header.split(",").index("episode")
    cells = rows[2].split(",")
    cells[episode] = rows[1].split(",")[episode]  # the third row claims the second row's episode
    (run / "per_episode.csv").write_text("\n".join([header, rows[0], rows[1], ",".join(cells)]) + "\n")
    with pytest.raises(DataError, match=r"per_episode\.csv: episode 1 is listed twice for cifar-fs test 5-way "
                                        r"1-shot 15-query protonet; the file is damaged, re-run eval$"):
        report.load_run(run)


# ---------------------------------------------------------------- runs_frame


def test_runs_frame_is_tidy(three_runs):
    ce, clce, _, (base, _, _) = three_runs
    df = report.runs_frame([ce, clce], labels={str(clce): "Ours"})
    assert len(df) == 8
    assert set(df["label"]) == {"resnet12 (ce)", "Ours"}
    for col in ("run", "label", *report.KEY, "mean", "ci95", "std", "n", "ci_method", "transductive", "episodes_sha256"):
        assert col in df.columns
    row = df[(df["label"] == "resnet12 (ce)") & (df["dataset"] == "cifar-fs") & (df["shots"] == 1)].iloc[0]
    ci = stats.mean_ci(base[("cifar-fs", 1, "protonet")])
    assert row["mean"] == pytest.approx(ci.mean) and row["ci95"] == pytest.approx(ci.ci) and row["n"] == E


def test_runs_frame_label_errors(three_runs, tmp_path):
    ce, clce, _, _ = three_runs
    with pytest.raises(ConfigError, match="not one of the runs given"):
        report.runs_frame([ce], labels={str(tmp_path / "other"): "X"})
    with pytest.raises(ConfigError, match="share the label 'X'"):
        report.runs_frame([ce, clce], labels={str(ce): "X", str(clce): "X"})


def test_runs_frame_disambiguates_equal_auto_labels(tmp_path):
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.6]})
    b = make_run(tmp_path / "b", {("cifar-fs", 1, "protonet"): [0.5, 0.7]})
    assert list(report.runs_frame([a, b])["label"]) == ["resnet12 (ce) [a]", "resnet12 (ce) [b]"]


# ---------------------------------------------------------------- compare


def test_compare_matches_stats(three_runs):
    ce, clce, _, (base, better, _) = three_runs
    df = report.compare([clce, ce])
    assert len(df) == 4
    assert set(df["a"]) == {"resnet12 (clce)"} and set(df["b"]) == {"resnet12 (ce)"}
    row = df[(df["dataset"] == "mini-imagenet") & (df["shots"] == 5)].iloc[0]
    a, b = better[("mini-imagenet", 5, "protonet")], base[("mini-imagenet", 5, "protonet")]
    diff, half = stats.mean_difference(a, b)
    assert row["diff"] == pytest.approx(diff, abs=1e-12) and row["ci"] == pytest.approx(half, abs=1e-12)
    assert row["p_t"] == pytest.approx(stats.paired_ttest(a, b).pvalue, abs=1e-12)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, abs=1e-12)
    np.testing.assert_allclose(df["p_t_holm"], stats.holm(df["p_t"]), atol=1e-12)
    np.testing.assert_allclose(df["p_wilcoxon_holm"], stats.holm(df["p_wilcoxon"]), atol=1e-12)
    assert set(df["verdict_0.05"]) == {"better"} and set(df["verdict_0.01"]) == {"better"}


def test_compare_verdicts_and_direction(three_runs):
    ce, clce, tied, _ = three_runs
    df = report.compare([ce, clce, tied])  # all pairs, a earlier than b
    assert len(df) == 12
    worse = df[(df["a"] == "resnet12 (ce)") & (df["b"] == "resnet12 (clce)")]
    assert (worse["diff"] < 0).all() and set(worse["verdict_0.05"]) == {"worse"}
    same = df[(df["a"] == "resnet12 (ce)") & (df["b"] == "resnet12 (supcon)")]
    assert set(same["verdict_0.05"]) == {"n.s."}


def test_compare_with_baseline(three_runs):
    ce, clce, tied, _ = three_runs
    df = report.compare([clce, tied], baseline=ce)
    assert len(df) == 8
    assert set(df["run_b"]) == {str(ce)}
    assert df.attrs["baseline"] == str(ce)


def test_compare_refuses_different_episodes(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}
    a = make_run(tmp_path / "a", acc, seed=0)
    b = make_run(tmp_path / "b", acc, seed=1)
    with pytest.raises(EpisodeError, match="evaluated on different episodes for cifar-fs test 5-way 1-shot"):
        report.compare([a, b])


def test_compare_needs_shared_results_and_two_runs(tmp_path):
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.6]})
    # another loss: runs of one configuration and seed on different datasets are one table row (seed groups)
    b = make_run(tmp_path / "b", {("fc100", 1, "protonet"): [0.5, 0.6]}, loss="clce")
    df = report.compare([a, b])  # nothing to pair: skipped with its reason, not refused
    assert df.empty and [s["reason"] for s in df.attrs["skipped"]] == ["no_shared_cell"]
    assert "share no dataset" in df.attrs["skipped"][0]["message"]
    with pytest.raises(ConfigError, match="at least two different runs"):
        report.compare([a, a])


def test_compare_identical_runs(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7, 0.4]}
    a = make_run(tmp_path / "a", acc)
    b = make_run(tmp_path / "b", acc, loss="clce")
    df = report.compare([a, b])
    assert df["p_t"].iloc[0] == 1.0 and df["p_wilcoxon"].iloc[0] == 1.0 and df["verdict_0.05"].iloc[0] == "n.s."


def test_write_compare_json_and_format(three_runs, tmp_path):
    ce, clce, _, _ = three_runs
    df = report.compare([clce, ce])
    out = tmp_path / "out" / "compare.json"
    report.write_compare_json(df, out)
    doc = json.loads(out.read_text())
    assert doc["format"] == "fewshot-bench-compare" and doc["alpha"] == [0.01, 0.05]
    assert len(doc["comparisons"]) == 4
    assert doc["comparisons"][0]["p_t_holm"] == pytest.approx(df["p_t_holm"].iloc[0])
    text = report.format_compare(df)
    assert "resnet12 (clce)" in text and "CIFAR-FS" in text and "better" in text and "α=0.05" in text


# ---------------------------------------------------------------- tables


def _cell(value, ci):
    return f"{100 * value:.2f}$\\pm${100 * ci:.2f}"


def test_latex_table_layout(three_runs):
    ce, clce, tied, (_, better, _) = three_runs
    tex = report.make_table([ce, clce, tied], fmt="latex", baseline=ce)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\caption{"):
        assert rule in tex
    assert r"\multicolumn{2}{c}{CIFAR-FS}" in tex and r"\multicolumn{2}{c}{miniImageNet}" in tex
    assert tex.index("CIFAR-FS") < tex.index("miniImageNet")
    assert "1-shot & 5-shot" in tex
    ci = stats.mean_ci(better[("cifar-fs", 1, "protonet")])
    clce_line = next(line for line in tex.splitlines() if line.startswith("resnet12 (clce)"))
    assert r"\textbf{" + _cell(ci.mean, ci.ci) + r"}$^\dagger$" in clce_line
    ce_line = next(line for line in tex.splitlines() if line.startswith("resnet12 (ce)"))
    assert r"\textbf" not in ce_line and r"\dagger" not in ce_line
    # protocol in the caption
    assert f"over {E} test episodes, 5-way 1/5-shot, 15 queries" in tex
    assert "Student-t interval" in tex and "protonet inductive" in tex and "episode seed 0" in tex
    h = report.load_run(ce).results[("cifar-fs", "test", 5, 1, 15, "protonet")]["episodes_sha256"][:8]
    assert h in tex
    assert r"baseline (resnet12 (ce))" in tex


def test_table_ties_are_all_bold(tmp_path):
    acc = {("fc100", 1, "protonet"): [0.5, 0.6, 0.7]}
    a = make_run(tmp_path / "a", acc)
    b = make_run(tmp_path / "b", acc, loss="clce")
    md = report.make_table([a, b], fmt="markdown")
    assert md.count("**60.00±") == 2
    assert "| Model | FC100 1-shot |" in md


def test_markdown_and_csv(three_runs):
    ce, clce, _, (base, _, _) = three_runs
    md = report.make_table([ce, clce], fmt="markdown", labels={str(ce): "CE", str(clce): "CLCE (ours)"},
                           caption="Results.")
    assert "| CE |" in md and "| CLCE (ours) |" in md and "Results. Mean accuracy" in md
    csv_text = report.make_table([ce, clce], fmt="csv")
    df = pd.read_csv(__import__("io").StringIO(csv_text), header=[0, 1], index_col=0, comment="#")
    ci = stats.mean_ci(base[("mini-imagenet", 5, "protonet")])
    assert df.loc["resnet12 (ce)", ("miniImageNet", "5-shot")] == f"{100 * ci.mean:.2f}±{100 * ci.ci:.2f}"
    assert "**" not in csv_text


def test_table_several_methods_label_rows(tmp_path):
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.6], ("cifar-fs", 1, "tim"): [0.6, 0.7]},
                 transductive={"tim": True})
    md = report.make_table([a], fmt="markdown")
    assert "| resnet12 (ce), protonet |" in md and "| resnet12 (ce), tim |" in md
    assert "tim transductive" in md


def test_table_baseline_with_other_episodes_is_not_tested(tmp_path):
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}, seed=0)
    b = make_run(tmp_path / "b", {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.9]}, seed=3, loss="clce")
    md = report.make_table([a, b], baseline=a, fmt="markdown")  # only identical episodes pair
    assert "Not tested against the baseline: resnet12 (clce), CIFAR-FS 1-shot (other episodes)." in md
    doc = json.loads(report.make_table([a, b], baseline=a, fmt="json"))
    assert [s["reason"] for s in doc["skipped"]] == ["different_episodes"] and doc["n_tests"] == 0
    assert "different episodes" in doc["skipped"][0]["message"]


def test_table_unknown_format(three_runs):
    with pytest.raises(ConfigError, match="--format html: unknown table format"):
        report.make_table([three_runs[0]], fmt="html")


def test_latex_escapes_labels(tmp_path):
    a = make_run(tmp_path / "a", {("my_data", 1, "protonet"): [0.5, 0.6]})
    tex = report.make_table([a], labels={str(a): "R&D 50%_x"})
    assert r"R\&D 50\%\_x" in tex and r"my\_data" in tex


def test_dataset_display_names():
    names = ["cifar-fs", "cifar_fs", "FC100", "mini-imagenet", "miniImageNet", "tiered-imagenet", "cub"]
    assert [report.dataset_display_name(n) for n in names] == [
        "CIFAR-FS", "CIFAR-FS", "FC100", "miniImageNet", "miniImageNet", "tieredImageNet", "cub"]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_table_compiles(three_runs, tmp_path):
    ce, clce, tied, _ = three_runs
    tex = report.make_table([ce, clce, tied], fmt="latex", baseline=ce, labels={str(tied): "SupCon_50% & more"})
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
