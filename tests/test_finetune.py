"""Fine-tuning on a tiny synthetic split: every loss, determinism, resume, metadata, errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_bench.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from fewshot_bench.train import finetune, state_path
from fewshot_bench.train.losses import available_losses, create_loss

try:
    from fewshot_bench.data.base import Split
except ImportError:  # data package not importable yet: the documented fields suffice

    @dataclass(frozen=True)
    class Split:  # type: ignore[no-redef]
        dataset: str
        split: str
        images: np.ndarray
        labels: np.ndarray
        class_names: tuple
        fingerprint: str
        source: str


FAST = dict(batch_size=16, lr=3e-3, transform="unit", progress=False, arch_kwargs={"hidden": 16})


def make_split(n_classes: int = 4, per_class: int = 16, side: int = 16, seed: int = 0) -> Split:
    """``n_classes`` × ``per_class`` images of ``side`` px: a class colour plus noise and a bright square."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(n_classes, 3))
    images, labels = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            img = colours[c] + rng.normal(0, 20, size=(side, side, 3))
            y0, x0 = rng.integers(0, side // 2, size=2)
            img[y0 : y0 + side // 4, x0 : x0 + side // 4] += 60 * (c % 2) - 30
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return Split(
        "synthetic",
        "train",
        np.stack(images),
        np.array(labels, dtype=np.int64),
        tuple(f"class{c}" for c in range(n_classes)),
        f"fp-{seed}",
        "made in tests",
    )


@pytest.fixture(scope="module")
def split() -> Split:
    return make_split()


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _weights(path: Path) -> dict:
    return _load(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss", available_losses())
def test_every_loss_trains_and_writes_a_clean_backbone_checkpoint(split, tmp_path, loss):
    logs: list[dict] = []
    loss_fn = create_loss(loss)
    out = finetune(split, "conv4", loss=loss, epochs=1, out=tmp_path / "m.pt", log=logs.append, **FAST)
    assert out == tmp_path / "m.pt" and out.exists()
    ckpt = _load(out)
    assert set(ckpt) == {"state_dict", "fewshot_bench"}
    assert not any(k.startswith(("head", "projection", "backbone.")) for k in ckpt["state_dict"])
    meta = ckpt["fewshot_bench"]
    for key in (
        "arch",
        "loss",
        "temperature",
        "lam",
        "batch_size",
        "epochs",
        "lr",
        "optimizer",
        "seed",
        "dataset",
        "data_fingerprint",
        "fewshot_bench_version",
        "n_classes",
        "image_size",
        "final_train_loss",
        "loss_params",
        "contrast_on",
        "val",
        "keep",
        "selected_epoch",
        "pretrained",
        "protocol",
        "log",
    ):
        assert key in meta, key
    assert (meta["arch"], meta["loss"], meta["dataset"], meta["data_fingerprint"]) == (
        "conv4",
        loss,
        "synthetic",
        "fp-0",
    )
    assert (meta["n_classes"], meta["image_size"], meta["epochs"], meta["batch_size"]) == (4, 16, 1, 16)
    assert meta["loss_params"] == loss_fn.params and meta["lam"] == loss_fn.params.get("lam")
    assert meta["contrast_on"] == ("encoder" if loss_fn.uses_contrastive else None)
    assert (meta["val"], meta["keep"], meta["selected_epoch"], meta["pretrained"]) == (None, "last", 1, None)
    assert meta["protocol"] == {"transform": "unit", "image_size": 16, "resize": None, "crop": False,
                                "mean": None, "std": None, "pool": "none", "feature_layer": "final"}
    assert meta["log"] == str(tmp_path / "m.log.jsonl") and (tmp_path / "m.log.jsonl").is_file()
    assert np.isfinite(meta["final_train_loss"]) and meta["final_train_loss"] == pytest.approx(
        logs[-1]["loss"]
    )
    assert (logs[-1]["ce"] is None) == (not loss_fn.uses_ce)
    assert (logs[-1]["contrastive"] is None) == (not loss_fn.uses_contrastive)
    state = _load(state_path(out))  # the resume state loads with weights_only too
    assert state["epoch"] == 1 and state["config"]["loss"] == loss
    assert (state["head"] is None) == (not loss_fn.uses_ce) and state["projection"] is None
    from fewshot_bench.backbones import create_backbone, load_checkpoint

    report = load_checkpoint(out, create_backbone("conv4", image_size=16, hidden=16))
    assert not report.missing and not report.unexpected and report.meta["loss"] == loss


def test_same_seed_same_weights_other_seed_other_weights(split, tmp_path):
    a = finetune(split, "conv4", loss="clce", epochs=1, seed=3, out=tmp_path / "a.pt", **FAST)
    b = finetune(split, "conv4", loss="clce", epochs=1, seed=3, out=tmp_path / "b.pt", **FAST)
    c = finetune(split, "conv4", loss="clce", epochs=1, seed=4, out=tmp_path / "c.pt", **FAST)
    assert _same(_weights(a), _weights(b))
    assert not _same(_weights(a), _weights(c))


class _Crash(RuntimeError):
    pass


def _crash_after_first_epoch(entry: dict) -> None:
    if entry["epoch"] == 1:
        raise _Crash


@pytest.mark.parametrize("loss, optimizer", [("clce", "adamw"), ("ce", "sgd")])
def test_resume_is_bit_identical(split, tmp_path, loss, optimizer):
    kw = dict(FAST, loss=loss, optimizer=optimizer, epochs=2, warmup_epochs=1)
    straight = finetune(split, "conv4", out=tmp_path / "straight.pt", **kw)
    out = tmp_path / "resumed.pt"
    with pytest.raises(_Crash):
        finetune(split, "conv4", out=out, log=_crash_after_first_epoch, **kw)
    assert not out.exists() and state_path(out).exists()
    finetune(split, "conv4", out=out, resume=True, **kw)
    assert _same(_weights(straight), _weights(out))
    assert (
        _load(straight)["fewshot_bench"]["train_loss_history"]
        == _load(out)["fewshot_bench"]["train_loss_history"]
    )
    s1, s2 = _load(state_path(straight)), _load(state_path(out))
    for part in ("head", "projection"):
        assert (s1[part] is None and s2[part] is None) or _same(s1[part], s2[part])
    # resuming a finished run only rewrites the checkpoint
    finetune(split, "conv4", out=out, resume=True, **kw)
    assert _same(_weights(straight), _weights(out))


def test_resume_refuses_other_settings(split, tmp_path):
    out = tmp_path / "m.pt"
    finetune(split, "conv4", loss="ce", epochs=1, out=out, **FAST)
    with pytest.raises(ConfigError, match=r"m\.state\.pt: written with loss='ce', now loss='clce'"):
        finetune(split, "conv4", loss="clce", epochs=1, out=out, resume=True, **FAST)
    state_path(out).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read the resume state"):
        finetune(split, "conv4", loss="ce", epochs=1, out=out, resume=True, **FAST)


def test_ce_training_reduces_the_loss(split, tmp_path):
    logs: list[dict] = []
    finetune(
        split, "conv4", loss="ce", epochs=4, out=tmp_path / "ce.pt", log=logs.append, **dict(FAST, lr=1e-2)
    )
    losses = [entry["loss"] for entry in logs]
    assert losses[-1] < 0.7 * losses[0], losses


def test_caller_rng_and_global_flags_are_left_alone(split, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    flag = torch.are_deterministic_algorithms_enabled()
    finetune(split, "conv4", loss="supcon", epochs=1, out=tmp_path / "s.pt", **FAST)
    assert torch.equal(before, torch.get_rng_state())
    assert torch.are_deterministic_algorithms_enabled() == flag


def test_a_custom_module_without_out_dim(split, tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    logs: list[dict] = []
    out = finetune(
        split,
        "tiny",
        backbone=net,
        loss="clce-nohnm",
        epochs=1,
        out=tmp_path / "t.pt",
        augment=False,
        log=logs.append,
        **FAST,
    )
    assert set(_weights(out)) == set(net.state_dict()) and _load(out)["fewshot_bench"]["arch"] == "tiny"
    assert np.isfinite(logs[0]["loss"])


def test_state_path():
    assert state_path("checkpoints/clce.pt") == Path("checkpoints/clce.state.pt")
    assert state_path("run/model") == Path("run/model.state.pt")


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(epochs=0), ConfigError, r"--epochs 0 must be an integer >= 1"),
        (dict(loss="clse"), UnknownNameError, r"unknown loss 'clse' \(--loss\); did you mean: clce"),
        (dict(loss="supcon", batch_size=1), ConfigError, r"--batch-size 1 .*supcon needs 2 images per batch"),
        (dict(batch_size=100), ConfigError, r"has 64 images, fewer than --batch-size 100"),
        (dict(optimizer="adam"), UnknownNameError, r"unknown optimizer 'adam'.*did you mean: adamw"),
        (dict(lr=0.0), ConfigError, r"--lr 0.0 must be a positive number"),
        (dict(loss="clce", lam=1.5), ConfigError, r"--lam 1.5 is outside \[0, 1\]"),
        (dict(loss="clce", temperature=-1.0), ConfigError, r"--temperature -1.0 must be a positive number"),
        (dict(lam=0.5), ConfigError, r"^--lam 0.5: loss 'ce' has no lam \(its parameters: label_smoothing\); drop --lam"),
        (dict(loss="clce", contrast_on="z"), ConfigError, r"--contrast-on 'z': choose encoder or projection"),
        (dict(keep="first"), ConfigError, r"--keep 'first': choose last or best"),
        (dict(warmup_epochs=2, epochs=2), ConfigError, r"--warmup-epochs 2 must be smaller than --epochs 2"),
        (dict(amp=True), ConfigError, r"--amp needs a CUDA device"),
        (dict(image_size=32, transform=lambda x: x.permute(0, 3, 1, 2).float()), ConfigError,
         r"--image-size 32: the custom transform 'function' cannot be resized"),
        (dict(device="gpu"), ConfigError, r"--device 'gpu' is not a device"),
    ],
)
def test_bad_input_is_a_one_line_error(split, tmp_path, kw, err, match):
    args = dict(FAST, loss="ce", epochs=1, out=tmp_path / "x.pt")
    args.update(kw)
    with pytest.raises(err, match=match) as info:
        finetune(split, "conv4", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.pt").exists()


def test_bad_data_and_out(split, tmp_path):
    one_class = make_split(n_classes=1)
    with pytest.raises(DataError, match="has 1 class; fine-tuning needs at least 2"):
        finetune(one_class, "conv4", loss="ce", epochs=1, out=tmp_path / "x.pt", **FAST)
    with pytest.raises(ConfigError, match="is a folder"):
        finetune(split, "conv4", loss="ce", epochs=1, out=tmp_path, **FAST)
