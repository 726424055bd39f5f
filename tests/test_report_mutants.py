"""fewshot_bench.report: behaviour the mutation run of report.py found unpinned (exact numbers, marks,
record schemas of the written JSON/CSV, and one-line error messages with their flags)."""

from __future__ import annotations

import json
import math
import re
import statistics
import warnings
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats

from fewshot_bench import report
from fewshot_bench.errors import ConfigError, DataError, EpisodeError

from runs import borderline_pair, episodes_hash, holm_loop, make_run, make_seed_runs

FIXTURE = Path(__file__).parent / "fixtures" / "literature_demo.csv"
K1 = ("cifar-fs", 1, "protonet")
K5 = ("cifar-fs", 5, "protonet")
KEY1 = ("cifar-fs", "test", 5, 1, 15, "protonet")
BASE = [0.5, 0.6, 0.7, 0.6]
# per-seed paired differences clce - ce: means 0.05, 0.10, 0.20 (median 0.10, mean 0.11666...)
DIFFS = {0: [0.1, 0.0, 0.1, 0.0], 1: [0.2, 0.0, 0.2, 0.0], 2: [0.4, 0.0, 0.4, 0.0]}


def _exact(text: str) -> str:
    """A pytest.raises pattern matching exactly ``text``."""
    return "^" + re.escape(text) + "$"


def _edit_summary(run: Path, edit) -> None:
    summary = json.loads((run / "summary.json").read_text())
    edit(summary)
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def pair(tmp_path):
    """Two single runs (ce, clce) on CIFAR-FS 1- and 5-shot, 3 episodes, same episodes; diff +1/30 each."""
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7], K5: [0.5, 0.6, 0.8]})
    b = make_run(tmp_path / "b", {K1: [0.4, 0.6, 0.7], K5: [0.5, 0.5, 0.8]}, loss="clce")
    return a, b


@pytest.fixture
def seeds(tmp_path):
    """CE and CLCE, fine-tuning seeds 0-2, on CIFAR-FS 1-shot, same episodes; CLCE = CE + DIFFS[s]."""
    ce = {s: {K1: [x + 0.01 * s for x in BASE]} for s in range(3)}
    clce = {s: {K1: [x + 0.01 * s + d for x, d in zip(BASE, DIFFS[s], strict=True)]} for s in range(3)}
    return make_seed_runs(tmp_path, "ce", ce, loss="ce"), make_seed_runs(tmp_path, "clce", clce, loss="clce")


# ---------------------------------------------------------------- runs_frame, input protocol


def test_runs_frame_columns_seeds_ci_method_and_transductive(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6], ("cifar-fs", 1, "tim"): [0.7, 0.8]}, transductive={"tim": True})
    foreign = make_run(tmp_path / "f", {K1: [0.4, 0.6]}, arch="vit", finetune_seed=None)
    _edit_summary(a, lambda s: [r.pop("ci_method") for r in s["results"]])  # runs written before --ci
    df = report.runs_frame([a, foreign])
    assert list(df.columns) == ["run", "label", *report.KEY, "mean", "ci95", "std", "n", "ci_method", "transductive",
                                "episodes_sha256", "seed", "finetune_seed", "input_protocol", "preprocess",
                                "preprocess_text"]
    assert df["finetune_seed"].dtype == object and df["finetune_seed"].tolist() == [0, 0, None]
    assert df["ci_method"].tolist() == ["t", "t", "t"]
    assert df["transductive"].tolist() == [False, True, False]
    assert df["episodes_sha256"].tolist() == [episodes_hash("cifar-fs", "test", 5, 1, 15, 2, 0)] * 3


def test_input_protocol_text_without_a_source():
    p = {"cifar-fs": {"transform": "rfs-cifar", "image_size": 32, "pool": "avg"}}
    assert report.input_protocol_text({"protocols": p}, "cifar-fs") == "rfs-cifar 32 px, avg pool"
    p["cifar-fs"].update(source="preset rfs", forced=True)
    assert report.input_protocol_text({"protocols": p}, "cifar-fs") == "rfs-cifar 32 px, avg pool [preset rfs] FORCED"


# ---------------------------------------------------------------- find_runs


def test_find_runs_pattern_over_summary_files_and_no_match(tmp_path):
    a = make_run(tmp_path / "runs" / "a", {K1: [0.5, 0.6]})
    b = make_run(tmp_path / "runs" / "b", {K1: [0.5, 0.6]})
    assert report.find_runs([str(tmp_path / "runs" / "*" / "summary.json")]) == [a, b]
    pattern = str(tmp_path / "zz*")
    with pytest.raises(ConfigError, match=_exact(
            f"--baseline {pattern}: the pattern matches no run folder (a folder with summary.json); "
            "check the pattern or pass the --out folders of `fewshot-bench eval`")):
        report.find_runs([pattern], flag="--baseline")


# ---------------------------------------------------------------- seed groups


def test_duplicate_seed_message_is_exact(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7]}, finetune_seed=0)
    b = make_run(tmp_path / "b", {K1: [0.5, 0.6, 0.7]}, finetune_seed=0)
    with pytest.raises(ConfigError, match=_exact(
            f"{a} and {b} share the row label 'resnet12 (ce)' and the fine-tuning seed 0 for cifar-fs test 5-way "
            "1-shot 15-query protonet; give different configurations different --label values, or pass each seed "
            "once")):
        report.seed_groups([a, b])


def test_seeds_with_different_feature_preprocessing_are_refused(tmp_path):
    paths = [make_run(tmp_path / f"s{s}", {K1: [0.5, 0.6]}, loss="clce", finetune_seed=s, preprocess={"protonet": p})
             for s, p in ((0, "none"), (1, "l2n"))]
    with pytest.raises(ConfigError, match=_exact(
            "the seeds of row 'resnet12 (clce)' were evaluated with different feature preprocessing for cifar-fs "
            "test 5-way 1-shot 15-query protonet (l2n vs none); give them different --label values or evaluate "
            "every seed alike")):
        report.seed_groups(paths)


def test_a_key_only_one_seed_holds_needs_no_episode_hash(tmp_path):
    s0 = make_run(tmp_path / "s0", {K1: [0.5, 0.6], ("fc100", 1, "protonet"): [0.3, 0.4]}, finetune_seed=0)
    s1 = make_run(tmp_path / "s1", {K1: [0.5, 0.7]}, finetune_seed=1)
    _edit_summary(s0, lambda s: s["results"][1].pop("episodes_sha256"))  # nothing to check it against
    (group,) = report.seed_groups([s0, s1])
    assert group.seeds == (0, 1)
    df = report.groups_frame([group])
    fc = df[df["dataset"] == "fc100"].iloc[0]
    assert fc["n_seeds"] == 1 and pd.isna(fc["episodes_sha256"])
    _edit_summary(s1, lambda s: s["results"][0].pop("episodes_sha256"))  # shared key: refused
    with pytest.raises(EpisodeError, match=_exact(
            f"{s1}: no episodes_sha256 for cifar-fs test 5-way 1-shot 15-query protonet, so the seeds of row "
            "'resnet12 (ce)' cannot be checked to share their episodes; re-run eval with this version")):
        report.seed_groups([s0, s1])


def test_folder_labels_get_the_path_only_where_they_clash(tmp_path):
    runs = [make_run(tmp_path / d / n, {K1: [0.5, 0.6]}, finetune_seed=None) for d, n in (("x", "r"), ("y", "r"),
                                                                                          ("x", "q"))]
    labels = [g.label for g in report.seed_groups(runs)]
    assert labels == [f"resnet12 (ce) [{runs[0]}]", f"resnet12 (ce) [{runs[1]}]", "resnet12 (ce) [q]"]


def test_seed_pairs_single_run_against_a_row(seeds, tmp_path):
    ce, clce = (tuple(report.load_run(p) for p in row) for row in seeds)
    foreign = report.load_run(make_run(tmp_path / "f", {K1: BASE}, arch="vit", finetune_seed=None))
    assert report.seed_pairs([foreign], list(clce)) == [(foreign, c) for c in clce]
    assert report.seed_pairs(list(clce), [foreign]) == [(c, foreign) for c in clce]
    assert report.seed_pairs([clce[1]], [ce[2]]) == [(clce[1], ce[2])]  # two single runs: whatever the seeds
    other = [report.load_run(p) for p in make_seed_runs(tmp_path, "sup", {7: {K1: BASE}, 8: {K1: BASE}}, loss="s")]
    with pytest.raises(ConfigError, match=_exact(
            "X: the rows share no fine-tuning seed (seeds 7, 8 vs 0, 1, 2); fine-tune both with the same --seeds "
            "to compare them seed by seed")):
        report.seed_pairs(other, list(clce), "X")


# ---------------------------------------------------------------- compare


def test_compare_single_run_first_against_a_row_of_seeds(seeds, tmp_path):
    _, clce = seeds
    foreign = make_run(tmp_path / "f", {K1: BASE}, arch="vit", loss=None, finetune_seed=None)
    df = report.compare([foreign, *clce])
    assert df["run_a"].tolist() == [str(foreign)] * 3 and df["run_b"].tolist() == [str(p) for p in clce]
    assert df["seed_a"].tolist() == [None] * 3 and df["seed_b"].tolist() == [0, 1, 2]
    assert report.seed_summary(df)["seeds"].tolist() == ["-/0,-/1,-/2"]
    assert "-/0" in report.format_compare(df)


def test_compare_rows_carry_the_episode_hash(pair):
    df = report.compare(list(pair))
    assert df["episodes_sha256"].tolist() == [episodes_hash("cifar-fs", "test", 5, k, 15, 3, 0) for k in (1, 5)]


def test_no_shared_cell_message_names_both_cell_sets(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6], ("fc100", 5, "tim"): [0.5, 0.6]})
    b = make_run(tmp_path / "b", {("mini-imagenet", 1, "protonet"): [0.5, 0.6]}, loss="clce")
    (skip,) = report.compare([a, b]).attrs["skipped"]
    assert skip["message"] == (f"{a} and {b} share no dataset x split x ways x shots x queries x method "
                               "(cifar-fs/fc100 test 5-way 1/5-shot 15q protonet/tim vs mini-imagenet test 5-way "
                               "1-shot 15q protonet); nothing to compare")


def test_skipped_record_names_both_runs(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7]}, seed=0)
    b = make_run(tmp_path / "b", {K1: [0.5, 0.6, 0.9]}, seed=3, loss="clce")
    ha, hb = (episodes_hash("cifar-fs", "test", 5, 1, 15, 3, s)[:8] for s in (0, 3))
    assert report.compare([a, b]).attrs["skipped"] == [{
        "a": "resnet12 (ce)", "b": "resnet12 (clce)", "run_a": str(a), "run_b": str(b),
        "dataset": "cifar-fs", "split": "test", "ways": 5, "shots": 1, "queries": 15, "method": "protonet",
        "reason": "different_episodes",
        "message": f"{a} and {b} were evaluated on different episodes for cifar-fs test 5-way 1-shot 15-query "
                   f"protonet (episodes_sha256 {ha} vs {hb}); re-run eval on the same episode file to compare them",
    }]


def test_format_compare_text_and_level(pair):
    text = report.format_compare(report.compare(list(pair), level=0.9))
    # diff = mean(0.1, 0, 0) = 1/30; 90% t half-width = t(0.95, 2) * sd / sqrt(3) = 2.919986 / 30 = 9.73 pp;
    # t = 1, two-sided p = 0.42265, Holm over 2 rows: 0.8453
    assert text.splitlines()[:4] == [
        "            a               b  dataset  shots   method  n   a %   b %   a-b (pp) p_t holm p_wilcoxon holm"
        " α=0.01 α=0.05",
        "resnet12 (ce) resnet12 (clce) CIFAR-FS 1-shot protonet  3 60.00 56.67 +3.33±9.73   0.8453          1.0000"
        "   n.s.   n.s.",
        "resnet12 (ce) resnet12 (clce) CIFAR-FS 5-shot protonet  3 63.33 60.00 +3.33±9.73   0.8453          1.0000"
        "   n.s.   n.s.",
        "a-b: mean paired difference ± half-width of its 90% t-interval, in percentage points; p-values "
        "Holm-adjusted over all rows; verdict from the adjusted paired t-test.",
    ]


def test_format_compare_seed_pairs_table(seeds):
    ce, clce = seeds
    text = report.format_compare(report.compare([*clce, *ce], aggregate="mean"))
    lines = text.splitlines()
    at = lines.index("seed pairs (seed s of a against seed s of b, same episodes):")
    # per-pair diffs 5, 10, 20 pp: mean 11.67; every pair t = sqrt(3), p = 0.18: n.s.
    assert lines[at + 1:at + 4] == [
        "              a             b  dataset  shots   method seeds a-b (pp) mean [min, max]            α=0.01"
        "            α=0.05",
        "resnet12 (clce) resnet12 (ce) CIFAR-FS 1-shot protonet 0,1,2   +11.67 [+5.00, +20.00] n.s. (0↑ 0↓ of 3)"
        " n.s. (0↑ 0↓ of 3)",
        "a-b: mean over the seed pairs of the per-pair mean differences, with their range; verdict: better/worse "
        "when every seed pair is significant in that direction (Holm-adjusted t-test above), mixed when only some "
        "are, n.s. when none is; ↑/↓ count the pairs significant for a / for b.",
    ]


def test_seed_summary_values_and_default_rule(seeds):
    ce, clce = seeds
    df = report.compare([*clce, *ce])
    mean_a = [sum(BASE[i] + 0.01 * s + DIFFS[s][i] for i in range(4)) / 4 for s in range(3)]
    mean_b = [sum(BASE[i] + 0.01 * s for i in range(4)) / 4 for s in range(3)]
    df.attrs.clear()  # a frame without attrs (e.g. rebuilt by the user) sums up by the median
    row = report.seed_summary(df).iloc[0]
    assert row["mean_a"] == pytest.approx(statistics.median(mean_a), abs=1e-12)
    assert row["mean_b"] == pytest.approx(statistics.median(mean_b), abs=1e-12)
    assert row["diff"] == pytest.approx(0.10, abs=1e-12)
    assert row["diff_min"] == pytest.approx(0.05, abs=1e-12) and row["diff_max"] == pytest.approx(0.20, abs=1e-12)
    assert report.seed_summary(df).attrs["aggregate"] == "median"


def test_compare_json_schema(seeds, tmp_path):
    ce, clce = seeds
    df = report.compare([*clce, *ce])
    del df.attrs["aggregate"]
    out = tmp_path / "compare.json"
    report.write_compare_json(df, out)
    doc = json.loads(out.read_text())
    assert sorted(doc) == sorted(["format", "format_version", "alpha", "level", "baseline", "aggregate", "protocol",
                                  "tests", "holm", "seed_pairing", "comparisons", "seed_groups", "skipped"])
    assert doc["aggregate"] == "median"
    assert sorted(doc["comparisons"][0]) == sorted([
        "a", "b", "run_a", "run_b", "seed_a", "seed_b", *report.KEY, "n", "mean_a", "mean_b", "diff", "ci",
        "diff_low", "diff_high", "t", "p_t", "w", "p_wilcoxon", "episodes_sha256", "p_t_holm", "p_wilcoxon_holm",
        "verdict_0.01", "verdict_0.05"])
    assert doc["comparisons"][0]["episodes_sha256"] == episodes_hash("cifar-fs", "test", 5, 1, 15, 4, 0)
    assert sorted(doc["seed_groups"][0]) == sorted([
        "a", "b", *report.KEY, "n_pairs", "seeds", "mean_a", "mean_b", "diff", "diff_min", "diff_max",
        "n_better_0.01", "n_worse_0.01", "verdict_0.01", "n_better_0.05", "n_worse_0.05", "verdict_0.05"])


# ---------------------------------------------------------------- protocol caption


def test_protocol_text_exact_with_unknown_episode_sets(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7]})
    _edit_summary(run, lambda s: s["results"][0].pop("episodes_sha256"))
    assert report.protocol_text(report.runs_frame([run])) == (
        "Mean accuracy (%) with 95% confidence interval (Student-t interval, s with ddof=1) over 3 test episodes, "
        "5-way 1-shot, 15 queries per class; protonet inductive; episode seed 0; episode sets (sha256) CIFAR-FS "
        "test 1-shot unknown; input protocol transform unknown.")


def test_protocol_text_features_and_unknown_inputs(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7]}, preprocess={"protonet": "cl2n"})
    tidy = report.runs_frame([run])
    assert report.protocol_text(tidy).endswith(
        "; input protocol transform unknown; features: cl2n; base-class mean: the mean feature of the train (base) "
        "split.")
    h = episodes_hash("cifar-fs", "test", 5, 1, 15, 3, 0)[:8]
    assert report.protocol_text(tidy.drop(columns=["input_protocol", "preprocess"])).endswith(
        f"episode sets (sha256) CIFAR-FS test 1-shot {h}; input protocol unknown.")


# ---------------------------------------------------------------- tables


def test_latex_header_lines(pair):
    lines = report.make_table(list(pair)).splitlines()
    assert lines[:2] == [r"\begin{table}[t]", r"\centering"]
    at = lines.index(r"\toprule")
    assert lines[at + 1:at + 4] == [r" & \multicolumn{2}{c}{CIFAR-FS} \\", r"Model & 1-shot & 5-shot \\", r"\midrule"]


def test_two_splits_of_a_dataset_are_two_columns(tmp_path):
    run = make_run(tmp_path / "a", {KEY1: [0.5, 0.6], ("cifar-fs", "val", 5, 1, 15, "protonet"): [0.7, 0.8]})
    md = report.make_table([run], fmt="markdown")
    assert md.splitlines()[0] == "| Model | CIFAR-FS (test) 1-shot | CIFAR-FS (val) 1-shot |"


def test_make_table_keeps_only_the_datasets_asked(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6], ("fc100", 1, "protonet"): [0.7, 0.8]})
    assert report.make_table([run], fmt="markdown", datasets=["fc100"]).splitlines()[0] == "| Model | FC100 1-shot |"


def test_table_errors_name_their_flag(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6], ("cifar-fs", 1, "tim"): [0.5, 0.6], ("fc100", 1, "tim"): [0.5, 0.6]})
    with pytest.raises(ConfigError, match=_exact("--aggregate mode: unknown rule; use one of: median, mean")):
        report.make_table([run], aggregate="mode")
    with pytest.raises(ConfigError, match=_exact(
            "--methods / --datasets: no run holds a result for those methods on those datasets")):
        report.make_table([run], methods=[])  # every name given must exist, so only an empty list gets here
    with pytest.raises(ConfigError, match=_exact(
            "--label foo=X: foo is neither one of the runs given nor a dataset (CIFAR-FS, FC100) or method "
            "(protonet, tim) of them; use RUN=TEXT for a row, DATASET=TEXT or METHOD=TEXT to rename one for print")):
        report.make_table([run], labels={"foo": "X"})


def test_table_json_schema_dagger_and_tests_text(tmp_path):
    a, b = borderline_pair(1e-3)
    ce = make_run(tmp_path / "ce", {K1: b})
    clce = make_run(tmp_path / "clce", {K1: a}, loss="clce")
    doc = json.loads(report.make_table([clce, ce], fmt="json", baseline=ce))
    assert list(doc) == ["format", "format_version", "caption", "aggregate", "alpha", "baseline", "tests", "holm",
                         "n_tests", "literature", "rows", "skipped"]
    assert doc["tests"] == ("two-sided paired t-test (scipy.stats.ttest_rel) of each cell against the baseline's, "
                            "seed pair by seed pair, on identical episodes")
    long_columns = ["row", "column", "label", "reported", "source", "note", "dataset", "split", "ways", "shots",
                    "queries", "method", "mean", "ci95", "n_episodes", "n_seeds", "seeds", "seed_means", "seed_ci95",
                    "seed_min", "seed_max", "seed_sd", "aggregate", "ci_seeds", "best", "dagger", "cell",
                    "episodes_sha256", "significance", "diff_vs_baseline", "p_t", "p_t_holm"]
    assert [list(r) for r in doc["rows"]] == [long_columns] * 2
    assert [(r["row"], r["significance"], r["dagger"]) for r in doc["rows"]] == [
        ("resnet12 (clce)", "better", True), ("resnet12 (ce)", "baseline", False)]
    assert doc["rows"][0]["p_t"] == [pytest.approx(1e-3, rel=1e-6)]
    header = report.make_table([clce, ce], fmt="csv-long").splitlines()[0]
    assert header == ",".join(long_columns)


# ---------------------------------------------------------------- literature rows


def _literature(tmp_path, lines):
    (tmp_path / "lit.json").write_text(FIXTURE.with_suffix(".json").read_text())
    (tmp_path / "lit.csv").write_text("source_key,method,backbone,dataset,ways,shots,mean,ci95,note\n"
                                      + "".join(f"literature_demo,{ln}\n" for ln in lines))
    return tmp_path / "lit.csv"


def test_literature_rows_need_the_same_ways(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    lit = _literature(tmp_path, ["MethodX,ResNet-12,CIFAR-FS,5,1,99.50,0.20,", "MethodW,Conv-4,CIFAR-FS,10,1,40.00,0.50,"])
    md = report.make_table([run], fmt="markdown", with_literature=lit)
    assert [ln.split(" | ")[0] for ln in md.split("\n\n")[0].splitlines()[2:]] == [
        "| resnet12 (ce)", "| MethodX, ResNet-12 (reported)"]


def test_two_reported_rows_in_one_cell_are_refused(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    lit = _literature(tmp_path, ["MethodX,ResNet-12,CIFAR-FS,5,1,99.50,0.20,a", "MethodX,ResNet-12,CIFAR-FS,5,1,98,,b"])
    with pytest.raises(ConfigError, match=_exact(
            f"{lit}: two reported rows fall in one table cell (MethodX, ResNet-12 (reported), CIFAR-FS 1-shot); "
            "tell them apart by method or backbone")):
        report.make_table([run], with_literature=lit)


def test_literature_records_keep_note_source_and_no_seed_count(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6], K5: [0.6, 0.7]})
    doc = json.loads(report.make_table([run], fmt="json", with_literature=FIXTURE))
    assert [(r["row"], r["column"], r["source"], r["note"], r["n_seeds"]) for r in doc["rows"]] == [
        ("resnet12 (ce)", "CIFAR-FS 1-shot", None, "", 1),
        ("resnet12 (ce)", "CIFAR-FS 5-shot", None, "", 1),
        ("MethodX, ResNet-12 (reported)", "CIFAR-FS 1-shot", "literature_demo", "", None),
        ("MethodX, ResNet-12 (reported)", "CIFAR-FS 5-shot", "literature_demo", "", None),
        ("MethodY, ViT-S (reported)", "CIFAR-FS 1-shot", "literature_demo", "no CI printed", None),
    ]
    # the frame every format renders from: ours have no source, the published rows no seed count
    t = report._table([run], None, None, None, None, "median", FIXTURE, None, None)
    assert "XXsourceXX" not in t.tidy and "XXn_seedsXX" not in t.tidy
    assert t.tidy["source"].tolist() == [None, None, "literature_demo", "literature_demo", "literature_demo"]
    assert t.tidy["n_seeds"].tolist() == [1, 1, None, None, None]


# ---------------------------------------------------------------- table tests against the baseline


def test_table_baseline_tests_of_short_cells_mixed_rows_and_unpaired_rows(tmp_path):
    """Cells of two episodes are t-tested, cells of one are not (p NaN, outside the Holm family); a row
    above the baseline in one seed pair and below it in the other is "mixed"; a row sharing no seed is
    skipped with the message naming --baseline. Accuracies are binary fractions: exact differences."""
    ce = {s: {K1: [0.5 + s / 16, 0.625 + s / 16], ("fc100", 1, "protonet"): [0.375 + s / 16]} for s in (0, 1)}
    up = [0.125, 0.25]  # clce - ce on CIFAR-FS, both seeds; +0.125 on FC100
    clce = {s: {K1: [x + d for x, d in zip(ce[s][K1], up, strict=True)],
                ("fc100", 1, "protonet"): [0.5 + s / 16]} for s in (0, 1)}
    sup = {0: {K1: [x + 0.25 for x in ce[0][K1]]}, 1: {K1: [x - 0.125 for x in ce[1][K1]]}}  # p = 0 both ways
    ce_runs = make_seed_runs(tmp_path, "ce", ce)
    runs = [*make_seed_runs(tmp_path, "clce", clce, loss="clce"), *make_seed_runs(tmp_path, "sup", sup, loss="supcon"),
            *make_seed_runs(tmp_path, "o", {5: {K1: [0.5, 0.6]}, 6: {K1: [0.5, 0.6]}}, loss="other"), *ce_runs]
    doc = json.loads(report.make_table(runs, fmt="json", baseline=ce_runs[0]))
    p_clce = scipy.stats.ttest_rel(clce[0][K1], ce[0][K1]).pvalue  # t = 3 on 1 df: 0.2048
    assert p_clce == pytest.approx(0.20483276469913364, rel=1e-12)
    holm = holm_loop([p_clce, p_clce, 0.0, 0.0])
    got = [(r["row"], r["column"], r["significance"], r["dagger"], r["p_t"], r["p_t_holm"], r["diff_vs_baseline"])
           for r in doc["rows"]]
    assert got == [
        ("resnet12 (clce)", "CIFAR-FS 1-shot", "n.s.", False, [pytest.approx(p_clce, rel=1e-12)] * 2,
         [pytest.approx(holm[0], rel=1e-12)] * 2, [0.1875, 0.1875]),
        ("resnet12 (clce)", "FC100 1-shot", "n.s.", False, [None, None], [None, None], [0.125, 0.125]),
        ("resnet12 (supcon)", "CIFAR-FS 1-shot", "mixed", False, [0.0, 0.0], [0.0, 0.0], [0.25, -0.125]),
        ("resnet12 (other)", "CIFAR-FS 1-shot", None, False, None, None, None),
        ("resnet12 (ce)", "CIFAR-FS 1-shot", "baseline", False, None, None, None),
        ("resnet12 (ce)", "FC100 1-shot", "baseline", False, None, None, None),
    ]
    assert doc["n_tests"] == 4
    assert doc["skipped"] == [{
        "row": "resnet12 (other)", "column": "CIFAR-FS 1-shot", "a": "resnet12 (other)", "b": "resnet12 (ce)",
        "run_a": None, "run_b": None, "dataset": "cifar-fs", "split": "test", "ways": 5, "shots": 1, "queries": 15,
        "method": "protonet", "reason": "no_shared_seed",
        "message": "--baseline: 'resnet12 (other)' vs 'resnet12 (ce)', cifar-fs test 5-way 1-shot 15-query protonet: "
                   "the rows share no fine-tuning seed (seeds 5, 6 vs 0, 1); fine-tune both with the same --seeds to "
                   "compare them seed by seed"}]


def test_rows_follow_the_methods_asked_in_a_stable_order(tmp_path):
    """``methods`` orders the rows by method; within one method the rows keep the order of the runs, and
    the records of a row keep the column order (stable sorts: twenty interleaved cells are enough for an
    unstable one to reorder them)."""
    losses = ["l0", "l1", "l2", "l3", "l4"]
    runs = [make_run(tmp_path / loss, {K1: [0.5, 0.6], K5: [0.6, 0.7], ("cifar-fs", 1, "tim"): [0.6, 0.7],
                                       ("cifar-fs", 5, "tim"): [0.7, 0.8]}, loss=loss)
            for loss in losses]
    md = report.make_table(runs, fmt="markdown", methods=["tim", "protonet"])
    rows = [line.split(" | ")[0].removeprefix("| ") for line in md.split("\n\n")[0].splitlines()[2:]]
    assert rows == [f"resnet12 ({loss}), {m}" for m in ("tim", "protonet") for loss in losses]
    doc = json.loads(report.make_table(runs, fmt="json", methods=["tim", "protonet"]))
    assert [(r["row"], r["column"]) for r in doc["rows"]] == [  # the records follow the rows, then the columns
        (row, f"CIFAR-FS {k}-shot") for row in rows for k in (1, 5)]


def test_two_renamed_methods_in_one_cell_name_the_first_cell(tmp_path):
    """The message names the first cell two results fall in, in the order of the results."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6], ("fc100", 1, "protonet"): [0.5, 0.6],
                                    ("cifar-fs", 1, "tim"): [0.6, 0.7], ("fc100", 1, "tim"): [0.6, 0.7]})
    with pytest.raises(ConfigError, match=_exact(
            "two results fall in one table cell (resnet12 (ce), X, CIFAR-FS 1-shot); give the runs distinct --label "
            "values")):
        report.make_table([run], labels={"protonet": "X", "tim": "X"})


def test_literature_records_carry_the_published_episode_count(tmp_path):
    """A source's ``n_episodes`` reaches the records of its rows (null where the source gives none), and
    our rows keep an integer count beside them."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    (tmp_path / "lit.json").write_text(FIXTURE.with_suffix(".json").read_text())
    (tmp_path / "lit.csv").write_text("source_key,method,backbone,dataset,ways,shots,n_episodes,mean,ci95\n"
                                      "literature_demo,MethodX,ResNet-12,CIFAR-FS,5,1,600,70.00,0.20\n"
                                      "literature_demo,MethodY,Conv-4,CIFAR-FS,5,1,,60.00,0.30\n")
    doc = json.loads(report.make_table([run], fmt="json", with_literature=tmp_path / "lit.csv"))
    assert [(r["row"], repr(r["n_episodes"])) for r in doc["rows"]] == [  # 2, not 2.0, beside a missing count
        ("resnet12 (ce)", "2"), ("MethodX, ResNet-12 (reported)", "600"), ("MethodY, Conv-4 (reported)", "None")]


def test_two_reported_rows_in_one_cell_name_the_first_cell(tmp_path):
    """Of two clashes, the message names the first cell in the order of the source's rows."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6], K5: [0.6, 0.7]})
    lit = _literature(tmp_path, ["MethodX,ResNet-12,CIFAR-FS,5,1,70,0.2,a", "MethodX,ResNet-12,CIFAR-FS,5,5,80,0.2,a",
                                 "MethodX,ResNet-12,CIFAR-FS,5,1,71,0.2,b", "MethodX,ResNet-12,CIFAR-FS,5,5,81,0.2,b"])
    with pytest.raises(ConfigError, match=_exact(
            f"{lit}: two reported rows fall in one table cell (MethodX, ResNet-12 (reported), CIFAR-FS 1-shot); "
            "tell them apart by method or backbone")):
        report.make_table([run], with_literature=lit)


def test_long_csv_writes_large_integer_seeds_whole(tmp_path):
    """Lists of integers (seeds) are written as integers; only floats get 10 significant digits."""
    big = 12345678901
    runs = make_seed_runs(tmp_path, "ce", {0: {K1: [0.5, 0.6]}, big: {K1: [0.5, 0.7]}})
    long = report.make_table(runs, fmt="csv-long").splitlines()
    record = dict(zip(long[0].split(","), long[1].split(","), strict=True))
    assert (record["seeds"], record["ci_seeds"], record["seed_means"]) == (f"0;{big}", f"0;{big}", "0.55;0.6")


def test_format_compare_prints_ways_when_they_vary(tmp_path):
    """With 5-way and 10-way results the first table gets a ``ways`` column, ``5-way`` / ``10-way``."""
    k10 = ("cifar-fs", "test", 10, 1, 15, "protonet")
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6, 0.7], k10: [0.4, 0.5, 0.6]})
    b = make_run(tmp_path / "b", {K1: [0.4, 0.6, 0.7], k10: [0.3, 0.5, 0.6]}, loss="clce")
    lines = report.format_compare(report.compare([a, b])).splitlines()
    header = lines[0].split()
    assert header[:6] == ["a", "b", "dataset", "ways", "shots", "method"]
    assert [line.split()[header.index("ways") + 2] for line in lines[1:3]] == ["5-way", "10-way"]  # labels: 2 words


def test_seed_summary_keeps_the_order_of_the_comparisons(tmp_path):
    """One row per row pair x key in the order :func:`compare` lists them (not sorted by label); an empty
    comparison sums up to an empty frame that still has the key columns."""
    zz = make_run(tmp_path / "zz", {K1: [0.5, 0.6, 0.7]}, loss="zz")
    aa = make_run(tmp_path / "aa", {K1: [0.4, 0.6, 0.7]}, loss="aa")
    base = make_run(tmp_path / "base", {K1: [0.4, 0.5, 0.7]})
    summary = report.seed_summary(report.compare([zz, aa], baseline=base))
    assert summary["a"].tolist() == ["resnet12 (zz)", "resnet12 (aa)"]
    other = make_run(tmp_path / "other", {K5: [0.5, 0.6, 0.7]}, loss="clce")
    empty = report.compare([base, other])  # no shared cell: nothing compared
    assert empty.empty
    out = report.seed_summary(empty)
    assert out.empty and list(out.columns) == ["a", "b", *report.KEY]


def test_seed_summary_mean_rule_on_both_sides_and_mixed_verdict(seeds, tmp_path):
    """``aggregate="mean"`` sums mean_a and mean_b up by the mean (here not the median); a row pair above
    in one seed pair and below in the other (both significant) is "mixed"."""
    ce, clce = seeds
    per_seed = {s: (sum(BASE[i] + 0.01 * s + DIFFS[s][i] for i in range(4)) / 4) for s in range(3)}  # clce
    for runs, side in (([*clce, *ce], "mean_a"), ([*ce, *clce], "mean_b")):
        row = report.seed_summary(report.compare(runs, aggregate="mean")).iloc[0]
        assert row[side] == pytest.approx(statistics.mean(per_seed.values()), abs=1e-12)
        assert statistics.mean(per_seed.values()) != pytest.approx(statistics.median(per_seed.values()), abs=1e-3)
    b = {s: {K1: [0.5, 0.625, 0.75, 0.5]} for s in (0, 1)}
    a = {0: {K1: [x + 0.25 for x in b[0][K1]]}, 1: {K1: [x - 0.125 for x in b[1][K1]]}}  # constant: p = 0
    df = report.compare([*make_seed_runs(tmp_path, "up", a, loss="up"), *make_seed_runs(tmp_path, "b", b)])
    row = report.seed_summary(df).iloc[0]
    assert (row["n_better_0.05"], row["n_worse_0.05"], row["verdict_0.05"]) == (1, 1, "mixed")


def test_even_seed_row_ci_follows_the_runs_ci_method(tmp_path):
    """Two seeds of a row evaluated with ``--ci normal``: the cell's ± is the normal interval of the
    per-episode accuracy averaged over both seeds (z, not t)."""
    acc = {0: [0.5, 0.6, 0.7, 0.6], 1: [0.6, 0.6, 0.8, 0.7]}
    runs = make_seed_runs(tmp_path, "ce", {s: {K1: a} for s, a in acc.items()}, ci_method="normal")
    avg = [(x + y) / 2 for x, y in zip(acc[0], acc[1], strict=True)]
    half = scipy.stats.norm.ppf(0.975) * statistics.stdev(avg) / 2  # sqrt(4 episodes)
    cell = report.groups_frame(runs).iloc[0]
    assert (cell["aggregate"], cell["ci_seeds"], cell["ci_method"]) == ("median", (0, 1), "normal")
    assert cell["ci95"] == pytest.approx(half, rel=1e-12)


def test_groups_frame_single_seed_row_paths_and_no_warning(tmp_path):
    """A one-seed row: ``runs`` / ``run`` are its folder, ``seed_sd`` is NaN without numpy's
    degrees-of-freedom warning; a two-seed row lists both folders by seed."""
    one = make_run(tmp_path / "one", {K1: [0.5, 0.6]}, loss="clce")
    two = make_seed_runs(tmp_path, "ce", {1: {K1: [0.5, 0.7]}, 0: {K1: [0.4, 0.6]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = report.groups_frame([one, *two])
    assert df["runs"].tolist() == [(str(one),), tuple(str(p) for p in two)]
    assert df["run"].tolist() == [str(one), str(two[0])]
    assert math.isnan(df["seed_sd"].iloc[0]) and df["seed_sd"].iloc[1] == pytest.approx(0.0707106781, rel=1e-9)


def test_runs_without_a_transductive_flag_are_inductive_and_no_runs_is_refused(tmp_path):
    """Results written before ``transductive`` was recorded count as inductive in both frames; no runs
    at all is a one-line error."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    _edit_summary(run, lambda s: [r.pop("transductive") for r in s["results"]])
    assert report.groups_frame([run])["transductive"].tolist() == [False]
    assert report.runs_frame([run])["transductive"].tolist() == [False]
    with pytest.raises(ConfigError, match=_exact("no runs given; pass at least one run folder")):
        report.runs_frame([])


# ---------------------------------------------------------------- labels, seeds and messages from the sampled survivors


def test_auto_labels_without_a_loss_and_by_preprocess_flag(tmp_path):
    """Configurations without a loss are told apart as ``arch (key=value)``; the ``--preprocess`` flag of
    the run's config is one of the entries that split a row (``default`` when it was not given)."""
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6]}, arch="vit", loss=None, checkpoint_meta={"lam": 0.5})
    b = make_run(tmp_path / "b", {K1: [0.5, 0.6]}, arch="vit", loss=None, checkpoint_meta={"lam": 0.25})
    assert [g.label for g in report.seed_groups([a, b])] == ["vit (lam=0.5)", "vit (lam=0.25)"]
    c = make_run(tmp_path / "c", {K1: [0.5, 0.6]})
    d = make_run(tmp_path / "d", {K1: [0.5, 0.6]})
    _edit_summary(d, lambda s: s["config"].update(preprocess="cl2n"))
    assert [g.label for g in report.seed_groups([c, d])] == ["resnet12 (ce, preprocess=default)",
                                                           "resnet12 (ce, preprocess=cl2n)"]


def test_runs_frame_adds_the_path_where_folder_names_clash(tmp_path):
    """Two runs with the same automatic label and the same folder name in different places: the
    ``label [folder]`` labels still clash, so each also carries the run's path."""
    x, y = (make_run(tmp_path / d / "r", {K1: [0.5, 0.6]}) for d in ("x", "y"))
    assert report.runs_frame([x, y])["label"].tolist() == [f"resnet12 (ce) [r] [{x}]", f"resnet12 (ce) [r] [{y}]"]


def test_seeds_with_different_ci_methods_are_refused(tmp_path):
    runs = [make_run(tmp_path / f"s{s}", {K1: [0.5, 0.6]}, finetune_seed=s, ci_method=m)
            for s, m in ((0, "t"), (1, "normal"))]
    with pytest.raises(ConfigError, match=_exact(
            "the runs of row 'resnet12 (ce)' use different CI methods (normal, t); re-run eval of every seed with "
            "one --ci")):
        report.seed_groups(runs)


def test_no_runs_and_alpha_zero_are_refused():
    with pytest.raises(ConfigError, match=_exact("no runs given; pass at least one run folder")):
        report.seed_groups([])
    with pytest.raises(ConfigError, match=_exact("alpha=0.0: must lie strictly between 0 and 1, e.g. 0.05")):
        report.compare([], alpha=(0,))


def test_seed_pairs_of_a_row_against_a_single_seeded_run(seeds):
    """Two seeds against one seeded run: the seed they share is paired, not the first seed."""
    ce, clce = (tuple(report.load_run(p) for p in row) for row in seeds)
    assert report.seed_pairs([clce[0], clce[1]], [ce[1]]) == [(clce[1], ce[1])]


def test_unknown_dataset_columns_come_after_the_known_ones_with_splits(tmp_path):
    """Column order with two splits: known datasets in their fixed order first (by the name before
    " (split)"), then others by name -- "Aaa" after FC100 although it sorts first."""
    keys = [(d, s, 5, 1, 15, "protonet") for d in ("Aaa", "fc100") for s in ("test", "val")]
    run = make_run(tmp_path / "a", dict.fromkeys(keys, [0.5, 0.6]))
    assert report.make_table([run], fmt="markdown").splitlines()[0] == (
        "| Model | FC100 (test) 1-shot | FC100 (val) 1-shot | Aaa (test) 1-shot | Aaa (val) 1-shot |")


def test_compare_skip_names_the_run_without_an_episode_hash(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    b = make_run(tmp_path / "b", {K1: [0.5, 0.7]}, loss="clce")
    _edit_summary(b, lambda s: s["results"][0].pop("episodes_sha256"))
    (skip,) = report.compare([a, b]).attrs["skipped"]
    assert (skip["reason"], skip["message"]) == ("no_episodes_sha256", (
        f"{b}: no episodes_sha256 for cifar-fs test 5-way 1-shot 15-query protonet, so a paired comparison cannot "
        "check the episodes are the same; re-run eval with this version"))


def test_markdown_legend_keeps_the_baseline_label_as_it_is(tmp_path):
    """Only LaTeX escapes the baseline's label in the legend."""
    base = make_run(tmp_path / "base", {K1: [0.5, 0.6]})
    other = make_run(tmp_path / "o", {K1: [0.5, 0.7]}, loss="clce")
    md = report.make_table([other, base], fmt="markdown", baseline=base, labels={str(base): "CE_1 & co"})
    assert "mean above / below the baseline (CE_1 & co) by a two-sided" in md


def test_protocol_text_without_an_episode_seed(tmp_path):
    """A run whose config lacks the episode seed: ``episode seed unknown``, not ``None``."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    _edit_summary(run, lambda s: s["config"].pop("seed"))
    assert "; episode seed unknown;" in report.protocol_text(report.runs_frame([run]))


def test_compare_json_keeps_the_aggregate_and_defaults_without_attrs(seeds, tmp_path):
    ce, clce = seeds
    df = report.compare([*clce, *ce], aggregate="mean")
    report.write_compare_json(df, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["aggregate"] == "mean"
    df.attrs.clear()
    report.write_compare_json(df, tmp_path / "d.json")
    doc = json.loads((tmp_path / "d.json").read_text())
    assert (doc["alpha"], doc["level"], doc["baseline"], doc["aggregate"], doc["skipped"]) == ([], None, None,
                                                                                              "median", [])


def test_table_and_protocol_with_one_run_lacking_its_episode_hash(tmp_path):
    """One run with an episode hash and one without: the protocol lists the known hash (pandas 3 stores
    the missing one as NaN in a string column, which once crashed with a TypeError)."""
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    b = make_run(tmp_path / "b", {K1: [0.5, 0.7]}, loss="clce")
    _edit_summary(b, lambda s: s["results"][0].pop("episodes_sha256"))
    h = episodes_hash("cifar-fs", "test", 5, 1, 15, 2, 0)[:8]
    assert f"; episode sets (sha256) CIFAR-FS test 1-shot {h};" in report.protocol_text(report.runs_frame([a, b]))
    assert f"CIFAR-FS test 1-shot {h};" in report.make_table([a, b], fmt="markdown")


# ---------------------------------------------------------------- load_run, runs_frame, protocol, seed order


def test_load_run_error_messages(tmp_path):
    """Each broken run folder gets its one-line message, naming the file."""
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    summary = run / "summary.json"
    with pytest.raises(DataError, match=_exact(
            f"{run / 'per_episode.csv'}: is a file, not a run folder; pass the --out folder of `fewshot-bench eval`")):
        report.load_run(run / "per_episode.csv")
    good = summary.read_text()
    cases = [
        (lambda s: s["results"][0].pop("mean"), f"{summary}: results[0] lacks or mangles 'mean'; re-run eval"),
        (lambda s: s["results"].append(dict(s["results"][0])),
         f"{summary}: results list cifar-fs test 5-way 1-shot 15-query protonet twice; re-run eval"),
        (lambda s: s["results"].clear(), f"{summary}: no results; the run is empty or incomplete, re-run eval"),
    ]
    for edit, message in cases:
        summary.write_text(good)
        _edit_summary(run, edit)
        with pytest.raises(DataError, match=_exact(message)):
            report.load_run(run)
    summary.write_text("{")
    with pytest.raises(DataError, match="^" + re.escape(f"{summary}: unreadable JSON (") + r".+"
                       + re.escape("); re-run eval to rewrite the run folder") + "$"):
        report.load_run(run)


def test_runs_frame_values_of_one_run(tmp_path):
    """The run path, the sample standard deviation, the CI method and the input protocol of each result."""
    acc = [0.5, 0.6, 0.8]
    run = make_run(tmp_path / "a", {K1: acc}, ci_method="normal",
                   protocols={"cifar-fs": {"transform": "rfs-cifar", "image_size": 32, "pool": "avg"}})
    row = report.runs_frame([run]).iloc[0]
    assert (row["run"], row["ci_method"], row["input_protocol"]) == (str(run), "normal", "rfs-cifar 32 px, avg pool")
    assert row["std"] == pytest.approx(statistics.stdev(acc), rel=1e-12)


def test_protocol_text_names_the_ci_method_and_survives_a_missing_seed(tmp_path):
    """``normal interval`` for normal CIs, ``mixed interval`` when the rows differ; a run without an
    episode seed beside one with seed 0 still prints the known seed."""
    t = make_run(tmp_path / "t", {K1: [0.5, 0.6]})
    normal = make_run(tmp_path / "n", {K1: [0.5, 0.7]}, loss="clce", ci_method="normal")
    prefix = "Mean accuracy (%) with 95% confidence interval ({}, s with ddof=1)"
    assert report.protocol_text(report.runs_frame([normal])).startswith(prefix.format("normal interval"))
    assert report.protocol_text(report.runs_frame([t, normal])).startswith(prefix.format("mixed interval"))
    _edit_summary(normal, lambda s: s["config"].pop("seed"))
    assert "; episode seed 0" in report.protocol_text(report.runs_frame([t, normal]))


def test_seed_group_runs_are_ordered_by_seed_and_seedless_label_clash_is_refused(tmp_path):
    """Runs given as seeds 1, 0 form a row ordered 0, 1; an explicit label shared with a seedless run is
    refused with a message naming it."""
    s1, s0 = (make_run(tmp_path / f"s{s}", {K1: [0.5, 0.6]}, finetune_seed=s) for s in (1, 0))
    (group,) = report.seed_groups([s1, s0])
    assert group.seeds == (0, 1) and [r.path for r in group.runs] == [s0, s1]
    seedless = make_run(tmp_path / "x", {K1: [0.5, 0.6]}, finetune_seed=None)
    with pytest.raises(ConfigError, match=_exact(
            f"--label: two runs share the label 'L' but {seedless} has no fine-tuning seed in its checkpoint "
            "metadata; only seeds of one configuration may share a label, give each other run its own label")):
        report.seed_groups([s0, seedless], {str(s0): "L", str(seedless): "L"})


def test_seeds_written_before_ci_method_count_as_t(tmp_path):
    """A seed whose results lack ``ci_method`` (older eval) used the t interval: it groups with a seed
    that says ``t``."""
    s0, s1 = (make_run(tmp_path / f"s{s}", {K1: [0.5, 0.6]}, finetune_seed=s) for s in (0, 1))
    _edit_summary(s0, lambda s: [r.pop("ci_method") for r in s["results"]])
    (group,) = report.seed_groups([s0, s1])
    assert group.seeds == (0, 1)


@pytest.mark.parametrize("sign", [1, -1])
def test_table_p_exactly_alpha_is_not_a_mark(tmp_path, sign):
    """The marks need adjusted p < 0.05 (strict): a single test at p == 0.05 exactly is "n.s."."""
    a, b = borderline_pair(0.05, n=14, base=0.625, sign=sign)
    base = make_run(tmp_path / "base", {K1: b})
    other = make_run(tmp_path / "o", {K1: a}, loss="clce")
    rows = json.loads(report.make_table([other, base], fmt="json", baseline=base))["rows"]
    if rows[0]["p_t_holm"] != [0.05]:
        pytest.skip("this scipy does not give p == 0.05 exactly for the borderline pair")
    assert (rows[0]["significance"], rows[0]["dagger"]) == ("n.s.", False)


def test_seeds_with_other_method_parameters_or_episodes_are_refused_exactly(tmp_path):
    s0, s1 = (make_run(tmp_path / f"s{s}", {K1: [0.5, 0.6]}, finetune_seed=s) for s in (0, 1))
    _edit_summary(s1, lambda s: s["results"][0].update(method_params={"k": 2}))
    _edit_summary(s0, lambda s: s["results"][0].update(method_params={"k": 1}))
    with pytest.raises(ConfigError, match=_exact(
            "the seeds of row 'resnet12 (ce)' were evaluated with different method parameters for cifar-fs test "
            "5-way 1-shot 15-query protonet ({'k': 1} vs {'k': 2}); give them different --label values or evaluate "
            "every seed alike")):
        report.seed_groups([s0, s1])
    _edit_summary(s1, lambda s: s["results"][0].update(method_params={"k": 1}, episodes_sha256="b" * 64))
    _edit_summary(s0, lambda s: s["results"][0].update(episodes_sha256="a" * 64))
    with pytest.raises(EpisodeError, match=_exact(
            f"the seeds of row 'resnet12 (ce)' were evaluated on different episodes for cifar-fs test 5-way 1-shot "
            f"15-query protonet ({s0}: aaaaaaaa, {s1}: bbbbbbbb); evaluate every seed on the same episode file")):
        report.seed_groups([s0, s1])


def test_auto_labels_over_several_buckets(tmp_path):
    """Buckets of one run and buckets whose configurations agree keep the plain label; later buckets still
    get theirs: every differing entry in CONFIG_KEYS order, ``?`` for one a run lacks, the metadata's
    arch (not the checkpoint entry's), and dataset-derived entries (image size) between runs fine-tuned
    on the same dataset."""
    runs = [make_run(tmp_path / "single", {K1: [0.5, 0.6]}, loss="supcon"),
            *make_seed_runs(tmp_path, "ce", {0: {K1: [0.5, 0.6]}, 1: {K1: [0.5, 0.7]}}),
            make_run(tmp_path / "w1", {K1: [0.5, 0.6]}, loss="clce",
                     checkpoint_meta={"arch": "wide", "lam": 0.5, "temperature": 0.1}),
            make_run(tmp_path / "w2", {K1: [0.5, 0.6]}, loss="clce", checkpoint_meta={"arch": "wide", "temperature": 0.2}),
            make_run(tmp_path / "i1", {K1: [0.5, 0.6]}, loss="sim", checkpoint_meta={"image_size": 32}),
            make_run(tmp_path / "i2", {K1: [0.5, 0.6]}, loss="sim", checkpoint_meta={"image_size": 84})]
    assert [g.label for g in report.seed_groups(runs)] == [
        "resnet12 (supcon)", "resnet12 (ce)", "wide (clce, temperature=0.1, lam=0.5)",
        "wide (clce, temperature=0.2, lam=?)", "resnet12 (sim, image_size=32)", "resnet12 (sim, image_size=84)"]


def test_auto_labels_take_the_backbone_when_the_metadata_has_no_arch(tmp_path):
    runs = [make_run(tmp_path / f"b{lam}", {K1: [0.5, 0.6]}, loss="clce",
                     checkpoint_meta={"arch": None, "backbone": "bb", "lam": lam}) for lam in (0.5, 0.25)]
    assert [g.label for g in report.seed_groups(runs)] == ["bb (clce, lam=0.5)", "bb (clce, lam=0.25)"]


@pytest.mark.parametrize(("protocol", "text"), [
    ({"transform": "imagenet", "pool": "none"}, "imagenet native size, flattened"),
    ({"transform": "imagenet", "image_size": 84, "resize": 92, "crop": True, "pool": "gem"},
     "imagenet 84 px (resize 92 + center crop), model pooling"),
    ({"transform": "imagenet", "image_size": 84, "resize": 84}, "imagenet 84 px (resize 84), model pooling"),
])
def test_input_protocol_text_geometry_and_pooling(protocol, text):
    assert report.input_protocol_text({"protocols": {"fc100": protocol}}, "fc100") == text


def test_features_text_one_chain_per_method(tmp_path):
    """Two rows that agree per method: ``features: protonet: none; tim: l2n``, no base-class note (nothing
    centred)."""
    runs = [make_run(tmp_path / loss, {K1: [0.5, 0.6], ("cifar-fs", 1, "tim"): [0.6, 0.7]}, loss=loss,
                     preprocess={"protonet": "none", "tim": "l2n"}) for loss in ("ce", "clce")]
    assert report.protocol_text(report.runs_frame(runs)).endswith(
        "; input protocol transform unknown; features: protonet: none; tim: l2n.")


# ---------------------------------------------------------------- survivors of the seed-4 sample


def test_unknown_dataset_and_format_messages_name_their_flag(tmp_path):
    run = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    with pytest.raises(ConfigError, match=_exact(
            "--datasets imagenet: no result of the runs has that dataset; they hold CIFAR-FS")):
        report.make_table([run], datasets=["imagenet"])
    with pytest.raises(ConfigError, match=_exact(
            "--format xls: unknown table format; use one of: latex, markdown, csv, csv-long, json (md for markdown)")):
        report.make_table([run], fmt="xls")


def test_aggregate_seeds_of_nothing_is_refused():
    with pytest.raises(ConfigError, match=_exact("no seeds to aggregate")):
        report.aggregate_seeds([])


def test_paired_accuracies_refuses_different_episodes_with_the_message(tmp_path):
    a = make_run(tmp_path / "a", {K1: [0.5, 0.6]})
    b = make_run(tmp_path / "b", {K1: [0.5, 0.7]}, seed=1)
    ra, rb = report.load_run(a), report.load_run(b)
    key = next(iter(ra.results))
    with pytest.raises(EpisodeError, match=_exact(report._episode_mismatch(ra, rb, key, key)[1])):
        report.paired_accuracies(ra, rb, key)
    assert "different episodes" in report._episode_mismatch(ra, rb, key, key)[1]


def test_find_runs_expands_double_star_recursively(tmp_path):
    deep = make_run(tmp_path / "x" / "y" / "run", {K1: [0.5, 0.6]})
    assert report.find_runs([str(tmp_path / "**" / "run")]) == [deep]
