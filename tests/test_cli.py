"""The whole CLI path on tiny synthetic files in the real on-disk formats."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.cli import main
from fewshot_bench.episodes import (
    EpisodeSet,
    EpisodeSpec,
    data_identity,
    default_filename,
    shipped_folder,
    structure_identity,
)

import synth


@pytest.fixture()
def env(tmp_path):
    """CIFAR-FS MetaOptNet pickles (train + test, 3 images per class) and a Conv-4 checkpoint."""
    data = tmp_path / "data"
    synth.write_cifar_pickle(data, "cifar-fs", splits=("train", "test"))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "conv4.pt", create_backbone("conv4", image_size=32),
                           {"loss": "ce", "dataset": "cifar-fs"})
    return {"root": tmp_path, "data": data, "ckpt": ckpt, "cache": tmp_path / "cache",
            "episodes": tmp_path / "episodes"}


def _eval(env, out, *extra):
    return main(["eval", "--checkpoint", str(env["ckpt"]), "--arch", "conv4", "--dataset", "cifar-fs",
                 "--data-root", str(env["data"]), "--ways", "5", "--shots", "1", "2", "--queries", "1",
                 "--episodes", "40", "--cache-dir", str(env["cache"]), "--episodes-dir", str(env["episodes"]),
                 "--out", str(out), *extra])


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def test_eval_writes_run_folder_and_matches_scipy(env, capsys):
    run = env["root"] / "run"
    assert _eval(env, run, "--methods", "protonet", "simpleshot") == 0
    out = capsys.readouterr().out
    assert "protonet" in out and "simpleshot" in out and "5-way 2-shot" in out
    df = pd.read_csv(run / "per_episode.csv")
    assert list(df.columns[:8]) == ["dataset", "split", "ways", "shots", "queries", "method", "episode", "accuracy"]
    assert len(df) == 2 * 2 * 40 and df["accuracy"].between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint"]["sha256"] and summary["checkpoint"]["meta"]["loss"] == "ce"
    assert {e["shots"] for e in summary["episode_files"]} == {1, 2}
    assert summary["config"]["episodes"] == 40 and "torch" in summary["packages"]
    for r in summary["results"]:
        acc = df[(df.shots == r["shots"]) & (df.method == r["method"])]["accuracy"].to_numpy()
        lo, hi = scipy.stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=scipy.stats.sem(acc))
        assert r["mean"] == pytest.approx(acc.mean(), abs=1e-12)
        assert r["ci95"] == pytest.approx((hi - lo) / 2, abs=1e-12)
        assert r["std"] == pytest.approx(acc.std(ddof=1), abs=1e-12)
        assert r["n_episodes"] == 40 and r["ci_method"] == "t" and r["transductive"] is False
    # the episode files record the data they were drawn from
    eps = EpisodeSet.load(summary["episode_files"][0]["file"])
    assert eps.path == env["episodes"] / default_filename("cifar-fs", "test", EpisodeSpec(5, 1, 1, 40, 0),
                                                          data_identity(eps.data_fingerprint))
    assert eps.data_fingerprint is not None and eps.sha256() == summary["episode_files"][0]["sha256"]


def test_second_eval_is_bit_identical_and_skips_the_backbone(env, capsys, monkeypatch):
    assert _eval(env, env["root"] / "a") == 0
    import fewshot_bench.features as features
    monkeypatch.setattr(features, "create_backbone", lambda *a, **k: pytest.fail("backbone was rebuilt"),
                        raising=False)
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("features were re-extracted"))
    assert _eval(env, env["root"] / "b") == 0
    a = (env["root"] / "a" / "per_episode.csv").read_bytes()
    assert a == (env["root"] / "b" / "per_episode.csv").read_bytes()
    ra = json.loads((env["root"] / "a" / "summary.json").read_text())["results"]
    rb = json.loads((env["root"] / "b" / "summary.json").read_text())["results"]
    assert ra == rb


def test_episodes_command_is_byte_stable_and_needs_no_data(tmp_path, capsys):
    args = ["episodes", "--dataset", "cifar-fs", "--split", "test", "--shots", "1", "--episodes", "50"]
    assert main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--out-dir", str(tmp_path / "b")]) == 0
    from fewshot_bench.data import class_structure

    name = default_filename("cifar-fs", "test", EpisodeSpec(5, 1, 15, 50, 0),
                            structure_identity(*class_structure("cifar-fs", "test")))
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    eps = EpisodeSet.load(tmp_path / "a" / name)
    assert eps.data_fingerprint is None and eps.class_sizes == (600,) * 20


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("dataset", ["cifar-fs", "fc100", "miniimagenet"])
def test_shipped_episode_files_are_the_canonical_draws(dataset, split, shots, request):
    """The shipped files (package data) are exactly what `fewshot-bench episodes` regenerates."""
    from fewshot_bench.data import class_structure

    names, sizes = class_structure(dataset, split)
    shipped = shipped_folder() / default_filename(dataset, split, EpisodeSpec(shots=shots),
                                                  structure_identity(names, sizes))
    assert shipped.is_file(), f"{shipped.name} is no longer shipped in fewshot_bench/episode_files/"
    fresh = EpisodeSet.draw(EpisodeSpec(shots=shots), dataset=dataset, split=split, class_names=names,
                            class_sizes=sizes)
    assert fresh.to_bytes() == shipped.read_bytes()


@pytest.mark.parametrize("shots", [1, 5])
def test_shipped_digits_episodes_are_the_demo_draws(shots, request, tmp_path):
    """The demo's shipped episode files are bound to scikit-learn's digits and regenerate byte for byte."""
    from fewshot_bench.data.digits import load_digits_split

    novel = load_digits_split("test", cache_dir=tmp_path)
    shipped = shipped_folder() / default_filename("digits", "test", EpisodeSpec(shots=shots),
                                                  data_identity(novel.fingerprint))
    assert shipped.is_file(), f"{shipped.name} is no longer shipped in fewshot_bench/episode_files/"
    fresh = EpisodeSet.from_split(EpisodeSpec(shots=shots), novel)
    assert fresh.data_fingerprint == novel.fingerprint
    assert fresh.to_bytes() == shipped.read_bytes()


def test_datasets_lists_what_is_found(env, capsys):
    assert main(["datasets", "--data-root", str(env["data"])]) == 0
    out = capsys.readouterr().out
    assert "cifar-fs" in out and "metaoptnet-pickle" in out and "train, test" in out


def test_methods_lists_registry(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"protonet", "simpleshot", "logistic"} <= {r["name"] for r in rows}


def test_prepare_then_eval_from_raw_cifar100(tmp_path, capsys):
    raw = synth.write_cifar100_raw(tmp_path / "raw")
    assert main(["prepare", "fc100", "--cifar100", str(raw), "--out", str(tmp_path / "fc100")]) == 0
    assert (tmp_path / "fc100" / "FC100_test.pickle").is_file()
    rc = main(["eval", "--checkpoint", "none", "--arch", "conv4", "--dataset", "fc100", "--data-root",
               str(tmp_path / "fc100"), "--shots", "1", "--queries", "1", "--episodes", "10", "--cache-dir",
               str(tmp_path / "cache"), "--episodes-dir", str(tmp_path / "eps"), "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err


def test_finetune_extract_eval_compare_table(tmp_path, capsys):
    data = synth.write_image_folder(tmp_path / "folder", style="split-folders", per_class=4)
    common = ["--dataset", "image-folder", "--data-root", str(data), "--image-size", "16",
              "--cache-dir", str(tmp_path / "cache")]
    for loss in ("ce", "clce"):
        rc = main(["finetune", "--arch", "conv4", *common, "--loss", loss, "--epochs", "1", "--batch-size", "4",
                   "--transform", "unit", "--out", str(tmp_path / f"{loss}.pt")])
        assert rc == 0, capsys.readouterr().err
    assert torch.load(tmp_path / "clce.pt", weights_only=True)["fewshot_bench"]["loss"] == "clce"
    assert main(["extract", "--checkpoint", str(tmp_path / "ce.pt"), "--arch", "conv4", *common[:2],
                 *common[2:], "--split", "test"]) == 0  # the checkpoint's protocol says unit, 16 px
    assert "features" in capsys.readouterr().out
    runs = []
    for loss in ("ce", "clce"):
        runs.append(str(tmp_path / f"run-{loss}"))
        rc = main(["eval", "--checkpoint", str(tmp_path / f"{loss}.pt"), "--arch", "conv4", *common,
                   "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "30",
                   "--episodes-dir", str(tmp_path / "eps"), "--methods", "protonet", "logistic",
                   "--out", runs[-1]])
        assert rc == 0, capsys.readouterr().err
    assert main(["compare", *runs]) == 0
    compared = json.loads((tmp_path / "run-ce" / "compare.json").read_text())
    assert "30 test episodes, 3-way 1-shot, 2 queries per class" in compared["protocol"]
    assert "protocol: " in capsys.readouterr().out
    assert main(["table", *runs, "--format", "markdown", "--baseline", runs[0]]) == 0
    table = capsys.readouterr().out
    assert "±" in table and "1-shot" in table


@pytest.mark.parametrize("argv, fragments", [
    (["--data-root", "{root}/missing"], ["--data-root", "does not exist"]),
    (["--dataset", "cifar-fss"], ["unknown dataset 'cifar-fss'", "did you mean: cifar-fs"]),
    (["--methods", "protonett"], ["unknown method 'protonett'", "protonet"]),
    (["--arch", "resnet13"], ["unknown architecture 'resnet13'", "resnet12"]),
    (["--ways", "30"], ["--ways 30 is more than the 20 classes"]),
    (["--queries", "5"], ["--shots 1 + --queries 5 = 6 images per class", "has 3"]),
    (["--param", "protonet"], ["--param 'protonet' is not METHOD.NAME=VALUE"]),
    (["--checkpoint", "{root}/nope.pt"], ["--checkpoint", "does not exist"]),
])
def test_user_errors_are_one_line(env, capsys, argv, fragments):
    base = {"--checkpoint": str(env["ckpt"]), "--arch": "conv4", "--dataset": "cifar-fs",
            "--data-root": str(env["data"]), "--shots": "1", "--queries": "1", "--episodes": "5",
            "--cache-dir": str(env["cache"]), "--episodes-dir": str(env["episodes"]),
            "--out": str(env["root"] / "run")}
    extra = [a.format(root=env["root"]) for a in argv]
    for flag in extra[::2]:
        base.pop(flag, None)
    args = ["eval", *[x for kv in base.items() for x in kv], *extra]
    assert main(args) == 1
    _one_line_error(capsys, *fragments)


def test_checkpoint_of_another_arch_is_refused(env, capsys):
    assert main(["eval", "--checkpoint", str(env["ckpt"]), "--arch", "resnet12", "--dataset", "cifar-fs",
                 "--data-root", str(env["data"]), "--shots", "1", "--queries", "1", "--episodes", "5",
                 "--cache-dir", str(env["cache"]), "--episodes-dir", str(env["episodes"]),
                 "--out", str(env["root"] / "run")]) == 1
    _one_line_error(capsys, "--arch resnet12 contradicts the checkpoint (conv4); drop --arch, or add --force-protocol")


def test_episode_file_from_other_data_is_refused(env, capsys):
    spec = EpisodeSpec(5, 1, 1, 5, 0)
    names = [f"class{i}" for i in range(20)]
    from fewshot_bench.data import load_split

    fingerprint = load_split("cifar-fs", "test", env["data"], cache_dir=env["cache"], progress=False).fingerprint
    EpisodeSet.draw(spec, dataset="cifar-fs", split="test", class_names=names, class_sizes=[3] * 20).save(
        env["episodes"] / default_filename("cifar-fs", "test", spec, data_identity(fingerprint)))
    assert main(["eval", "--checkpoint", str(env["ckpt"]), "--arch", "conv4", "--dataset", "cifar-fs",
                 "--data-root", str(env["data"]), "--shots", "1", "--queries", "1", "--episodes", "5",
                 "--cache-dir", str(env["cache"]), "--episodes-dir", str(env["episodes"]),
                 "--out", str(env["root"] / "run")]) == 1
    _one_line_error(capsys, "episode file", "different ones")


def test_module_entry_point_and_no_traceback_in_a_real_process(tmp_path):
    help_ = subprocess.run([sys.executable, "-m", "fewshot_bench", "eval", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--checkpoint" in help_.stdout
    bad = subprocess.run([sys.executable, "-m", "fewshot_bench", "eval", "--checkpoint", "none", "--arch", "conv4",
                          "--dataset", "cifar-fs", "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("Error: --data-root") and len(bad.stderr.strip().splitlines()) == 1


def test_demo_runs_small(tmp_path, capsys):
    from fewshot_bench.demo import run_demo

    runs = run_demo(tmp_path / "demo", episodes=30, epochs=1, episodes_dir=tmp_path / "eps",
                    cache_dir=tmp_path / "cache", progress=False)
    out = capsys.readouterr().out
    assert "paired comparison" in out and "5-way 5-shot" in out
    for loss in ("ce", "clce"):
        summary = json.loads((runs[loss] / "summary.json").read_text())
        assert summary["checkpoint"]["meta"]["loss"] == loss
        assert {r["shots"] for r in summary["results"]} == {1, 5}
        assert all(0.2 < r["mean"] <= 1.0 for r in summary["results"])  # well above... chance is 0.2
    assert json.loads(runs["compare"].read_text())
    a = pd.read_csv(runs["ce"] / "per_episode.csv")
    b = pd.read_csv(runs["clce"] / "per_episode.csv")
    assert np.array_equal(a[["shots", "episode"]].to_numpy(), b[["shots", "episode"]].to_numpy())


def _subcommands():
    from fewshot_bench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", [None, *_subcommands()])
def test_help_of_every_command_renders(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fewshot-bench") and "(default: None)" not in out


def test_plot_and_diagnose_commands(tmp_path, capsys):
    """`plot` writes PNG+PDF figures of runs; `diagnose` reports isotropy on cached features (digits, no download)."""
    from runs import make_run

    rng = np.random.default_rng(0)
    accs = {("digits", k, "protonet"): rng.integers(0, 76, 50) / 75 for k in (1, 5)}
    a = make_run(tmp_path / "a", accs)
    b = make_run(tmp_path / "b", {k: np.clip(v + 0.02, 0, 1) for k, v in accs.items()})
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "plots")]) == 0
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["accuracy.pdf", "accuracy.png", "differences.pdf", "differences.png",
                       "paired_differences_b_vs_a.pdf", "paired_differences_b_vs_a.png", "plots.json"]
    capsys.readouterr()
    assert main(["diagnose", "--checkpoint", "none", "--arch", "conv4", "--dataset", "digits", "--data-root",
                 str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "diag")]) == 0
    out = capsys.readouterr().out
    assert "isotropy" in out.lower()
    assert (tmp_path / "diag" / "similarity.png").is_file() and (tmp_path / "diag" / "similarity.pdf").is_file()


def test_extract_fills_the_entry_eval_reads_for_a_finetuned_checkpoint(tmp_path, capsys, monkeypatch):
    """extract and eval pick the same transform (the checkpoint's own), so eval never rebuilds the backbone."""
    data = synth.write_image_folder(tmp_path / "folder", style="split-folders", per_class=4)
    common = ["--dataset", "image-folder", "--data-root", str(data), "--image-size", "16",
              "--cache-dir", str(tmp_path / "cache")]
    ckpt = str(tmp_path / "ce.pt")
    assert main(["finetune", "--arch", "conv4", *common, "--epochs", "1", "--batch-size", "4",
                 "--transform", "unit", "--out", ckpt]) == 0
    assert main(["extract", "--checkpoint", ckpt, "--arch", "conv4", *common, "--split", "test"]) == 0
    assert "(transform unit)" in capsys.readouterr().out  # not the dataset default, imagenet-84
    import fewshot_bench.features as features
    monkeypatch.setattr(features, "create_backbone", lambda *a, **k: pytest.fail("backbone was rebuilt"),
                        raising=False)
    assert main(["eval", "--checkpoint", ckpt, "--arch", "conv4", *common, "--ways", "3", "--shots", "1",
                 "--queries", "2", "--episodes", "10", "--episodes-dir", str(tmp_path / "eps"),
                 "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["transforms"]["image-folder"]["name"] == "unit"


def test_finetune_seeds_validation_keep_best_and_log(tmp_path, capsys):
    data = synth.write_image_folder(tmp_path / "folder", style="split-folders", per_class=4)
    common = ["finetune", "--arch", "conv4", "--dataset", "image-folder", "--data-root", str(data),
              "--image-size", "16", "--cache-dir", str(tmp_path / "cache"), "--transform", "unit",
              "--epochs", "2", "--batch-size", "4"]
    rc = main([*common, "--loss", "clce", "--lam", "0.8", "--contrast-on", "projection", "--seeds", "0", "1",
               "--val-every", "1", "--val-ways", "2", "--val-queries", "1", "--val-episodes", "5",
               "--keep", "best", "--log", str(tmp_path / "train.log.jsonl"), "--out", str(tmp_path / "m.pt")])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for seed in (0, 1):
        ckpt = tmp_path / f"m-seed{seed}.pt"
        assert f"wrote {ckpt}" in out
        meta = torch.load(ckpt, weights_only=True)["fewshot_bench"]
        assert (meta["seed"], meta["loss"], meta["lam"], meta["contrast_on"], meta["keep"]) == (
            seed, "clce", 0.8, "projection", "best")
        assert meta["selected_epoch"] in (1, 2) and [v["epoch"] for v in meta["val"]] == [1, 2]
        assert meta["val_spec"]["ways"] == 2 and meta["protocol"]["image_size"] == 16
        lines = (tmp_path / f"train-seed{seed}.log.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert main([*common, "--seed", "3", "--out", str(tmp_path / "one.pt")]) == 0
    assert torch.load(tmp_path / "one.pt", weights_only=True)["fewshot_bench"]["seed"] == 3
    assert (tmp_path / "one.log.jsonl").is_file()


def test_finetune_takes_a_loss_from_a_file_and_lists_the_registry(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_loss.py").write_text(
        "import torch.nn.functional as F\n"
        "from fewshot_bench.train.losses import LossTerms, TrainingLoss\n"
        "class Smoothed(TrainingLoss):\n"
        "    name = 'smoothed'\n"
        "    uses_ce = True\n"
        "    def __init__(self, eps: float = 0.2):\n"
        "        self.eps = eps\n"
        "    def compute(self, logits, z, labels, z_labels):\n"
        "        ce = F.cross_entropy(logits, labels, label_smoothing=self.eps)\n"
        "        return LossTerms(ce, ce, None)\n")
    data = synth.write_image_folder(tmp_path / "folder", style="split-folders", per_class=4)
    rc = main(["finetune", "--arch", "conv4", "--dataset", "image-folder", "--data-root", str(data), "--image-size",
               "16", "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "4",
               "--loss", f"{tmp_path / 'my_loss.py'}:Smoothed", "--out", str(tmp_path / "s.pt")])
    assert rc == 0, capsys.readouterr().err
    meta = torch.load(tmp_path / "s.pt", weights_only=True)["fewshot_bench"]
    assert (meta["loss"], meta["loss_params"], meta["loss_spec"]) == (
        "smoothed", {"eps": 0.2}, f"{tmp_path / 'my_loss.py'}:Smoothed")
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside names such as clce-nohnm
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = capsys.readouterr().out
    from fewshot_bench.train.losses import available_losses
    assert all(name in help_text for name in available_losses()) and "--contrast-on" in help_text


@pytest.mark.parametrize("argv, fragment", [
    (["--seed", "1", "--seeds", "2"], "give --seed S or --seeds S [S ...], not both"),
    (["--val-every", "1"], "--val-every 1 needs the val split of digits"),  # digits: train and test only
    (["--keep", "best"], "--keep best needs validation: add --val-every N"),
])
def test_finetune_flag_errors_are_one_line(tmp_path, capsys, argv, fragment):
    rc = main(["finetune", "--arch", "conv4", "--dataset", "digits", "--data-root", str(tmp_path), "--cache-dir",
               str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "4", *argv, "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 1 and fragment in err and err.count("\n") == 1, err


def test_param_names_follow_the_last_dot_so_method_files_keep_their_paths():
    from fewshot_bench.cli import _method_params

    assert _method_params(["logistic.C=0.5", "knn.k=3", "knn.metric=cosine"]) == {
        "logistic": {"C": 0.5}, "knn": {"k": 3, "metric": "cosine"}}
    assert _method_params(["my/head.v2.py:Head.steps=2", "ridge:r2d2.alpha=50"]) == {
        "my/head.v2.py:Head": {"steps": 2}, "ridge:r2d2": {"alpha": 50}}
    for bad in (["knn"], ["knn.k"], [".k=3"], ["knn.=3"]):
        with pytest.raises(Exception, match=r"is not METHOD\.NAME=VALUE"):
            _method_params(bad)
