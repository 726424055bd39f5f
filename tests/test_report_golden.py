"""fewshot_bench.report: golden outputs of ``make_table`` / ``make_tables`` and ``compare``.

A few small, fully deterministic sets of run folders (built with :mod:`runs`) are rendered in every
format -- tables as LaTeX, Markdown, CSV, long CSV and JSON; comparisons as terminal text and
``compare.json`` -- and each output, normalised as below, is compared byte for byte with its
checked-in copy under ``tests/golden/report/``. The scenarios cover rows of several fine-tuning seeds, a seedless
third-party run, a baseline with marks both ways, a baseline cell matched on another method,
skipped cells (other episodes, no baseline result, no shared seed, no shared cell), ``--methods``
filtering, ``--label`` row / dataset / method renames (a ``|`` in a label), literature rows
(matching on queries), two splits, mixed ways, runs written before ``ci_method`` and ``protocols``
were recorded, tiny Holm-adjusted p-values below 1e-3 and ordinary ones, and a pair on one episode.
The numbers in the golden files were checked by an independent computation (scipy.stats, literal
loops, ``runs.holm_loop``) before they were checked in.

Machine independence: the runs live in one temporary folder, written as ``<RUNS>`` in the golden
files; dates are fixed by :func:`runs.make_run`; floats printed with 9 or more decimals are
rounded to 8 significant digits on both sides (scipy versions differ in the last bits of
extreme-tail quantiles and p-values). The pandas version shapes the text layouts too (to_latex,
to_string): a new pandas may need a regeneration, after reading the diff.

To regenerate the golden files after an intended change of the output, run::

    FEWSHOT_BENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report_golden.py

then read the diff (``git diff tests/golden/report``) and check every changed number by hand.

The targeted tests at the end pin error messages and branches the goldens cannot reach.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fewshot_bench import report
from fewshot_bench.errors import ConfigError, EpisodeError

from runs import borderline_pair, make_run, make_seed_runs

GOLDEN = Path(__file__).parent / "golden" / "report"
UPDATE = os.environ.get("FEWSHOT_BENCH_UPDATE_GOLDEN") == "1"
LIT_DEMO = Path(__file__).parent / "fixtures" / "literature_demo.csv"
TABLE_EXTENSIONS = report.TABLE_EXTENSIONS  # format -> file extension of its golden file


def key(dataset, shots, method, split="test", ways=5, queries=15):
    return (dataset, split, ways, shots, queries, method)


C1, C5, M1, F1 = (key("cifar-fs", 1, "protonet"), key("cifar-fs", 5, "protonet"), key("mini-imagenet", 1, "protonet"),
                  key("fc100", 1, "protonet"))
C1_TIM, C1_KNN = key("cifar-fs", 1, "tim"), key("cifar-fs", 1, "knn")


def _exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


_LONG_FLOAT = re.compile(r"-?\d+\.\d{9,}(?:e[-+]?\d+)?")


def _normalise(text: str, root: Path) -> str:
    text = text.replace(str(root), "<RUNS>").replace(report.latex_escape(str(root)), "<RUNS>")
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group()):.8g}", text)


def check_golden(name: str, text: str, root: Path) -> None:
    """``text`` (normalised) equals ``tests/golden/report/<name>``; rewrites the file when updating."""
    text = _normalise(text, root)
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    assert path.is_file(), f"{path}: missing; run FEWSHOT_BENCH_UPDATE_GOLDEN=1 python -m pytest {__file__}"
    expected = path.read_bytes().decode("utf-8")
    assert text == expected, f"{name} differs from its golden file (regenerate with FEWSHOT_BENCH_UPDATE_GOLDEN=1)"


def _edit_summary(run: Path, edit) -> None:
    summary = json.loads((run / "summary.json").read_text())
    edit(summary)
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------- scenarios

# six episodes; CE of seed s is BASE + s/100
BASE = np.array([0.52, 0.60, 0.56, 0.64, 0.48, 0.60])
# CLCE minus CE per seed and cell (means: protonet 1-shot +10 pp, 5-shot +7 pp, tim +12 pp)
CLCE_DIFF = {
    (0, "C1"): [0.10, 0.11, 0.09, 0.10, 0.11, 0.09], (1, "C1"): [0.12, 0.08, 0.10, 0.13, 0.07, 0.10],
    (0, "C5"): [0.08, 0.06, 0.07, 0.09, 0.05, 0.07], (1, "C5"): [0.07, 0.07, 0.06, 0.08, 0.09, 0.05],
    (0, "TIM"): [0.12, 0.13, 0.11, 0.12, 0.10, 0.14], (1, "TIM"): [0.10, 0.14, 0.12, 0.12, 0.13, 0.11],
}
SUPCON_DIFF = {"C1": [-0.05, -0.06, -0.04, -0.05, -0.06, -0.04], "C5": [-0.03, -0.05, -0.04, -0.06, -0.02, -0.04]}
# ViT minus CE of seed 0: n.s. on CIFAR-FS; +1.2 pp on miniImageNet, which is +0.2 pp against seed 1 (mixed)
VIT_DIFF = {"C1": [0.02, -0.01, 0.03, -0.02, 0.01, 0.00], "TIM": [0.03, 0.00, -0.02, 0.04, -0.01, 0.02],
            "M1": [0.013, 0.011, 0.014, 0.010, 0.0135, 0.0105]}


def main_runs(root: Path) -> dict:
    """The main table: CE (baseline, seeds 0, 1; protonet only), CLCE (seeds 0, 1; protonet, tim and knn;
    other episodes on miniImageNet), SupCon (seed 0; worse; also FC100, which the baseline lacks) and a
    seedless ViT (protonet and tim); passed interleaved. Preprocessing differs per row for protonet."""
    ce, clce = {}, {}
    for s in (0, 1):
        b = BASE + s / 100
        ce[s] = {C1: b, C5: b + 0.2, M1: b - 0.1}
        clce[s] = {C1: b + CLCE_DIFF[s, "C1"], C5: b + 0.2 + CLCE_DIFF[s, "C5"], M1: b - 0.1 + CLCE_DIFF[s, "C1"],
                   C1_TIM: b + CLCE_DIFF[s, "TIM"], C1_KNN: b}
    ce_runs = make_seed_runs(root, "ce", ce, loss="ce", preprocess={"protonet": "center+l2n"})
    clce_runs = make_seed_runs(root, "clce", clce, loss="clce", transductive={"tim": True},
                               preprocess={"protonet": "none", "tim": "l2n", "knn": "none"},
                               episodes_sha256={M1: "e" * 64})
    supcon = make_run(root / "supcon", {C1: BASE + SUPCON_DIFF["C1"], C5: BASE + 0.2 + SUPCON_DIFF["C5"], F1: BASE},
                      loss="supcon", preprocess={"protonet": "none"})
    vit = make_run(root / "vit", {C1: BASE + VIT_DIFF["C1"], C1_TIM: BASE + VIT_DIFF["TIM"],
                                  M1: BASE - 0.1 + VIT_DIFF["M1"]},
                   arch="vit-s", loss=None, finetune_seed=None, transductive={"tim": True},
                   preprocess={"protonet": "none", "tim": "l2n"})
    runs = [ce_runs[0], clce_runs[0], ce_runs[1], supcon, clce_runs[1], vit]
    return {"runs": runs, "baseline": ce_runs[1], "vit": vit}


# legacy runs: per configuration (lam) and fine-tuning seed, the CIFAR-FS test 5-way accuracies
LEGACY = {0.5: {0: [0.44, 0.54, 0.64, 0.74], 1: [0.50, 0.56, 0.62, 0.72], 2: [0.40, 0.60, 0.62, 0.70]},
          0.1: {0: [0.40, 0.50, 0.60, 0.70], 1: [0.42, 0.48, 0.62, 0.72]}}


def legacy_runs(root: Path) -> list[Path]:
    """Runs written before ``ci_method`` and ``protocols`` were recorded (``transforms`` instead): two
    CLCE configurations told apart by ``lam`` (arch only in the checkpoint entry), with seeds 0-2 and
    0-1; CIFAR-FS test 5-way, val 5-way (+10 pp) and test 10-way (-20 pp)."""
    out = []
    for lam, per_seed_acc in LEGACY.items():
        per_seed = {}
        for s, acc in per_seed_acc.items():
            b = np.array(acc)
            per_seed[s] = {key("cifar-fs", 1, "protonet"): b, key("cifar-fs", 1, "protonet", split="val"): b + 0.1,
                           key("cifar-fs", 1, "protonet", ways=10): b - 0.2}
        out += make_seed_runs(root, f"clce-lam{lam}", per_seed, loss="clce",
                              checkpoint_meta={"arch": None, "lam": lam})
    for run in out:
        def edit(s):
            for r in s["results"]:
                r.pop("ci_method")
            s["config"].pop("ci_method")
            s["transforms"] = {"cifar-fs": {"name": "rfs-cifar"}}
        _edit_summary(run, edit)
    return out


LIT_QUERIES = """source_key,method,backbone,dataset,ways,shots,queries,mean,ci95,note
literature_demo,MethodQ,ResNet-12,CIFAR-FS,5,1,15,70.25,0.35,15 queries like ours
literature_demo,MethodR,ResNet-12,CIFAR-FS,5,1,10,71.00,0.40,10 queries: not our column
literature_demo,MethodS,Conv-4,CIFAR-FS,5,5,,60.00,,queries not given
literature_demo,MethodS,Conv-4,FC100,5,1,,40.00,0.50,no FC100 column here
"""


def literature_case(root: Path) -> tuple[Path, Path]:
    """One run with normal-approximation CIs, and a literature source whose rows give queries."""
    run = make_run(root / "normal", {C1: [0.60, 0.70, 0.65, 0.75], C5: [0.80, 0.82, 0.78, 0.84]}, ci_method="normal",
                   protocols={"cifar-fs": {"transform": "rfs-cifar", "image_size": 32, "pool": "avg",
                                           "source": "preset rfs", "forced": False}})
    lit = root / "lit" / "literature_demo.csv"
    lit.parent.mkdir()
    lit.write_text(LIT_QUERIES)
    (lit.parent / "literature_demo.json").write_text(LIT_DEMO.with_suffix(".json").read_text())
    return run, lit


P_TINY = {0: 1e-6, 1: 2e-5, 2: 3e-4}  # raw paired-t p-values of CLCE vs CE on CIFAR-FS 1-shot, per seed


def compare_seed_runs(root: Path) -> list[Path]:
    """CLCE and CE, seeds 0-2, 20 episodes: CIFAR-FS 1-shot with tiny p-values (P_TINY), 5-shot with
    p = 0.2 (CLCE below), FC100 on a single episode, miniImageNet on other episodes; SupCon with seeds
    5 and 6 (none shared) on CIFAR-FS 1-shot."""
    ce, clce = {}, {}
    for s in range(3):
        a1, b1 = borderline_pair(P_TINY[s], n=20, base=0.5)
        a5, b5 = borderline_pair(0.2, n=20, base=0.7, sign=-1)
        ce[s] = {C1: b1 + s / 100, C5: b5 + s / 100, F1: [0.40 + s / 10], M1: b1}
        clce[s] = {C1: a1 + s / 100, C5: a5 + s / 100, F1: [0.45 + s / 20], M1: a1}
    clce_runs = make_seed_runs(root, "clce", clce, loss="clce", episodes_sha256={M1: "e" * 64})
    ce_runs = make_seed_runs(root, "ce", ce, loss="ce")
    sup = make_seed_runs(root, "supcon", {5: {C1: np.full(20, 0.5)}, 6: {C1: np.full(20, 0.55)}}, loss="supcon")
    return [*clce_runs, *ce_runs, *sup]


def compare_baseline_runs(root: Path) -> tuple[list[Path], Path]:
    """Single runs on CIFAR-FS test and val, 5 episodes: A and B against the baseline; C holds FC100 only.
    The val accuracies are binary fractions, so A - baseline is exactly 0 there."""
    va = key("cifar-fs", 1, "protonet", split="val")
    base = make_run(root / "base", {C1: [0.50, 0.60, 0.70, 0.60, 0.50], va: [0.375, 0.5, 0.625, 0.5, 0.375]},
                    loss="ce")
    a = make_run(root / "a", {C1: [0.60, 0.70, 0.70, 0.70, 0.60], va: [0.375, 0.5625, 0.625, 0.4375, 0.375]},
                 loss="clce")
    b = make_run(root / "b", {C1: [0.40, 0.60, 0.60, 0.50, 0.50]}, loss="supcon")
    c = make_run(root / "c", {F1: [0.30, 0.40, 0.50, 0.40, 0.30]}, arch="conv4")
    return [a, b, c], base


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden_runs")


# ---------------------------------------------------------------- table goldens


def test_main_table_every_format(root):
    case = main_runs(root / "main")
    kw = dict(baseline=case["baseline"], caption="Main results.", methods=["protonet", "tim"],
              labels={str(case["vit"]): "ViT-S | DINO", "tim": "TIM", "fc100": "FC100-R"})
    formats = ("latex", "markdown", "csv", "json")
    out = report.make_tables(case["runs"], formats, with_literature=LIT_DEMO, **kw)
    assert list(out) == list(formats)
    for fmt in formats:
        check_golden(f"table_main.{TABLE_EXTENSIONS[fmt]}", out[fmt], root)
    # make_table renders the same text, and its default LaTeX label is tab:fewshot
    assert report.make_table(case["runs"], "tex", with_literature=LIT_DEMO, **kw) == out["latex"]
    # csv-long without the literature rows (with them, see test_long_csv_with_literature_keeps_integers)
    check_golden("table_main.long.csv", report.make_table(case["runs"], "csv-long", **kw), root)


def test_legacy_runs_table(root):
    runs = legacy_runs(root / "legacy")
    out = report.make_tables(runs, ("latex", "md", "csv", "json"), aggregate="mean", label="tab:legacy")
    for fmt in ("latex", "markdown", "csv", "json"):
        check_golden(f"table_legacy.{TABLE_EXTENSIONS[fmt]}", out[fmt], root)


def test_literature_rows_match_on_queries(root):
    run, lit = literature_case(root / "lit_case")
    out = report.make_tables([run], ("latex", "md", "csv", "json"), with_literature=lit, label=None)
    for fmt in ("latex", "markdown", "csv", "json"):
        check_golden(f"table_literature.{TABLE_EXTENSIONS[fmt]}", out[fmt], root)


def test_long_csv_with_literature_keeps_integers(tmp_path):
    """Published rows leave ways/queries/n_episodes/n_seeds empty; the measured rows keep 15, not 15.0."""
    run, lit = literature_case(tmp_path)
    long = report.make_table([run], "csv-long", with_literature=lit).splitlines()
    assert long[1].startswith("resnet12 (ce),CIFAR-FS 1-shot,resnet12 (ce),False,,,CIFAR-FS,test,5,1,15,protonet,")


# ---------------------------------------------------------------- compare goldens


def test_compare_seeds_text_and_json(root):
    runs = compare_seed_runs(root / "cmp_seeds")
    df = report.compare(runs)
    check_golden("compare_seeds.txt", report.format_compare(df) + "\n", root)
    out = root / "cmp_seeds.json"
    report.write_compare_json(df, out)
    check_golden("compare_seeds.json", out.read_text(encoding="utf-8"), root)


def test_compare_baseline_text_and_json(root):
    runs, base = compare_baseline_runs(root / "cmp_base")
    df = report.compare(runs, baseline=base, alpha=(0.05,), level=0.9)
    check_golden("compare_baseline.txt", report.format_compare(df) + "\n", root)
    out = root / "cmp_base.json"
    report.write_compare_json(df, out)
    check_golden("compare_baseline.json", out.read_text(encoding="utf-8"), root)
    df.attrs.clear()  # a frame rebuilt by the user: no protocol, no skipped list, the default level
    check_golden("compare_no_attrs.txt", report.format_compare(df) + "\n", root)


# ---------------------------------------------------------------- targeted: messages and branches


def test_seeds_listing_other_episode_indices_are_refused(tmp_path):
    s0, s1 = make_seed_runs(tmp_path, "ce", {0: {C1: [0.5, 0.6]}, 1: {C1: [0.5, 0.7]}})
    csv = s1 / "per_episode.csv"
    csv.write_text(csv.read_text().replace(",protonet,1,", ",protonet,2,"))  # same episode file hash, other indices
    with pytest.raises(EpisodeError, match=_exact(
            f"{s0} and {s1} list different episode indices for cifar-fs test 5-way 1-shot 15-query protonet; "
            "re-run eval of every seed on the same episode file")):
        report.seed_groups([s0, s1])


def test_literature_without_a_row_in_the_table_is_refused(tmp_path):
    run = make_run(tmp_path / "a", {F1: [0.5, 0.6]})
    with pytest.raises(ConfigError, match=_exact(
            "--with-literature literature_demo: none of its rows falls in a column of this table (dataset x split "
            "x ways x shots); evaluate on the datasets the source reports")):
        report.make_table([run], with_literature=LIT_DEMO)


def test_compare_of_one_row_of_seeds_is_refused(tmp_path):
    runs = make_seed_runs(tmp_path, "ce", {0: {C1: [0.5, 0.6]}, 1: {C1: [0.5, 0.7]}})
    with pytest.raises(ConfigError, match=_exact(
            "compare needs at least two different runs or rows, got one row: all 2 runs belong to 'resnet12 (ce)' "
            "(fine-tuning seeds 0, 1); pass another configuration, or tell the runs apart with --label")):
        report.compare(runs)


def test_two_methods_renamed_alike_fall_in_one_cell(tmp_path):
    run = make_run(tmp_path / "a", {C1: [0.5, 0.6], C1_TIM: [0.6, 0.7]})
    with pytest.raises(ConfigError, match=_exact(
            "two results fall in one table cell (resnet12 (ce), X, CIFAR-FS 1-shot); give the runs distinct --label "
            "values")):
        report.make_table([run], labels={"protonet": "X", "tim": "X"})


def test_find_runs_names_the_positional_argument_by_default(tmp_path):
    pattern = str(tmp_path / "nothing-*")
    with pytest.raises(ConfigError, match=_exact(
            f"RUN {pattern}: the pattern matches no run folder (a folder with summary.json); check the pattern or "
            "pass the --out folders of `fewshot-bench eval`")):
        report.find_runs([pattern])


def test_groups_frame_unknown_aggregate(tmp_path):
    run = make_run(tmp_path / "a", {C1: [0.5, 0.6]})
    with pytest.raises(ConfigError, match=_exact("--aggregate mode: unknown rule; use one of: median, mean")):
        report.groups_frame([run], aggregate="mode")


def test_a_folder_label_that_meets_a_row_label_twice_is_refused(tmp_path):
    """A seedless run shares its automatic label with a seeded run, so it becomes ``label [r]``; that
    meets row C's label, so it becomes ``label [<path of r>]``, which meets row B's label."""
    make_run(tmp_path / "d", {C1: [0.5, 0.6]})
    seedless = make_run(tmp_path / "r", {C1: [0.5, 0.6]}, finetune_seed=None)
    b = make_seed_runs(tmp_path, "b", {0: {C1: [0.5, 0.6]}, 1: {C1: [0.5, 0.6]}})
    c = make_seed_runs(tmp_path, "c", {0: {C1: [0.5, 0.6]}, 1: {C1: [0.5, 0.6]}})
    clash = f"resnet12 (ce) [{seedless}]"
    labels = {**{str(p): clash for p in b}, **{str(p): "resnet12 (ce) [r]" for p in c}}
    with pytest.raises(ConfigError, match=_exact(
            f"--label: two rows share the label {clash!r}; give each row its own label")):
        report.seed_groups([tmp_path / "d", seedless, *b, *c], labels)


def test_aggregate_seeds_flattens_its_input():
    assert report.aggregate_seeds(np.array([[0.60, 0.62, 0.61]])) == (0.61, (2,))
    value, idx = report.aggregate_seeds([[0.60], [0.62], [0.58], [0.64]], "median")
    assert value == pytest.approx(0.61) and idx == (0, 1)
