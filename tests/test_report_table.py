"""`fewshot-bench table` and `compare` through the CLI on synthetic run folders: many folders and
globs, filters and order, print labels, seed rows, significance against a baseline (both
directions, Holm over the table), one call for every format, the caption, LaTeX, one rounding
rule, and runs of mixed ways/shots/episodes (skipped with their reason, never a crash)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from fewshot_bench import report
from fewshot_bench.benchmark import format_summary
from fewshot_bench.cli import main

from runs import borderline_pair, holm_loop, make_run, make_seed_runs

E = 60
PROTOCOLS = {
    "cifar-fs": {"transform": "rfs-cifar", "image_size": 32, "pool": "avg", "source": "checkpoint", "forced": False},
    "mini-imagenet": {"transform": "rfs-84", "image_size": 84, "pool": "avg", "source": "checkpoint",
                      "forced": False},
}


@pytest.fixture
def suite(tmp_path):
    """Baseline CE, CLCE (+5 pp), SupCon (-5 pp), H-SCL (tied) on 2 datasets x 2 shots x protonet/tim,
    all on the same episodes; plus a folder that is not a run."""
    rng = np.random.default_rng(0)
    accs = {name: {} for name in ("ce", "clce", "supcon", "hscl")}
    for ds in ("cifar-fs", "mini-imagenet"):
        for k in (1, 5):
            for m in ("protonet", "tim"):
                b = rng.binomial(75, 0.6, E) / 75
                accs["ce"][(ds, k, m)] = b
                accs["clce"][(ds, k, m)] = np.clip(b + 0.05 + rng.normal(0, 0.03, E), 0, 1)
                accs["supcon"][(ds, k, m)] = np.clip(b - 0.05 + rng.normal(0, 0.03, E), 0, 1)
                accs["hscl"][(ds, k, m)] = b.copy()  # identical predictions: p = 1, never marked
    kw = {"transductive": {"tim": True}, "preprocess": {"protonet": "none", "tim": "l2n"}, "protocols": PROTOCOLS}
    root = tmp_path / "runs"
    paths = {name: make_run(root / name, acc, loss=name.replace("hscl", "h-scl"), **kw) for name, acc in accs.items()}
    (root / "plots").mkdir()  # a glob over root matches it too; it is not a run folder
    return paths, accs


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def _json_table(argv, capsys, tmp_path):
    out = tmp_path / "t.json"
    _run(["table", *argv, "--format", "json", "--out", out], capsys)
    return json.loads(out.read_text())


def _md_rows(md):
    return [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| Model")]


# ---------------------------------------------------------------- many folders, globs, filters, labels


def test_glob_equals_the_folders_listed(suite, capsys, tmp_path):
    paths, _ = suite
    listed = _json_table([paths[n] for n in ("ce", "clce", "hscl", "supcon")], capsys, tmp_path)
    globbed = _json_table([paths["ce"].parent / "*"], capsys, tmp_path)  # quoted: we expand it, "plots" passed over
    assert globbed["rows"] == listed["rows"] and len({r["label"] for r in listed["rows"]}) == 4
    assert main(["table", str(tmp_path / "nothing-*")]) == 1
    assert "the pattern matches no run folder" in capsys.readouterr().err


def test_methods_datasets_order_and_print_labels(suite, capsys):
    paths, _ = suite
    md = _run(["table", paths["ce"], paths["clce"], "--format", "md", "--methods", "tim", "protonet",
               "--datasets", "miniImageNet", "cifar-fs", "--label", "tim=TIM", "--label", "mini-imagenet=mini",
               "--label", f"{paths['clce']}=CLCE (ours)"], capsys)
    header = md.splitlines()[0]
    assert header == "| Model | mini 1-shot | mini 5-shot | CIFAR-FS 1-shot | CIFAR-FS 5-shot |"
    assert [r.split(" | ")[0] for r in _md_rows(md)] == ["| resnet12 (ce), TIM", "| CLCE (ours), TIM",
                                                        "| resnet12 (ce), protonet", "| CLCE (ours), protonet"]
    assert "protonet inductive, TIM transductive" in md
    one = _run(["table", paths["ce"], "--format", "csv-long", "--methods", "protonet", "--datasets", "cifar-fs"],
               capsys)
    long = pd.read_csv(io.StringIO(one), comment="#")
    assert set(long["method"]) == {"protonet"} and set(long["dataset"]) == {"CIFAR-FS"} and len(long) == 2
    assert main(["table", str(paths["ce"]), "--methods", "maml"]) == 1
    assert "--methods maml: no result of the runs has that method; they hold protonet, tim" in capsys.readouterr().err
    assert main(["table", str(paths["ce"]), "--label", "cub=CUB"]) == 1
    assert "--label cub=CUB: cub is neither one of the runs given nor a dataset" in capsys.readouterr().err


def test_seed_rows_aggregate_median_and_mean(tmp_path, capsys):
    acc = {0: [0.50, 0.70, 0.55, 0.65], 1: [0.62, 0.62, 0.60, 0.64], 2: [0.40, 0.80, 0.61, 0.63]}  # 0.60 .62 .61
    make_seed_runs(tmp_path / "runs", "clce", {s: {("cifar-fs", 1, "protonet"): a} for s, a in acc.items()},
                   loss="clce")
    glob = tmp_path / "runs" / "clce-s*"
    med = _json_table([glob], capsys, tmp_path)["rows"][0]
    mean = _json_table([glob, "--aggregate", "mean"], capsys, tmp_path)["rows"][0]
    assert med["n_seeds"] == 3 and med["mean"] == pytest.approx(0.61) and med["ci_seeds"] == [2]
    assert mean["mean"] == pytest.approx(np.mean([0.60, 0.62, 0.61]))
    assert med["cell"].endswith("[60.00–62.00]") and med["cell"].startswith("61.00±")


# ---------------------------------------------------------------- significance against the baseline


def test_marks_above_and_below_the_baseline(suite, capsys, tmp_path):
    paths, accs = suite
    md = _run(["table", paths["ce"], paths["clce"], paths["supcon"], paths["hscl"], "--format", "md",
               "--baseline", paths["ce"]], capsys)
    rows = {r.split(" | ")[0].removeprefix("| "): r for r in _md_rows(md)}

    def cells(name, method):
        return rows[f"resnet12 ({name.replace('hscl', 'h-scl')}), {method}"].split(" | ")[1:]

    for m in ("protonet", "tim"):
        assert all(c.rstrip(" |").endswith("†") for c in cells("clce", m))  # better: dagger, never ddagger
        assert all(c.rstrip(" |").endswith("‡") for c in cells("supcon", m))  # worse: ddagger, never dagger
        assert not any("†" in c or "‡" in c for c in cells("hscl", m) + cells("ce", m))
    assert "† / ‡: mean above / below the baseline (resnet12 (ce))" in md
    doc = _json_table([paths["ce"], paths["clce"], paths["supcon"], "--baseline", paths["ce"]], capsys, tmp_path)
    sig = {(r["label"], r["method"], r["dataset"], r["shots"]): r for r in doc["rows"]}
    r = sig[("resnet12 (supcon)", "tim", "miniImageNet", 5)]
    assert r["significance"] == "worse" and r["dagger"] is False and r["diff_vs_baseline"][0] < 0
    a, b = accs["supcon"][("mini-imagenet", 5, "tim")], accs["ce"][("mini-imagenet", 5, "tim")]
    assert r["p_t"][0] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert sig[("resnet12 (clce)", "protonet", "CIFAR-FS", 1)]["significance"] == "better"
    assert sig[("resnet12 (ce)", "protonet", "CIFAR-FS", 1)]["significance"] == "baseline"


def test_holm_over_every_test_of_the_table(tmp_path, capsys):
    """Raw p = 0.03 (above) and 0.04 (below): each alone would be marked; Holm over the two gives
    0.06 and 0.06, so neither is. Pinned against Holm written out."""
    up, down = borderline_pair(0.03, n=20), borderline_pair(0.04, n=20, sign=-1)
    base = make_run(tmp_path / "ce", {("cifar-fs", 1, "protonet"): up[1], ("cifar-fs", 5, "protonet"): down[1]})
    new = make_run(tmp_path / "new", {("cifar-fs", 1, "protonet"): up[0], ("cifar-fs", 5, "protonet"): down[0]},
                   loss="clce")
    doc = _json_table([base, new, "--baseline", base], capsys, tmp_path)
    tested = [r for r in doc["rows"] if r["significance"] not in (None, "baseline")]
    raw = [r["p_t"][0] for r in tested]
    np.testing.assert_allclose(raw, [0.03, 0.04], rtol=1e-9)
    np.testing.assert_allclose([r["p_t_holm"][0] for r in tested], holm_loop(raw), rtol=1e-12)
    np.testing.assert_allclose([r["p_t_holm"][0] for r in tested], [0.06, 0.06], rtol=1e-9)
    assert {r["significance"] for r in tested} == {"n.s."} and doc["n_tests"] == 2
    assert "after Holm over the 2 cells tested" in doc["caption"]
    # the 0.04 cell alone: a single test, p < 0.05 below the baseline: marked, the other way
    one = make_run(tmp_path / "one", {("cifar-fs", 1, "protonet"): down[0]}, loss="supcon")
    base1 = make_run(tmp_path / "ce1", {("cifar-fs", 1, "protonet"): down[1]})
    md = _run(["table", base1, one, "--baseline", base1, "--format", "md"], capsys)
    assert _md_rows(md)[1].endswith("‡ |") and "a single test: not adjusted" in md


# ---------------------------------------------------------------- outputs, caption, LaTeX, rounding


def test_one_call_writes_every_format(suite, capsys, tmp_path):
    paths, _ = suite
    runs = [paths["ce"], paths["clce"], "--methods", "protonet"]
    out = _run(["table", *runs, "--baseline", paths["ce"], "--out-dir", tmp_path / "tab"], capsys)
    names = ["table.tex", "table.md", "table.csv", "table.long.csv", "table.json"]
    assert out.splitlines() == [f"wrote {tmp_path / 'tab' / n}" for n in names]
    for name, fmt in zip(names, ["latex", "markdown", "csv", "csv-long", "json"], strict=True):
        alone = _run(["table", *runs, "--baseline", paths["ce"], "--format", fmt], capsys)
        assert (tmp_path / "tab" / name).read_text() + "\n" == alone
    _run(["table", *runs, "--format", "latex", "md", "--out", tmp_path / "pre" / "t1"], capsys)
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["t1.md", "t1.tex"]
    assert main(["table", *map(str, runs[:2]), "--format", "latex", "json"]) == 1
    assert "several formats need --out PREFIX" in capsys.readouterr().err


def test_caption_states_the_protocol(suite, capsys):
    paths, _ = suite
    md = _run(["table", paths["ce"], paths["clce"], "--format", "md"], capsys)
    for text in ("over 60 test episodes, 5-way 1/5-shot, 15 queries per class", "protonet inductive",
                 "tim transductive", "Student-t interval", "rfs-cifar 32 px", "rfs-84 84 px", "episode seed 0",
                 "l2n"):
        assert text in md, text


def test_latex_escapes_labels_writes_p_in_math_and_compiles(suite, capsys, tmp_path):
    paths, _ = suite
    tex = _run(["table", paths["ce"], paths["clce"], "--baseline", paths["ce"], "--methods", "protonet",
                "--label", f"{paths['clce']}=R&D_50% <x> | #1", "--label", "cifar-fs=CIFAR_FS~"], capsys)
    assert r"R\&D\_50\% \textless{}x\textgreater{} \textbar{} \#1" in tex and r"CIFAR\_FS\textasciitilde{}" in tex
    assert r"$p < 0.05$" in tex and "p < 0.05" not in tex.replace("$p < 0.05$", "")
    for bad in ("<x", "R&D", " | #"):
        assert bad not in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_one_rounding_rule_for_eval_table_and_compare(tmp_path, capsys):
    """0.61245 is 61.245 %: half to even gives 61.24 (``f"{100 * x:.2f}"`` gives 61.25); 0.01235 -> 1.24."""
    assert (report.pct(0.61245), report.pct(0.61255), report.pct(0.01235), report.pct(-0.0123, signed=True)) == (
        "61.24", "61.26", "1.24", "-1.23")
    assert f"{100 * 0.61245:.2f}" == "61.25"  # the rule this replaces
    a = make_run(tmp_path / "a", {("cifar-fs", 1, "protonet"): [0.5, 0.7, 0.6]})
    b = make_run(tmp_path / "b", {("cifar-fs", 1, "protonet"): [0.6, 0.7, 0.6]}, loss="clce")
    summary = json.loads((a / "summary.json").read_text())
    summary["results"][0].update(mean=0.61245, ci95=0.01235)
    (a / "summary.json").write_text(json.dumps(summary))
    assert "61.24 ± 1.24" in format_summary(summary)  # what eval prints
    assert "| resnet12 (ce) | 61.24±1.24 |" in _run(["table", a, b, "--format", "md"], capsys)
    assert report.fmt_pct(0.61245, 0.01235, pm=r"$\pm$") == r"61.24$\pm$1.24"


# ---------------------------------------------------------------- any set of runs: mixed ways, shots, episodes


@pytest.fixture
def mixed(tmp_path):
    rng = np.random.default_rng(3)
    acc = lambda: rng.binomial(75, 0.6, 30) / 75  # noqa: E731
    return {
        "five": make_run(tmp_path / "five", {("cifar-fs", 1, "protonet"): acc(), ("cifar-fs", 5, "protonet"): acc()}),
        "ten": make_run(tmp_path / "ten", {("cifar-fs", "test", 10, 1, 15, "protonet"): acc()}, loss="clce"),
        "other_eps": make_run(tmp_path / "other_eps", {("cifar-fs", 1, "protonet"): acc()}, loss="supcon", seed=7),
        "shots5": make_run(tmp_path / "shots5", {("cifar-fs", 5, "protonet"): acc()}, loss="h-scl"),
    }


def test_compare_over_mixed_runs_skips_with_reasons(mixed, capsys, tmp_path):
    out_json = tmp_path / "c.json"
    out = _run(["compare", *mixed.values(), "--baseline", mixed["five"], "--out", out_json], capsys)
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 2
    assert any("ten and" in s and "share no dataset x split x ways" in s and "10-way" in s for s in skipped)
    assert any("other_eps and" in s and "evaluated on different episodes" in s for s in skipped)
    doc = json.loads(out_json.read_text())
    assert sorted(s["reason"] for s in doc["skipped"]) == ["different_episodes", "no_shared_cell"]
    assert [(c["a"], c["shots"]) for c in doc["comparisons"]] == [("resnet12 (h-scl)", 5)]
    # nothing comparable at all: still no crash, an empty comparison list and the reasons
    out = _run(["compare", mixed["five"], mixed["ten"], "--out", out_json], capsys)
    assert out.startswith("(no comparisons") and "skipped: " in out
    assert json.loads(out_json.read_text())["comparisons"] == []


def test_table_over_mixed_runs_lists_untested_cells(mixed, capsys, tmp_path):
    doc = _json_table([*mixed.values(), "--baseline", mixed["five"]], capsys, tmp_path)
    columns = sorted({r["column"] for r in doc["rows"]})
    assert columns == ["CIFAR-FS 10-way 1-shot", "CIFAR-FS 5-way 1-shot", "CIFAR-FS 5-way 5-shot"]
    assert sorted((s["row"], s["reason"]) for s in doc["skipped"]) == [
        ("resnet12 (clce)", "no_baseline_cell"), ("resnet12 (supcon)", "different_episodes")]
    assert "Not tested against the baseline: resnet12 (clce), CIFAR-FS 10-way 1-shot (no baseline result); " \
           "resnet12 (supcon), CIFAR-FS 5-way 1-shot (other episodes)." in doc["caption"]
