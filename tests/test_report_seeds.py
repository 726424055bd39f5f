"""fewshot_bench.report over fine-tuning seeds (rows of several runs) and fewshot_bench.literature."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from fewshot_bench import literature, report, stats
from fewshot_bench.cli import main
from fewshot_bench.errors import ConfigError, DataError, EpisodeError

from runs import holm_loop, make_run, make_seed_runs

FIXTURE = Path(__file__).parent / "fixtures" / "literature_demo.csv"
KEY1 = ("cifar-fs", "test", 5, 1, 15, "protonet")
# three seeds with means 0.60, 0.62, 0.61 and different spreads (so their CIs differ)
SEED_ACC = {
    0: np.array([0.50, 0.70, 0.55, 0.65]),
    1: np.array([0.62, 0.62, 0.60, 0.64]),
    2: np.array([0.40, 0.80, 0.61, 0.63]),
}


def _t_half(x):
    """Literal 95% t half-width with ddof=1."""
    n = len(x)
    mean = sum(x) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    return scipy.stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)


@pytest.fixture
def three_seeds(tmp_path):
    return make_seed_runs(tmp_path, "clce", {s: {("cifar-fs", 1, "protonet"): a} for s, a in SEED_ACC.items()},
                          loss="clce")


@pytest.fixture
def groups(tmp_path):
    """CLCE and CE, seeds 0-2 each, on cifar-fs 1- and 5-shot, same episodes; CLCE +4 pp in every seed."""
    rng = np.random.default_rng(1)
    ce, clce = {}, {}
    for s in range(3):
        ce[s], clce[s] = {}, {}
        for shots in (1, 5):
            b = rng.binomial(75, 0.55 + 0.1 * (shots == 5) + 0.01 * s, size=60) / 75
            ce[s][("cifar-fs", shots, "protonet")] = b
            clce[s][("cifar-fs", shots, "protonet")] = np.clip(b + 0.04 + rng.normal(0, 0.02, 60), 0, 1)
    return (make_seed_runs(tmp_path, "ce", ce, loss="ce"), make_seed_runs(tmp_path, "clce", clce, loss="clce"),
            ce, clce)


# ---------------------------------------------------------------- aggregation rules


def test_aggregate_median_and_mean_literal():
    assert report.aggregate_seeds([0.60, 0.62, 0.61]) == (pytest.approx(0.61, abs=1e-15), (2,))
    value, idx = report.aggregate_seeds([0.60, 0.62, 0.67], "mean")
    assert value == pytest.approx(0.63, abs=1e-15) and idx == (0, 1, 2)
    assert report.aggregate_seeds([0.60, 0.62, 0.67])[0] == pytest.approx(0.62, abs=1e-15)
    # even number of seeds: the mean of the two middle ones, i.e. numpy's median
    value, idx = report.aggregate_seeds([0.60, 0.62, 0.61, 0.70])
    assert value == pytest.approx(0.615, abs=1e-15) == np.median([0.60, 0.62, 0.61, 0.70]) and idx == (1, 2)
    # ties: the earlier seed is the median one
    assert report.aggregate_seeds([0.5, 0.5, 0.5])[1] == (1,)
    with pytest.raises(ConfigError, match="--aggregate mode: unknown rule; use one of: median, mean"):
        report.aggregate_seeds([0.5], "mode")


def test_groups_frame_median_row(three_seeds):
    df = report.groups_frame(three_seeds)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["label"] == "resnet12 (clce)" and row["n_seeds"] == 3 and row["seeds"] == (0, 1, 2)
    assert row["mean"] == pytest.approx(0.61, abs=1e-12)
    assert row["ci_seeds"] == (2,)  # the median seed
    assert row["ci95"] == pytest.approx(_t_half(SEED_ACC[2]), abs=1e-12)
    assert row["seed_means"] == pytest.approx((0.60, 0.62, 0.61), abs=1e-12)
    assert row["seed_min"] == pytest.approx(0.60) and row["seed_max"] == pytest.approx(0.62)
    assert row["seed_sd"] == pytest.approx(0.01, abs=1e-12)  # sd of 0.60, 0.62, 0.61 (ddof=1)
    assert row["aggregate"] == "median" and row["n"] == 4


def test_groups_frame_mean_and_even_rules(three_seeds):
    row = report.groups_frame(three_seeds, aggregate="mean").iloc[0]
    avg = [(SEED_ACC[0][i] + SEED_ACC[1][i] + SEED_ACC[2][i]) / 3 for i in range(4)]
    assert row["mean"] == pytest.approx(0.61, abs=1e-12) and row["ci_seeds"] == (0, 1, 2)
    assert row["ci95"] == pytest.approx(_t_half(avg), abs=1e-12)
    two = report.groups_frame(three_seeds[:2]).iloc[0]  # seeds 0 and 1: median = mean of both
    avg2 = [(SEED_ACC[0][i] + SEED_ACC[1][i]) / 2 for i in range(4)]
    assert two["mean"] == pytest.approx(0.61, abs=1e-12) and two["ci_seeds"] == (0, 1)
    assert two["ci95"] == pytest.approx(_t_half(avg2), abs=1e-12)


def test_single_run_row_is_the_run(tmp_path):
    run = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): SEED_ACC[0]})
    row = report.groups_frame([run]).iloc[0]
    ci = stats.mean_ci(SEED_ACC[0])
    assert row["aggregate"] == "single" and row["n_seeds"] == 1 and math.isnan(row["seed_sd"])
    assert row["mean"] == pytest.approx(ci.mean) and row["ci95"] == pytest.approx(ci.ci)


# ---------------------------------------------------------------- grouping rules


def test_duplicate_seed_in_a_row_is_refused(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}
    a = make_run(tmp_path / "a", acc, finetune_seed=0)
    b = make_run(tmp_path / "b", acc, finetune_seed=0)
    with pytest.raises(ConfigError, match=r"share the row label 'resnet12 \(ce\)' and the fine-tuning seed 0 for "
                                          r"cifar-fs test 5-way 1-shot 15-query protonet; give different"):
        report.seed_groups([a, b])
    with pytest.raises(ConfigError, match="and the fine-tuning seed 0"):
        report.make_table([a, b])


def test_seeds_on_different_episodes_are_refused(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6, 0.7]}
    a = make_run(tmp_path / "a", acc, seed=0, finetune_seed=0)
    b = make_run(tmp_path / "b", acc, seed=1, finetune_seed=1)  # other episode seed
    with pytest.raises(EpisodeError, match="the seeds of row 'resnet12 \\(ce\\)' were evaluated on different "
                                           "episodes for cifar-fs test 5-way 1-shot"):
        report.groups_frame([a, b])


def test_one_seed_on_several_datasets_is_one_row(tmp_path):
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.6]})
    b = make_run(tmp_path / "b", {("fc100", 1, "protonet"): [0.4, 0.6]})
    md = report.make_table([a, b], fmt="markdown")
    assert "| resnet12 (ce) | **55.00±" in md and md.count("resnet12 (ce)") == 1
    with pytest.raises(ConfigError, match="got one row: all 2 runs belong to 'resnet12 \\(ce\\)' "
                                          "\\(fine-tuning seeds 0\\)"):
        report.compare([a, b])


def test_runs_without_seed_are_rows_of_their_own(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6]}
    a = make_run(tmp_path / "a", acc, finetune_seed=None)
    b = make_run(tmp_path / "b", acc, finetune_seed=None)
    assert [g.label for g in report.seed_groups([a, b])] == ["resnet12 (ce) [a]", "resnet12 (ce) [b]"]
    c = make_run(tmp_path / "c", acc, finetune_seed=1)
    with pytest.raises(ConfigError, match="--label: two runs share the label 'X' but .*b has no fine-tuning seed"):
        report.seed_groups([c, b], labels={str(c): "X", str(b): "X"})


def test_explicit_label_groups_seeds_and_auto_label_splits_configs(tmp_path):
    acc = {("cifar-fs", 1, "protonet"): [0.5, 0.6]}
    a = make_run(tmp_path / "a", acc, loss="clce", finetune_seed=0, checkpoint_meta={"lam": 0.5})
    b = make_run(tmp_path / "b", acc, loss="clce", finetune_seed=1, checkpoint_meta={"lam": 0.5})
    c = make_run(tmp_path / "c", acc, loss="clce", finetune_seed=0, checkpoint_meta={"lam": 0.9})
    groups = report.seed_groups([a, b, c])
    assert [(g.label, g.seeds) for g in groups] == [("resnet12 (clce, lam=0.5)", (0, 1)),
                                                    ("resnet12 (clce, lam=0.9)", (0,))]
    groups = report.seed_groups([a, c], labels={str(a): "CLCE", str(c): "CLCE*"})
    assert [g.label for g in groups] == ["CLCE", "CLCE*"]
    # loss_params (newer checkpoints) count too, and a hyper-parameter that differs only between
    # fine-tuning datasets (image size) does not split the row
    d = make_run(tmp_path / "d", {("fc100", 1, "protonet"): [0.5, 0.6]}, loss="clce", finetune_seed=0,
                 checkpoint_meta={"loss_params": {"lam": 0.5}, "image_size": 84, "dataset": "fc100"})
    e = make_run(tmp_path / "e", acc, loss="clce", finetune_seed=0,
                 checkpoint_meta={"loss_params": {"lam": 0.5}, "image_size": 32, "dataset": "cifar-fs"})
    assert [g.label for g in report.seed_groups([d, e])] == ["resnet12 (clce)"]


# ---------------------------------------------------------------- paired tests seed by seed


def test_compare_pairs_seed_by_seed(groups):
    ce, clce, ce_acc, clce_acc = groups
    df = report.compare([*clce, *ce])
    assert len(df) == 6 and set(df["a"]) == {"resnet12 (clce)"} and set(df["b"]) == {"resnet12 (ce)"}
    assert list(df["seed_a"]) == list(df["seed_b"]) == [0, 1, 2, 0, 1, 2]
    for _, row in df.iterrows():
        xa = clce_acc[row["seed_a"]][("cifar-fs", row["shots"], "protonet")]
        xb = ce_acc[row["seed_b"]][("cifar-fs", row["shots"], "protonet")]
        assert row["run_a"].endswith(f"clce-s{row['seed_a']}")
        assert row["p_t"] == pytest.approx(scipy.stats.ttest_rel(xa, xb).pvalue, rel=1e-10, abs=1e-300)
        assert row["p_wilcoxon"] == pytest.approx(scipy.stats.wilcoxon(xa, xb).pvalue, rel=1e-10, abs=1e-300)
        assert row["diff"] == pytest.approx(float(np.mean(xa - xb)), abs=1e-12)
    np.testing.assert_allclose(df["p_t_holm"], holm_loop(list(df["p_t"])), rtol=1e-12)
    np.testing.assert_allclose(df["p_wilcoxon_holm"], holm_loop(list(df["p_wilcoxon"])), rtol=1e-12)
    summary = report.seed_summary(df)
    assert len(summary) == 2 and list(summary["n_pairs"]) == [3, 3] and list(summary["seeds"]) == ["0,1,2"] * 2
    one = df[df["shots"] == 1]
    s1 = summary[summary["shots"] == 1].iloc[0]
    assert s1["diff"] == pytest.approx(float(np.median(one["diff"]))) and s1["diff_min"] == one["diff"].min()
    assert s1["verdict_0.05"] == "better" and s1["n_better_0.05"] == 3 and s1["n_worse_0.05"] == 0


def test_seed_summary_verdicts_and_mean_rule(groups):
    ce, clce, _, _ = groups
    df = report.compare([*clce, *ce], aggregate="mean")
    df.loc[df.index[1], "verdict_0.05"] = "n.s."
    df.loc[df.index[3:6], "verdict_0.05"] = "worse"
    s = report.seed_summary(df)
    assert list(s["verdict_0.05"]) == ["mixed", "worse"]
    assert s["diff"].iloc[0] == pytest.approx(float(df["diff"].iloc[:3].mean()))
    df.loc[df.index[:3], "verdict_0.05"] = "n.s."
    assert report.seed_summary(df)["verdict_0.05"].iloc[0] == "n.s."


def test_seed_pairing_rules(groups, tmp_path):
    ce, clce, ce_acc, _ = groups
    df = report.compare([clce[0], clce[1], *ce])  # seed 2 of CE has no partner
    assert sorted(set(df["seed_a"])) == [0, 1] and len(df) == 4
    foreign = make_run(tmp_path / "foreign", ce_acc[0], arch="timm:vit_small", loss=None, finetune_seed=None)
    df = report.compare([*clce, foreign])  # a single run against every seed
    assert len(df) == 6 and set(df["run_b"]) == {str(foreign)}
    other = make_seed_runs(tmp_path, "supcon", {s: ce_acc[0] for s in (7, 8)}, loss="supcon")
    df = report.compare([*clce, *other])  # skipped with its reason, not refused
    assert df.empty and {s["reason"] for s in df.attrs["skipped"]} == {"no_shared_seed"}
    assert "the rows share no fine-tuning seed (seeds 0, 1, 2 vs 7, 8)" in df.attrs["skipped"][0]["message"]


def test_format_and_json_carry_seed_pairs(groups, tmp_path):
    ce, clce, _, _ = groups
    df = report.compare([*clce, *ce], baseline=ce[1])
    assert df.attrs["baseline"] == str(ce[1]) and set(df["b"]) == {"resnet12 (ce)"}
    text = report.format_compare(df)
    assert "seed pairs (seed s of a against seed s of b" in text and "better (3↑ 0↓ of 3)" in text
    assert " seed " in text.splitlines()[0]
    out = tmp_path / "compare.json"
    report.write_compare_json(df, out)
    doc = json.loads(out.read_text())
    assert len(doc["comparisons"]) == 6 and doc["comparisons"][2]["seed_a"] == 2
    assert doc["aggregate"] == "median" and len(doc["seed_groups"]) == 2
    assert doc["seed_groups"][0]["n_pairs"] == 3 and doc["seed_groups"][0]["verdict_0.05"] == "better"


def test_single_runs_print_no_seed_columns(groups):
    ce, clce, _, _ = groups
    text = report.format_compare(report.compare([clce[0], ce[1]]))  # two single runs, seeds 0 and 1
    assert "seed pairs" not in text and " seed " not in text.splitlines()[0]


# ---------------------------------------------------------------- the table


def test_table_cells_spread_and_caption(three_seeds, tmp_path):
    base = make_run(tmp_path / "ce", {("cifar-fs", 1, "protonet"): SEED_ACC[0] - 0.1}, loss="ce")
    md = report.make_table([*three_seeds, base], fmt="markdown")
    ci = 100 * _t_half(SEED_ACC[2])
    assert f"| resnet12 (clce) | **61.00±{ci:.2f}** [60.00–62.00] |" in md
    assert "median over 3 fine-tuning seeds of the per-seed mean accuracies" in md
    assert "± is the 95% CI over 4 episodes of the median seed; brackets give the range (min–max)" in md
    assert "| resnet12 (ce) | 50.00±" in md and "[" not in md.split("| resnet12 (ce) |")[1].split("\n")[0]
    tex = report.make_table([*three_seeds, base], fmt="latex", aggregate="mean")
    assert r"\textbf{61.00$\pm$" in tex and "[60.00--62.00]" in tex
    assert "mean over 3 fine-tuning seeds" in tex and "averaged over the seeds" in tex
    assert r"; $\pm$ is the 95\% CI" in tex and "range (min--max)" in tex and "±" not in tex


def test_table_machine_readable_formats(three_seeds):
    text = report.make_table(three_seeds, fmt="csv-long")
    df = pd.read_csv(io.StringIO(text), comment="#")
    row = df.iloc[0]
    assert row["n_seeds"] == 3 and row["seeds"] == "0;1;2" and row["seed_means"] == "0.6;0.62;0.61"
    assert row["seed_sd"] == pytest.approx(0.01) and not row["reported"] and row["aggregate"] == "median"
    assert row["column"] == "CIFAR-FS 1-shot" and row["mean"] == pytest.approx(0.61)
    assert text.splitlines()[-1].startswith("# Mean accuracy")
    doc = json.loads(report.make_table(three_seeds, fmt="json"))
    assert doc["format"] == "fewshot-bench-table" and doc["aggregate"] == "median"
    rec = doc["rows"][0]
    assert rec["seeds"] == [0, 1, 2] and rec["ci_seeds"] == [2] and rec["reported"] is False
    assert rec["seed_means"] == pytest.approx([0.60, 0.62, 0.61]) and rec["n_episodes"] == 4
    wide = report.make_table(three_seeds, fmt="csv")
    assert "61.00±" in wide and "[60.00–62.00]" in wide and "**" not in wide


def _borderline(p, n=20, base=0.5):
    """b and a = b + d with d of mean c chosen so that the paired t-test gives exactly p."""
    e = np.tile([0.1, -0.1], n // 2)
    c = scipy.stats.t.ppf(1 - p / 2, n - 1) * e.std(ddof=1) / math.sqrt(n)
    b = np.full(n, base) + np.linspace(-0.05, 0.05, n)
    return b + c + e, b


def test_dagger_needs_every_seed_pair_after_holm(tmp_path):
    pairs = {s: _borderline(p) for s, p in zip((0, 1, 2), (0.03, 0.04, 0.045), strict=True)}
    for s, (a, b) in pairs.items():  # each pair alone is significant ...
        assert scipy.stats.ttest_rel(a, b).pvalue == pytest.approx((0.03, 0.04, 0.045)[s], rel=1e-6)
    key = ("cifar-fs", 1, "protonet")
    clce = make_seed_runs(tmp_path, "clce", {s: {key: a} for s, (a, _) in pairs.items()}, loss="clce")
    ce = make_seed_runs(tmp_path, "ce", {s: {key: b} for s, (_, b) in pairs.items()}, loss="ce")
    # ... but Holm over the three pairs gives 0.09, 0.08, 0.045: not every pair, no dagger
    assert max(holm_loop([0.03, 0.04, 0.045])) == pytest.approx(0.09)
    md = report.make_table([*clce, *ce], fmt="markdown", baseline=ce[0])
    assert "†" not in md.split("\n\n")[0]
    assert "in every fine-tuning seed pair (seed s against seed s)" in md and "after Holm over the seed pairs" in md
    # one seed pair at p = 0.03: dagger (plain p < 0.05, as for single runs)
    md = report.make_table([clce[0], ce[0]], fmt="markdown", baseline=ce[0])
    assert "†" in md.split("\n\n")[0] and "not adjusted for multiple comparisons" in md
    # every pair clearly better: dagger
    strong = {s: _borderline(1e-6) for s in (0, 1, 2)}
    clce2 = make_seed_runs(tmp_path / "s", "clce", {s: {key: a} for s, (a, _) in strong.items()}, loss="clce")
    ce2 = make_seed_runs(tmp_path / "s", "ce", {s: {key: b} for s, (_, b) in strong.items()}, loss="ce")
    md = report.make_table([*clce2, *ce2], fmt="markdown", baseline=ce2[2])
    line = next(ln for ln in md.splitlines() if ln.startswith("| resnet12 (clce)"))
    assert "†" in line


# ---------------------------------------------------------------- literature


def test_load_literature_fixture():
    lit = literature.load_literature(FIXTURE)
    assert lit.key == "literature_demo" and lit.table == "Table 9" and len(lit.rows) == 4
    row = lit.rows.iloc[0]
    assert row["mean"] == pytest.approx(0.995) and row["ci95"] == pytest.approx(0.002) and row["ways"] == 5
    assert row["split"] == "test" and math.isnan(lit.rows.iloc[3]["ci95"])
    assert "Invented numbers" in lit.reference and "https://example.org/not-a-paper" in lit.reference


def test_bundled_source_cites_the_paper_and_holds_no_invented_rows():
    assert "clce2024_table1" in literature.bundled_sources()
    with pytest.raises(ConfigError, match="literature source 'clce2024_table1' holds no rows yet"):
        literature.load_literature()
    meta = json.loads((Path(literature.__file__).parent / "published" / "clce2024_table1.json").read_text())
    assert "2402.14551" in meta["url"] and meta["table"] == "Table 1" and "CLCE" in meta["citation"]
    with pytest.raises(ConfigError, match="--with-literature nope: no such bundled source"):
        literature.load_literature("nope")


@pytest.mark.parametrize("line, message", [
    ("literature_demo,M,B,CIFAR-FS,5,1,abc,0.1,", "line 2, column mean 'abc': is not a number"),
    ("literature_demo,M,B,CIFAR-FS,5,1,101,0.1,", r"column mean '101': must be a number in \[0, 100\]"),
    ("other,M,B,CIFAR-FS,5,1,50,0.1,", "does not match the citation file's key 'literature_demo'"),
    ("literature_demo,M,B,CIFAR-FS,5,0,50,0.1,", "column shots '0': must be an integer"),
    ("literature_demo,,B,CIFAR-FS,5,1,50,0.1,", "column method '': is empty"),
])
def test_literature_file_errors(tmp_path, line, message):
    (tmp_path / "lit.json").write_text((FIXTURE.with_suffix(".json")).read_text())
    (tmp_path / "lit.csv").write_text("source_key,method,backbone,dataset,ways,shots,mean,ci95,note\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        literature.load_literature(tmp_path / "lit.csv")


def test_literature_needs_citation_and_columns(tmp_path):
    (tmp_path / "lit.csv").write_text(FIXTURE.read_text())
    with pytest.raises(DataError, match="lit.json: no such file; a literature CSV needs its citation file"):
        literature.load_literature(tmp_path / "lit.csv")
    (tmp_path / "lit.json").write_text('{"key": "literature_demo", "citation": "", "url": "u", "table": "T"}')
    with pytest.raises(DataError, match="missing or empty citation"):
        literature.load_literature(tmp_path / "lit.csv")
    (tmp_path / "lit.json").write_text(FIXTURE.with_suffix(".json").read_text())
    (tmp_path / "lit.csv").write_text(FIXTURE.read_text() + FIXTURE.read_text().splitlines()[1] + "\n")
    with pytest.raises(DataError, match=r"MethodX \(ResNet-12\) CIFAR-FS 5-way 1-shot is listed twice"):
        literature.load_literature(tmp_path / "lit.csv")


@pytest.fixture
def ours(tmp_path):
    rng = np.random.default_rng(3)
    acc = {("cifar-fs", k, "protonet"): rng.binomial(75, 0.6, 30) / 75 for k in (1, 5)}
    return [make_run(tmp_path / "ce", acc, loss="ce")]


def test_table_with_literature_rows(ours):
    md = report.make_table(ours, fmt="markdown", with_literature=FIXTURE)
    lines = md.splitlines()
    assert "| MethodX, ResNet-12 (reported) | 99.50±0.20 | 99.90±0.10 |" in lines  # never bold, though best
    assert "| MethodY, ViT-S (reported) | 55.25 |  |" in lines  # no CI printed in the source
    assert next(ln for ln in lines if ln.startswith("| resnet12 (ce)")).count("**") == 4  # ours stays best
    assert "miniImageNet" not in md.split("\n\n")[0]  # rows outside the table's columns are left out
    assert ("Rows marked (reported): numbers reported in A. Tester. Invented numbers for the fewshot-bench test "
            "suite. Not a paper, 2024, Table 9 (https://example.org/not-a-paper, v1), not reproduced by "
            "fewshot-bench") in md
    tex = report.make_table(ours, fmt="latex", with_literature=FIXTURE)
    tex_lines = tex.splitlines()
    at = next(i for i, ln in enumerate(tex_lines) if ln.startswith("MethodX, ResNet-12 (reported) &"))
    assert tex_lines[at - 1] == r"\midrule" and r"\textbf{99.50" not in tex
    wide = pd.read_csv(io.StringIO(report.make_table(ours, fmt="csv", with_literature=FIXTURE)), header=[0, 1],
                       index_col=0, comment="#")
    assert list(wide[("reported", "reported")]) == [False, True, True]
    long = pd.read_csv(io.StringIO(report.make_table(ours, fmt="csv-long", with_literature=FIXTURE)), comment="#")
    rep = long[long["reported"]]
    assert len(rep) == 3 and set(rep["source"]) == {"literature_demo"} and not rep["best"].any()
    assert rep.iloc[0]["mean"] == pytest.approx(0.995) and pd.isna(rep.iloc[0]["n_seeds"])
    doc = json.loads(report.make_table(ours, fmt="json", with_literature=FIXTURE))
    assert doc["literature"][0]["key"] == "literature_demo"


def test_table_with_literature_needs_a_matching_column(tmp_path):
    run = make_run(tmp_path / "r", {("fc100", 1, "protonet"): [0.5, 0.6]})
    with pytest.raises(ConfigError, match="--with-literature literature_demo: none of its rows falls in a column"):
        report.make_table([run], with_literature=FIXTURE)
    with pytest.raises(ConfigError, match="holds no rows yet"):
        report.make_table([run], with_literature=True)


# ---------------------------------------------------------------- CLI


def test_cli_table_and_compare_with_seed_rows(groups, tmp_path, capsys):
    ce, clce, _, _ = groups
    runs = [str(p) for p in (*clce, *ce)]
    assert main(["table", *runs, "--format", "markdown", "--baseline", runs[3]]) == 0
    out = capsys.readouterr().out
    assert "median over 3 fine-tuning seeds" in out and "| resnet12 (clce) |" in out and "–" in out
    assert out.count("| resnet12 (") == 2
    out_file = tmp_path / "t.json"
    assert main(["table", *runs, "--format", "json", "--aggregate", "mean", "--out", str(out_file)]) == 0
    assert capsys.readouterr().out == f"wrote {out_file}\n"
    doc = json.loads(out_file.read_text())
    assert doc["aggregate"] == "mean" and {r["n_seeds"] for r in doc["rows"]} == {3}
    labels = ["--label", f"{runs[0]}=CLCE", "--label", f"{runs[1]}=CLCE", "--label", f"{runs[2]}=CLCE"]
    assert main(["table", *runs, *labels, "--format", "csv-long", "--with-literature", str(FIXTURE)]) == 0
    long = pd.read_csv(io.StringIO(capsys.readouterr().out), comment="#")
    assert "CLCE" in set(long["row"]) and long["reported"].sum() == 3
    assert main(["compare", *runs, "--out", str(tmp_path / "c.json")]) == 0
    assert "seed pairs (seed s of a" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["seed_groups"][0]["n_pairs"] == 3


def test_cli_errors_are_one_line(groups, tmp_path, capsys):
    ce, clce, _, _ = groups
    assert main(["table", str(ce[0]), "--with-literature"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "holds no rows yet" in lines[0] and "Traceback" not in err
    assert main(["table", "--with-literature", str(ce[0]), str(ce[1])]) == 1  # the flag took a run folder
    assert "a folder, not a literature source" in capsys.readouterr().err
    dup = make_run(tmp_path / "dup", {("cifar-fs", 1, "protonet"): [0.5] * 60}, loss="ce", finetune_seed=0)
    assert main(["compare", str(ce[0]), str(dup), str(clce[0])]) == 1
    assert "and the fine-tuning seed 0" in capsys.readouterr().err


def test_configurations_fine_tuned_on_other_datasets_or_with_other_settings_are_not_merged(tmp_path):
    """Review finding: one eval dataset, three checkpoints fine-tuned on three datasets with three λ
    must be three rows, not three 'seeds' of one median."""
    rng = np.random.default_rng(0)
    acc = {("miniimagenet", 1, "protonet"): rng.random(20)}
    paths = [make_run(tmp_path / f"r{s}", acc, loss="clce", finetune_seed=s,
                           checkpoint_meta={"dataset": ds, "lam": lam})
             for s, (ds, lam) in enumerate([("miniimagenet", 0.9), ("tieredimagenet", 0.1), ("cifar-fs", 0.5)])]
    labels = sorted(g.label for g in report.seed_groups(paths))
    assert len(labels) == 3 and any("fine-tuned on tieredimagenet" in lab for lab in labels)
    # runs that differ only in contrast_on, each fine-tuned on its own dataset, are two rows too
    two = [make_run(tmp_path / f"c{s}", {(ds, 1, "protonet"): rng.random(20)}, loss="clce", finetune_seed=s,
                         checkpoint_meta={"dataset": ds, "contrast_on": on})
           for s, (ds, on) in enumerate([("miniimagenet", "encoder"), ("cifar-fs", "projection")])]
    assert sorted(g.label for g in report.seed_groups(two)) == ["resnet12 (clce, contrast_on=encoder)",
                                                               "resnet12 (clce, contrast_on=projection)"]


def test_seeds_evaluated_under_different_input_protocols_are_refused(tmp_path):
    paths = make_seed_runs(tmp_path, "clce", {s: {("cifar-fs", 1, "protonet"): SEED_ACC[s]} for s in (0, 1)},
                           loss="clce")
    for p, pool in zip(paths, ("avg", "none"), strict=True):
        summary = json.loads((p / "summary.json").read_text())
        summary["protocols"] = {"cifar-fs": {"transform": "metaoptnet-cifar", "image_size": 32, "pool": pool,
                                             "source": "checkpoint", "forced": False}}
        (p / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"evaluated with different input protocols .*avg pool vs .*flattened"):
        report.seed_groups(paths)
