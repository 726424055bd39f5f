"""The paper's studies as commands, smoke-tested at a tiny scale on the digits data: every recipe
goes through the real finetune -> eval -> table path and writes what it promises."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fewshot_bench.cli import main
from fewshot_bench.errors import ConfigError
from fewshot_bench.studies import Study

TRAIN = ["--arch", "conv4", "--dataset", "digits", "--epochs", "1", "--transform", "unit", "--no-flip"]
EVAL = ["--shots", "1", "--queries", "5", "--episodes", "20"]
TINY = [*TRAIN, "--batch-size", "64", "--seeds", "0", "1", *EVAL]


@pytest.fixture()
def dirs(tmp_path):
    return ["--data-root", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
            "--episodes-dir", str(tmp_path / "eps")]


def test_reproduce_writes_the_table1_layout_over_losses_and_seeds(tmp_path, dirs, capsys):
    out = tmp_path / "t1"
    assert main(["reproduce", *TINY, *dirs, "--losses", "ce", "clce", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for ext in ("tex", "md", "csv", "json"):
        assert (out / f"table.{ext}").is_file()
    cells = json.loads((out / "table.json").read_text())["rows"]
    ours = [c for c in cells if not c["reported"]]
    assert {c["n_seeds"] for c in ours} == {2} and len(ours) == 2  # one row per loss, two seeds each
    assert "median over 2" in (out / "table.tex").read_text()
    compared = json.loads((out / "compare.json").read_text())
    assert sorted((r["seed_a"], r["seed_b"]) for r in compared["comparisons"]) == [(0, 0), (1, 1)]  # seed by seed
    for loss in ("ce", "clce"):
        for seed in (0, 1):
            meta = json.loads((out / "runs" / "digits" / f"{loss}-seed{seed}" / "summary.json").read_text())
            assert (meta["checkpoint"]["meta"]["loss"], meta["checkpoint"]["meta"]["seed"]) == (loss, seed)
    assert "wrote" in printed
    # run again: every fine-tuning resumes as finished and the table is the same
    before = (out / "table.csv").read_text()
    assert main(["reproduce", *TINY, *dirs, "--losses", "ce", "clce", "--out", str(out)]) == 0
    assert (out / "table.csv").read_text() == before


def test_lambda_sweep_writes_table_and_plot(tmp_path, dirs, capsys):
    out = tmp_path / "lam"
    argv = ["sweep", "lambda", "--values", "0.5", "0.9", *TRAIN, "--batch-size", "64", "--seeds", "0", *EVAL, *dirs,
            "--losses", "clce", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    df = pd.read_csv(out / "sweep-lambda.csv")
    assert sorted(df["value"]) == [0.5, 0.9] and set(df["loss"]) == {"clce"}
    assert (out / "sweep-lambda.png").stat().st_size > 0 and (out / "sweep-lambda.pdf").is_file()
    lams = {json.loads((p / "summary.json").read_text())["checkpoint"]["meta"]["lam"]
            for p in (out / "runs" / "digits").iterdir()}
    assert lams == {0.5, 0.9}


def test_batch_size_sweep_records_each_batch_size(tmp_path, dirs, capsys):
    out = tmp_path / "bs"
    argv = ["sweep", "batch-size", "--values", "32", "64", *TRAIN, "--seeds", "0", *EVAL, *dirs,
            "--losses", "ce", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    sizes = {json.loads((p / "summary.json").read_text())["checkpoint"]["meta"]["batch_size"]
             for p in (out / "runs" / "digits").iterdir()}
    assert sizes == {32, 64}
    assert sorted(pd.read_csv(out / "sweep-batch-size.csv")["value"]) == [32, 64]


def test_loss_hyper_parameters_reach_only_the_losses_that_take_them():
    study = Study(arch="conv4", datasets=["digits"], losses=["ce", "clce"], finetune={"lam": 0.5, "epochs": 1})
    rows = {loss: kw for loss, kw, _ in study.settings()}
    assert rows["ce"] == {"epochs": 1} and rows["clce"] == {"lam": 0.5, "epochs": 1}
    with pytest.raises(ConfigError, match=r"^sweep lambda: loss ce has no lam"):
        Study(arch="conv4", datasets=["digits"], losses=["ce"], sweep="lambda", values=[0.5]).settings()


def test_a_loss_flag_no_loss_takes_is_refused():
    with pytest.raises(ConfigError, match=r"^--beta is taken by none of --losses clce"):
        Study(arch="conv4", datasets=["digits"], losses=["clce"], finetune={"beta": 5.0}).settings()


@pytest.mark.parametrize("argv, message", [
    (["sweep", "lambda", "--values", "0.5", "1.5", "--losses", "clce"], r"clce lambda=1.5: --lam 1.5 is outside \[0, 1\]"),
    (["sweep", "batch-size", "--values", "32", "32", "--losses", "ce"], r"--values lists 32 twice"),
    (["sweep", "lambda", "--values", "0.5", "--losses", "clce", "--lam", "0.3"], r"--lam 0.3 with sweep lambda"),
    (["reproduce", "--losses", "ce", "clcee"], r"unknown loss 'clcee' \(--losses\)"),
    (["reproduce", "--losses", "ce", "clce", "--methods", "protonett"], r"protonett"),
    (["reproduce", "--losses", "ce", "--contrast-on", "projection"], r"--contrast-on projection: ce has no contrastive"),
    (["reproduce", "--losses", "ce", "clce", "--dataset", "digitz"], r"digitz"),
])
def test_study_mistakes_fail_before_any_training(tmp_path, dirs, capsys, argv, message):
    out = tmp_path / "out"
    base = [a for a in TRAIN if a not in ("--dataset", "digits")] if "--dataset" in argv else TRAIN
    assert main([*argv, *base, "--seeds", "0", *EVAL, *dirs, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    import re

    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (out / "checkpoints").exists()
