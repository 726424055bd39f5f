"""fewshot_bench.report: behaviour the mutation run of report.py found unpinned (exact numbers, marks,
record schemas of the written JSON/CSV, and one-line error messages with their flags)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from fewshot_bench import report
from fewshot_bench.errors import ConfigError, EpisodeError

from runs import borderline_pair, episodes_hash, make_run, make_seed_runs

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
