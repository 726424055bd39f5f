"""Issue 11 through the CLI: a published checkpoint is evaluated under its paper's protocol, and
``eval`` always says (and stores) where the features came from: sha256, format, preset, load
report, protocol. Contradictions and misfits are one-line refusals that write nothing."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from fewshot_bench.backbones import create_backbone
from fewshot_bench.cli import main

import synth

EPISODES = ["--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "20"]


@pytest.fixture()
def world(tmp_path):
    data = tmp_path / "data"
    synth.write_cifar_pickle(data, "cifar-fs", splits=("test",))
    return {"data": data, "common": ["--dataset", "cifar-fs", "--data-root", str(data), "--cache-dir",
                                     str(tmp_path / "cache"), "--episodes-dir", str(tmp_path / "eps"), *EPISODES]}


def _rfs_file(path, arch: str, seed: int = 0):
    """An RFS ``*_last.pth``: {'opt': Namespace, 'model': DataParallel keys + classifier} (train_supervised.py)."""
    torch.manual_seed(seed)
    model = create_backbone(arch)
    with torch.no_grad():  # non-trivial BN statistics, so a dropped key would change the features
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd["module.classifier.weight"], sd["module.classifier.bias"] = torch.randn(64, 640), torch.zeros(64)
    torch.save({"opt": argparse.Namespace(model="resnet12", dataset="CIFAR-FS", n_cls=64), "model": sd}, path)
    return model.state_dict()


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def test_rfs_se_checkpoint_under_its_preset_records_where_features_come_from(world, tmp_path, capsys):
    ckpt = tmp_path / "rfs_seresnet12_last.pth"
    plain_sd = _rfs_file(ckpt, "seresnet12")
    rc = main(["eval", "--checkpoint", str(ckpt), "--preset", "rfs-seresnet12", *world["common"],
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 0, err
    s = _summary(tmp_path / "run")
    c = s["checkpoint"]
    assert c["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (c["format"], c["preset"], c["arch"]) == ("rfs", "rfs-seresnet12", "seresnet12")
    rep = c["load_report"]
    assert rep["format"] == "rfs" and rep["missing"]["count"] == 0 and rep["unexpected"]["count"] == 0
    assert set(rep["dropped"]) >= {"classifier-head", "training-metadata"}
    p = s["protocols"]["cifar-fs"]
    assert (p["transform"], p["image_size"], p["pool"], p["source"], p["forced"]) == (
        "rfs-cifar", 32, "avg", "preset rfs-seresnet12", False)
    assert p["mean"] == pytest.approx([0.5071, 0.4867, 0.4408]) and p["feature_dim"] == 640
    assert "load rfs format" in err and "protocol rfs-cifar: 32 px" in err and c["sha256"][:16] in err

    from fewshot_bench.report import load_run, make_table

    caption = make_table([load_run(tmp_path / "run")], fmt="latex")
    assert "input protocol rfs-cifar 32 px, avg pool [preset rfs-seresnet12]" in caption

    # the preset is exactly the explicit protocol: same per-episode results from a plain state dict
    plain = tmp_path / "plain.pt"
    torch.save(plain_sd, plain)
    assert main(["eval", "--checkpoint", str(plain), "--arch", "seresnet12", "--transform", "rfs-cifar",
                 "--pool", "avg", *world["common"], "--out", str(tmp_path / "plain-run")]) == 0
    assert (tmp_path / "run" / "per_episode.csv").read_bytes() == (
        tmp_path / "plain-run" / "per_episode.csv").read_bytes()


def test_se_checkpoint_under_plain_resnet12_is_refused_in_one_line(world, tmp_path, capsys):
    ckpt = tmp_path / "rfs_se.pth"
    _rfs_file(ckpt, "seresnet12")
    rc = main(["eval", "--checkpoint", str(ckpt), "--arch", "resnet12", *world["common"],
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("Error: ")
    assert "16 unexpected keys" in err[0] and "--arch seresnet12" in err[0]
    assert not (tmp_path / "run").exists()


def test_metaoptnet_preset_flattens_the_map(world, tmp_path, capsys):
    ckpt = tmp_path / "r12.pt"
    torch.manual_seed(1)
    torch.save({"embedding": {f"module.{k}": v for k, v in create_backbone("resnet12").state_dict().items()
                              if not k.endswith("num_batches_tracked")}}, ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--preset", "metaoptnet-resnet12", *world["common"],
                 "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    s = _summary(tmp_path / "run")
    assert s["checkpoint"]["format"] == "metaoptnet"
    p = s["protocols"]["cifar-fs"]
    assert (p["pool"], p["feature_dim"], p["transform"]) == ("none", 640 * 2 * 2, "metaoptnet-cifar")


def test_a_flag_contradicting_the_preset_is_refused_unless_forced(world, tmp_path, capsys):
    ckpt = tmp_path / "rfs.pth"
    _rfs_file(ckpt, "resnet12")
    argv = ["eval", "--checkpoint", str(ckpt), "--preset", "rfs-resnet12", "--transform", "metaoptnet-cifar",
            *world["common"]]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Error: --transform metaoptnet-cifar contradicts the preset rfs-resnet12, which says rfs-cifar; "
                   "drop the flag to evaluate as the preset rfs-resnet12 says, or add --force-protocol to "
                   "override it (recorded in summary.json)"]
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--force-protocol", "--out", str(tmp_path / "forced")]) == 0
    assert "FORCED over --transform metaoptnet-cifar" in capsys.readouterr().err
    p = _summary(tmp_path / "forced")["protocols"]["cifar-fs"]
    assert (p["transform"], p["forced"], p["overridden"]) == ("metaoptnet-cifar", True, ["--transform metaoptnet-cifar"])


def test_arch_contradicting_the_preset_is_refused(world, tmp_path, capsys):
    ckpt = tmp_path / "rfs.pth"
    _rfs_file(ckpt, "resnet12")
    assert main(["eval", "--checkpoint", str(ckpt), "--preset", "rfs-seresnet12", "--arch", "resnet12",
                 *world["common"], "--out", str(tmp_path / "run")]) == 1
    assert "--arch resnet12 contradicts the --preset rfs-seresnet12 (seresnet12)" in capsys.readouterr().err


def test_several_checkpoints_give_one_run_folder_each(world, tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"rfs-seed{seed}.pth")
        _rfs_file(paths[-1], "resnet12", seed=seed)
    assert main(["eval", "--checkpoint", *map(str, paths), "--preset", "rfs-resnet12", *world["common"],
                 "--out", str(tmp_path / "runs")]) == 0, capsys.readouterr().err
    sums = [_summary(tmp_path / "runs" / f"rfs-seed{seed}") for seed in (0, 1)]
    assert [s["checkpoint"]["path"] for s in sums] == [str(p) for p in paths]
    assert sums[0]["results"][0]["mean"] != sums[1]["results"][0]["mean"]


def test_the_training_size_travels_to_eval(tmp_path, capsys):
    """finetune --image-size 16 on 32-px CIFAR-FS: the checkpoint says 16 px and eval extracts at 16 px."""
    data = tmp_path / "data"
    synth.write_cifar_pickle(data, "cifar-fs", splits=("train", "test"))
    common = ["--dataset", "cifar-fs", "--data-root", str(data), "--cache-dir", str(tmp_path / "cache")]
    ckpt = tmp_path / "c16.pt"
    assert main(["finetune", "--arch", "conv4", *common, "--image-size", "16", "--epochs", "1",
                 "--batch-size", "32", "--out", str(ckpt)]) == 0, capsys.readouterr().err
    proto = torch.load(ckpt, weights_only=True)["fewshot_bench"]["protocol"]
    assert (proto["image_size"], proto["resize"], proto["pool"]) == (16, 16, "none")
    evaluate = ["eval", "--checkpoint", str(ckpt), *common, "--episodes-dir", str(tmp_path / "eps"), *EPISODES]
    assert main([*evaluate, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    p = _summary(tmp_path / "run")["protocols"]["cifar-fs"]
    assert (p["image_size"], p["feature_dim"], p["source"]) == (16, 64, "checkpoint")  # 64 ch x 1 x 1 at 16 px
    assert main([*evaluate, "--transform", "metaoptnet-cifar", "--out", str(tmp_path / "other")]) == 1
    assert "contradicts the checkpoint" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main([*evaluate, "--transform", "metaoptnet-cifar", "--force-protocol",
                 "--out", str(tmp_path / "forced")]) == 0
    p = _summary(tmp_path / "forced")["protocols"]["cifar-fs"]
    assert (p["image_size"], p["feature_dim"], p["forced"]) == (32, 256, True)


def test_a_narrow_conv4_is_refused_with_the_width_that_fits_then_loads(world, tmp_path, capsys):
    ckpt = tmp_path / "protonet32.pt"
    torch.manual_seed(2)
    torch.save({f"encoder.{k}": v for k, v in create_backbone("conv4", image_size=32, hidden=32).state_dict().items()},
               ckpt)
    argv = ["eval", "--checkpoint", str(ckpt), "--arch", "conv4", *world["common"]]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--arch-kw hidden=32" in err[0]
    assert main([*argv, "--arch-kw", "hidden=32", "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    s = _summary(tmp_path / "run")
    assert s["checkpoint"]["arch_kwargs"] == {"hidden": 32} and s["protocols"]["cifar-fs"]["feature_dim"] == 32 * 2 * 2


def test_eval_decodes_an_image_folder_at_the_size_the_checkpoint_was_trained_from(tmp_path, capsys):
    data = synth.write_image_folder(tmp_path / "folder", style="split-folders", per_class=4)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    ckpt = tmp_path / "f16.pt"
    assert main(["finetune", "--arch", "conv4", "--dataset", "image-folder", "--data-root", str(data),
                 "--image-size", "16", *cache, "--epochs", "1", "--batch-size", "4", "--out", str(ckpt)]) == 0
    assert torch.load(ckpt, weights_only=True)["fewshot_bench"]["data_image_size"] == 16
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "image-folder", "--data-root", str(data), *cache,
                 "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "10",
                 "--episodes-dir", str(tmp_path / "eps"), "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    s = _summary(tmp_path / "run")
    assert s["config"]["image_size"] == 16  # the same decoded pixels as training, not 84 px resized by torch
    assert s["protocols"]["image-folder"]["image_size"] == 16
