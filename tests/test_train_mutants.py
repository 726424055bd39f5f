"""Training-loop behaviours a mutation sample of ``fewshot_bench/train`` showed untested.

The seed reaches every random stream (global RNG reseeded per epoch, the per-step augmentation
generator), the flip flag reaches the augmentation, resume restores the projection head and the
best-epoch state, the resume file records the schedule, validation defaults to 600 episodes and
records its CI, a step whose loss reaches no parameter logs grad norm 0, and the error messages
name the right flag. Tiny Conv-4 / one-conv backbones at 16 px on synthetic uint8 splits, CPU.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_finetune import make_split
from test_losses_reference import (
    _data,
    _mean,
    _pair_mean,
    literal_ce,
    literal_hscl_pairs,
    literal_lacln,
    literal_supcon,
)
from test_train_loop import _VAL, STEP, _Crash, _crash_at, _load, _Recorder, _val_split
from torch import nn

from fewshot_bench.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from fewshot_bench.train import finetune, read_log, state_path


@pytest.fixture(scope="module")
def tiny():
    return make_split(n_classes=4, per_class=2, side=16, seed=1)  # 8 images


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the seed reaches every RNG stream


class _GlobalDraw(nn.Module):
    """A backbone that draws from the global RNG in every forward (as dropout does) and keeps the draws."""

    out_dim = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # the same weights in every run: only the loop's seeding differs
        self.conv = nn.Conv2d(3, 3, 3)
        self.draws: list[float] = []

    def forward(self, x):
        self.draws.append(float(torch.rand(())))
        return self.conv(x).mean((2, 3))


def _draws(split, tmp_path, seed: int) -> list[float]:
    net = _GlobalDraw()
    finetune(split, "g", backbone=net, loss="ce", batch_size=8, seed=seed, out=tmp_path / f"g{seed}.pt",
             **{**STEP, "epochs": 2})
    return net.draws


def test_the_seed_reaches_the_global_rng_reseeded_every_epoch(tiny, tmp_path):
    a, again, b = _draws(tiny, tmp_path, 3), _draws(tiny, tmp_path, 3), _draws(tiny, tmp_path, 4)
    assert len(a) == 2 and a == again  # one step per epoch; one seed, one stream
    assert a[0] != a[1]  # reseeded from the epoch too
    assert a[0] != b[0] and a[1] != b[1]  # another seed, other dropout masks in every epoch


def test_the_seed_reaches_the_augmentation_generator(tmp_path):
    # every image is the same, so the shuffle (also seeded) cannot change what the network sees:
    # only the augmentation draws can
    base = make_split(n_classes=2, per_class=4, side=16, seed=5)
    same = dataclasses.replace(base, images=np.repeat(base.images[:1], len(base.labels), axis=0))
    seen = {}
    for seed in (3, 3, 4):
        rec = _Recorder()
        finetune(same, "rec", backbone=rec, loss="ce", batch_size=4, seed=seed, out=tmp_path / f"a{seed}.pt",
                 **{**STEP, "augment": True})
        assert len(rec.seen) == 2  # 2 steps
        if seed in seen:
            assert all(torch.equal(x, y) for x, y in zip(seen[seed], rec.seen))
        seen[seed] = rec.seen
    assert not torch.equal(seen[3][0], seen[3][1])  # a new draw every step
    assert not torch.equal(seen[3][0], seen[4][0]) and not torch.equal(seen[3][1], seen[4][1])


def _mirrored(x: torch.Tensor) -> torch.Tensor:
    """Which of the (B, 3, 16, 16) inputs of the bright-left / dark-right image were flipped.

    The random crop shifts by at most 2 px (pad = 16 // 8), so column 4 stays in the bright left
    half unless the image was mirrored.
    """
    return x[:, :, :, 4].mean((1, 2)) < 0.5


def test_the_flip_flag_reaches_the_augmentation(tmp_path):
    base = make_split(n_classes=2, per_class=8, side=16, seed=5)
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :8] = 255  # bright left half, dark right half
    half = dataclasses.replace(base, images=np.repeat(img[None], len(base.labels), axis=0))
    flipped = {}
    for flip in (True, False):
        rec = _Recorder()
        finetune(half, "rec", backbone=rec, loss="clce", batch_size=16, flip=flip, out=tmp_path / f"f{flip}.pt",
                 **{**STEP, "augment": True})
        (x,) = rec.seen
        assert x.shape == (32, 3, 16, 16)
        flipped[flip] = int(_mirrored(x).sum())
    assert 4 <= flipped[True] <= 28  # about half of the 32 views (P(outside) < 1e-4)
    assert flipped[False] == 0


# ------------------------------------------------------------------ resume restores everything


def _resumed(split, tmp_path, **kw):
    """(straight run, resumed run) checkpoints: the resumed one crashed after epoch 1."""
    straight = finetune(split, "conv4", out=tmp_path / "straight.pt", **kw)
    out = tmp_path / "resumed.pt"
    with pytest.raises(_Crash):
        finetune(split, "conv4", out=out, log=_crash_at(1), **kw)
    finetune(split, "conv4", out=out, resume=True, **kw)
    return straight, out


def test_resume_restores_the_projection_head(tmp_path):
    train = make_split(n_classes=4, per_class=2, side=16, seed=2)
    kw = dict(STEP, epochs=2, loss="clce", contrast_on="projection", batch_size=8)
    straight, out = _resumed(train, tmp_path, **kw)
    s1, s2 = _load(state_path(straight)), _load(state_path(out))
    assert s1["projection"] is not None and _same(s1["projection"], s2["projection"])
    assert _same(s1["head"], s2["head"])
    assert _same(_load(straight)["state_dict"], _load(out)["state_dict"])


def test_resume_keeps_the_best_epoch_seen_before_the_interruption(tiny, tmp_path, monkeypatch):
    import fewshot_bench.train.validate as validate

    scripted = iter([0.9, 0.5] + [0.7])  # the crashed run's 2 epochs, then the resumed one
    monkeypatch.setattr(validate, "val_accuracy", lambda *a, **k: (next(scripted), 0.01))
    kw = dict(STEP, epochs=3, loss="ce", batch_size=8, val_split=_val_split(), val_every=1, keep="best", **_VAL)
    out = tmp_path / "b.pt"
    with pytest.raises(_Crash):
        finetune(tiny, "conv4", out=out, log=_crash_at(2), **kw)
    epoch1 = _load(state_path(out))["best"]
    assert {k: v for k, v in epoch1.items() if k != "model"} == {"epoch": 1, "accuracy": 0.9, "ci95": 0.01}
    finetune(tiny, "conv4", out=out, resume=True, **kw)
    meta = _load(out)["fewshot_bench"]
    assert meta["selected_epoch"] == 1  # not epoch 3 (0.7), the best since the resume
    assert meta["val"] == [{"epoch": 1, "accuracy": 0.9, "ci95": 0.01}, {"epoch": 2, "accuracy": 0.5, "ci95": 0.01},
                           {"epoch": 3, "accuracy": 0.7, "ci95": 0.01}]
    assert _same(_load(out)["state_dict"], epoch1["model"])
    assert not _same(_load(out)["state_dict"], _load(state_path(out))["model"])  # the last epoch's differs


def test_the_resume_file_records_the_schedule(tiny, tmp_path):
    kw = dict(STEP, epochs=2, warmup_epochs=1, loss="ce", batch_size=4)  # 2 steps per epoch
    with pytest.raises(_Crash):
        finetune(tiny, "conv4", out=tmp_path / "s.pt", log=_crash_at(1), **kw)
    sched = {"kind": "warmup-cosine", "step": 2, "total_steps": 4, "warmup_steps": 2}
    assert _load(state_path(tmp_path / "s.pt"))["scheduler"] == sched
    finetune(tiny, "conv4", out=tmp_path / "s.pt", resume=True, **kw)
    assert _load(state_path(tmp_path / "s.pt"))["scheduler"] == dict(sched, step=4)


# ------------------------------------------------------------------ validation defaults


def test_validation_defaults_to_600_fixed_5_way_1_shot_episodes(tiny, tmp_path, monkeypatch):
    import fewshot_bench.train.validate as validate

    monkeypatch.setattr(validate, "val_accuracy", lambda *a, **k: (0.5, 0.02))
    val = dataclasses.replace(make_split(n_classes=5, per_class=16, side=16, seed=9), split="val")
    out = finetune(tiny, "conv4", loss="ce", batch_size=8, val_split=val, val_every=1, out=tmp_path / "v.pt",
                   **STEP)
    spec = _load(out)["fewshot_bench"]["val_spec"]
    assert (spec["episodes"], spec["ways"], spec["shots"], spec["queries"], spec["seed"]) == (600, 5, 1, 15, 0)
    assert read_log(tmp_path / "v.log.jsonl")[0]["val_ci95"] == 0.02


# ------------------------------------------------------------------ a step that reaches no parameter

_CONSTANT_LOSS = '''
import torch
from fewshot_bench.train.losses import LossTerms, TrainingLoss


class Constant(TrainingLoss):
    """A loss that does not depend on the network: no parameter gets a gradient."""

    name = "constant"
    uses_ce = True

    def compute(self, logits, z, labels, z_labels):
        c = torch.ones((), requires_grad=True)
        return LossTerms(total=c, ce=c, contrastive=None)
'''


def test_a_loss_that_reaches_no_parameter_logs_grad_norm_zero_and_leaves_the_weights(tiny, tmp_path):
    (tmp_path / "const.py").write_text(_CONSTANT_LOSS)
    logs: list[dict] = []
    out = finetune(tiny, "conv4", loss=f"{tmp_path / 'const.py'}:Constant", batch_size=8, out=tmp_path / "c.pt",
                   log=logs.append, **{**STEP, "optimizer": "adamw", "weight_decay": 0.1})
    assert logs[0]["grad_norm"] == 0.0 and logs[0]["loss"] == 1.0
    from fewshot_bench.backbones import create_backbone

    torch.manual_seed(0)  # the initial weights: the seed's first draws build the backbone
    init = dict(create_backbone("conv4", image_size=16, hidden=STEP["arch_kwargs"]["hidden"]).named_parameters())
    trained = _load(out)["state_dict"]
    assert init and all(torch.equal(trained[k], p) for k, p in init.items())  # no update, not even weight decay


# ------------------------------------------------------------------ what is recorded, what errors say


class _Unit:
    """A custom transform without a ``name``: recorded under its class name."""

    def __call__(self, x):
        return torch.as_tensor(np.asarray(x)).permute(0, 3, 1, 2).float() / 255.0


class _Named(_Unit):
    name = "my-unit"


def test_a_custom_transform_is_recorded_under_its_class_name(tiny, tmp_path):
    out = finetune(tiny, "conv4", loss="ce", batch_size=8, out=tmp_path / "t.pt", **{**STEP, "transform": _Unit()})
    meta = _load(out)["fewshot_bench"]
    assert (meta["transform"], meta["transform_key"], meta["protocol"]["transform"]) == ("_Unit",) * 3
    named = finetune(tiny, "conv4", loss="ce", batch_size=8, out=tmp_path / "n.pt",
                     **{**STEP, "transform": _Named()})
    assert _load(named)["fewshot_bench"]["transform"] == "my-unit"
    assert _load(named)["fewshot_bench"]["transform_key"] == "my-unit"  # no ``key``: its name, not the class


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(seed=-1), ConfigError, r"^--seed -1 must be an integer >= 0$"),
        (dict(embed_dim=0), ConfigError, r"^--embed-dim 0 must be an integer >= 1$"),
        (dict(arch=""), ConfigError, r"^--arch must be a non-empty name, got ''$"),
        (dict(arch="  "), ConfigError, r"^--arch must be a non-empty name, got '  '$"),
        (dict(transform=42), ConfigError,
         r"^transform must be a name, an EvalTransform or a callable, got int$"),
        (dict(transform=_Named(), image_size=32), ConfigError,
         r"^--image-size 32: the custom transform 'my-unit' cannot be resized; make it output 32 px"),
        (dict(transform=_Unit(), image_size=32), ConfigError, r"^--image-size 32: the custom transform '_Unit' "),
    ],
)
def test_errors_name_the_flag_and_the_value(tiny, tmp_path, kw, err, match):
    args = dict(STEP, loss="ce", batch_size=8, out=tmp_path / "x.pt")
    args.update(kw)
    arch = args.pop("arch", "conv4")
    with pytest.raises(err, match=match):
        finetune(tiny, arch, **args)
    assert not (tmp_path / "x.pt").exists()


def test_a_split_without_a_dataset_name_is_a_data_error(tmp_path):
    bad = SimpleNamespace(images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.int64))  # no RGB axis
    with pytest.raises(DataError, match=r"^split \?: images must be uint8 \(N, H, W, 3\) with labels \(N,\)$"):
        finetune(bad, "conv4", loss="ce", batch_size=2, out=tmp_path / "x.pt", **STEP)


# ------------------------------------------------------------------ settings, split and path checks


@pytest.mark.parametrize(
    "kw, err, msg",
    [
        (dict(batch_size=0), ConfigError, "--batch-size 0 must be an integer >= 1"),  # no "needs" clause for CE
        (dict(loss="clce", batch_size=1), ConfigError,
         "--batch-size 1 must be an integer >= 2 (loss clce needs 2 images per batch)"),
        (dict(val_every=-1), ConfigError, "--val-every -1 must be an integer >= 0"),
        (dict(optimizer="xyz"), UnknownNameError, "unknown optimizer 'xyz' (--optimizer); choose from: adamw, sgd"),
        (dict(optimizer=3), UnknownNameError, "unknown optimizer 3 (--optimizer); choose from: adamw, sgd"),
        (dict(optimizer="adam"), UnknownNameError, "unknown optimizer 'adam' (--optimizer); did you mean: adamw?"),
        (dict(contrast_on="both"), ConfigError, "--contrast-on 'both': choose encoder or projection"),
        (dict(warmup_epochs=-1), ConfigError, "--warmup-epochs -1 must be an integer >= 0"),
        (dict(warmup_epochs=3, epochs=2), ConfigError, "--warmup-epochs 3 must be smaller than --epochs 2"),
        (dict(epochs=0, seed=-1), ConfigError, "--epochs 0 must be an integer >= 1"),  # the first wrong one
        (dict(lr="0.1"), ConfigError, "--lr '0.1' must be a positive number"),
        (dict(lr=True), ConfigError, "--lr True must be a positive number"),
        (dict(lr=math.inf), ConfigError, "--lr inf must be a positive number"),
        (dict(lr=-1), ConfigError, "--lr -1 must be a positive number"),
        (dict(weight_decay=-0.1), ConfigError, "--weight-decay -0.1 must be a number >= 0"),
        (dict(weight_decay="1"), ConfigError, "--weight-decay '1' must be a number >= 0"),
        (dict(momentum=math.nan), ConfigError, "--momentum nan must be a number >= 0"),
        (dict(momentum=-0.5), ConfigError, "--momentum -0.5 must be a number >= 0"),
        (dict(momentum=True), ConfigError, "--momentum True must be a number >= 0"),  # a bool is not a number
        (dict(weight_decay=False), ConfigError, "--weight-decay False must be a number >= 0"),
        (dict(keep="first"), ConfigError, "--keep 'first': choose last or best"),
        (dict(val_every=1), ConfigError, "--val-every 1 needs a val split to validate on; pass val_split"),
        (dict(keep="best"), ConfigError, "--keep best needs validation: add --val-every N"),
        (dict(loss="clce", lam=0.5, loss_params={"lam": 0.9}), ConfigError,
         "--lam 0.5 conflicts with loss_params lam=0.9; give it once"),
        (dict(temperature=0.5), ConfigError, "--temperature 0.5: loss 'ce' has no temperature (its parameters: "
                                             "label_smoothing); drop --temperature or pick a loss that takes it"),
        (dict(loss="clce", beta=1.0), ConfigError, "--beta 1.0: loss 'clce' has no beta (its parameters: lam, "
                                                   "temperature); drop --beta or pick a loss that takes it"),
        (dict(loss=""), ConfigError, "--loss must be a loss name or path/to/file.py:ClassName, got ''"),
        (dict(loss=None), ConfigError, "--loss must be a loss name or path/to/file.py:ClassName, got None"),
        (dict(loss="  "), ConfigError, "--loss must be a loss name or path/to/file.py:ClassName, got '  '"),
    ],
)
def test_setting_errors_are_exact(tiny, tmp_path, kw, err, msg):
    args = dict(STEP, loss="ce", batch_size=8, out=tmp_path / "x.pt")
    args.update(kw)
    with pytest.raises(err) as info:
        finetune(tiny, "conv4", **args)
    assert str(info.value) == msg


def test_validate_returns_the_runs_configuration(tiny, tmp_path):
    from fewshot_bench.train import finetune as ft
    from fewshot_bench.train.losses import create_loss

    mod = __import__("sys").modules[ft.__module__]
    kw = dict(contrast_on="projection", epochs=3, batch_size=np.int64(4), lr=1, optimizer="SGD", weight_decay=0,
              momentum=1, warmup_epochs=1, seed=np.int64(7), embed_dim=5, out=tmp_path / "x.pt", augment=1,
              flip=0, val_split=None, val_every=0, keep="last")
    cfg = mod._validate(tiny, " conv4 ", loss_fn=create_loss("clce"), **kw)
    assert cfg == {"arch": "conv4", "contrast_on": "projection", "optimizer": "sgd", "epochs": 3, "batch_size": 4,
                   "lr": 1.0, "weight_decay": 0.0, "momentum": 1.0, "warmup_epochs": 1, "seed": 7, "embed_dim": 5,
                   "augment": True, "flip": False, "dataset": "synthetic", "split": "train",
                   "data_fingerprint": "fp-1", "data_image_size": 16, "n_classes": 4, "val_every": 0, "keep": "last"}
    assert [type(cfg[k]) for k in ("batch_size", "lr", "seed", "augment")] == [int, float, int, bool]
    enc = mod._validate(tiny, "conv4", loss_fn=create_loss("clce"), **{**kw, "contrast_on": "encoder"})
    assert (enc["contrast_on"], enc["embed_dim"]) == ("encoder", None)  # no projection: no embed_dim
    ce = mod._validate(tiny, "conv4", loss_fn=create_loss("ce"), **kw)
    assert (ce["contrast_on"], ce["embed_dim"]) == (None, None)  # no contrastive term: neither


def test_a_loss_without_parameters_says_none(tiny, tmp_path):
    (tmp_path / "const.py").write_text(_CONSTANT_LOSS)
    spec = f"{tmp_path / 'const.py'}:Constant"
    with pytest.raises(ConfigError) as info:
        finetune(tiny, "conv4", loss=spec, lam=0.5, batch_size=8, out=tmp_path / "x.pt", **STEP)
    assert str(info.value) == (f"--lam 0.5: loss {spec!r} has no lam (its parameters: none); "
                               "drop --lam or pick a loss that takes it")


def test_an_out_folder_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError) as info:
        finetune(tiny, "conv4", loss="ce", batch_size=8, out=tmp_path, **STEP)
    assert str(info.value) == f"--out {tmp_path} is a folder; give a checkpoint file name such as {tmp_path / 'model.pt'}"


@pytest.mark.parametrize(
    "change, err, msg",
    [
        (dict(images="float32"), DataError, "split synthetic/train: images are float32, expected uint8 RGB"),
        (dict(labels=7), DataError, "split synthetic/train: 8 images but 7 labels"),
        (dict(last_label=-1), DataError, "split synthetic/train: labels must lie in 0..3"),
        (dict(last_label=4), DataError, "split synthetic/train: labels must lie in 0..3"),
        (dict(rgba=True), DataError, "split synthetic: images must be uint8 (N, H, W, 3) with labels (N,)"),
        (dict(class_names=("a",)), DataError, "split synthetic/train has 1 class; fine-tuning needs at least 2"),
        (dict(batch_size=9), ConfigError,
         "split synthetic/train has 8 images, fewer than --batch-size 9; lower --batch-size"),
    ],
)
def test_split_errors_are_exact(tiny, tmp_path, change, err, msg):
    change = dict(change)  # the parameters are shared between runs: do not consume them
    split, batch = tiny, change.pop("batch_size", 8)
    if "images" in change:
        split = dataclasses.replace(split, images=split.images.astype(change["images"]))
    if "labels" in change:
        split = dataclasses.replace(split, labels=split.labels[: change["labels"]])
    if "last_label" in change:
        split = dataclasses.replace(split, labels=np.r_[split.labels[:7], change["last_label"]])
    if "rgba" in change:
        split = dataclasses.replace(split, images=np.zeros((8, 16, 16, 4), np.uint8))
    if "class_names" in change:
        split = dataclasses.replace(split, class_names=change["class_names"])
    with pytest.raises(err) as info:
        finetune(split, "conv4", loss="ce", batch_size=batch, out=tmp_path / "x.pt", **STEP)
    assert str(info.value) == msg


@pytest.mark.parametrize(
    "seeds, msg",
    [
        ([], "--seeds needs at least one seed, e.g. --seeds 0 1 2"),
        ([0, -1], "--seeds -1 must be an integer >= 0"),
        ([3, 1, 2, 1, 2], "--seeds lists seed 1 twice; give distinct seeds"),  # the first repeated one
        ([True], "--seeds True must be an integer >= 0"),
    ],
)
def test_seed_list_errors_are_exact(tiny, tmp_path, seeds, msg):
    from fewshot_bench.train import finetune_seeds

    with pytest.raises(ConfigError) as info:
        finetune_seeds(tiny, "conv4", seeds=seeds, loss="ce", batch_size=8, out=tmp_path / "x.pt", **STEP)
    assert str(info.value) == msg


def test_a_split_without_labels_is_a_data_error(tiny, tmp_path):
    bad = SimpleNamespace(images=tiny.images, labels=None, dataset="d")
    with pytest.raises(DataError, match=r"^split d: images must be uint8 \(N, H, W, 3\) with labels \(N,\)$"):
        finetune(bad, "conv4", loss="ce", batch_size=2, out=tmp_path / "x.pt", **STEP)


def test_seed_path_keeps_double_extensions_at_the_end():
    from fewshot_bench.train import seed_path

    assert seed_path("d/run.state.pt", 3, 2).as_posix() == "d/run-seed3.state.pt"
    assert seed_path("d/run.log.jsonl", 3, 2).as_posix() == "d/run-seed3.log.jsonl"
    assert seed_path("d/run.pt", 3, 2).as_posix() == "d/run-seed3.pt"
    assert seed_path("d/run.state.pt", 3, 1).as_posix() == "d/run.state.pt"
    assert seed_path("d/.log.jsonl", 3, 2).as_posix() == "d/.log-seed3.jsonl"  # nothing before the extension


def test_metadata_records_the_loss_switches_and_the_kind():
    from fewshot_bench.train import finetune as ft_mod
    from fewshot_bench.train.losses import create_loss

    mod = __import__("sys").modules[ft_mod.__module__]
    cfg = {k: f"<{k}>" for k in (*mod._RESUME_KEYS, *mod._META_ONLY_KEYS)}
    cfg.update(loss="lacln ", loss_name="lacln", val_every=0)
    meta = mod._metadata(cfg, create_loss("lacln", hard_negatives=False), [2.0, 1.5], [], 7)
    assert meta["hard_negatives"] is False and meta["temperature"] == 0.5 and meta["lam"] is None
    assert (meta["kind"], meta["loss"], meta["loss_spec"], meta["selected_epoch"]) == ("finetune", "lacln", "lacln ", 7)
    assert (meta["final_train_loss"], meta["train_loss_history"], meta["val"]) == (1.5, [2.0, 1.5], None)
    assert "val_every" not in meta and "pretrained_sha256" not in meta and meta["arch"] == "<arch>"
    clce = mod._metadata(cfg, create_loss("clce-nohnm"), [], [], 1)
    assert clce["hard_negatives"] is False and clce["lam"] == 0.9 and clce["final_train_loss"] is None


# ------------------------------------------------------------------ the input transform


def _cfg(**kw):
    return {"input_size": [3, 20, 20], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], **kw}


def test_a_pretrained_cfg_sets_side_resize_and_crop(tiny):
    from fewshot_bench.train.inputs import resolve_transform

    tf, side = resolve_transform(None, tiny, None, _cfg(crop_pct=0.8))
    assert (side, tf.size, tf.resize, tf.crop, tf.name) == (20, 20, 25, True, "pretrained-cfg")
    assert tf.mean == (0.5, 0.4, 0.3) and tf.std == (0.2, 0.2, 0.2)
    tf, side = resolve_transform(None, tiny, None, _cfg(crop_pct=1.25))  # >= 1: no crop, resize to the side
    assert (side, tf.resize, tf.crop) == (20, 20, False)
    tf, side = resolve_transform(None, tiny, None, _cfg(input_size=[3, 12, 20]))  # the last entry is the side
    assert (side, tf.resize, tf.crop) == (20, 20, False)


def test_the_default_transform_is_the_datasets_eval_transform(tiny):
    from fewshot_bench.train.inputs import resolve_transform

    cifar = dataclasses.replace(tiny, dataset="cifar-fs")
    tf, _ = resolve_transform(None, dataclasses.replace(cifar, images=np.zeros((2, 32, 32, 3), np.uint8)))
    assert tf.name == "metaoptnet-cifar"
    tf, side = resolve_transform(None, tiny)  # an unregistered dataset: /255, pinned to its side
    assert (tf.name, tf.size, side, tf.mean) == ("unit", 16, 16, None)


def test_image_size_one_is_allowed_and_zero_is_not(tiny):
    from fewshot_bench.train.inputs import resolve_transform

    tf, side = resolve_transform("unit", tiny, 1)
    assert side == 1 and tf.name == "unit@1"
    with pytest.raises(ConfigError, match=r"^--image-size 0 must be a positive integer$"):
        resolve_transform("unit", tiny, 0)


def test_a_size_free_transform_is_pinned_with_its_normalisation(tiny):
    from fewshot_bench.train.inputs import resolve_transform
    from fewshot_bench.transforms import EvalTransform

    tf, side = resolve_transform(EvalTransform("mine", None, mean=(0.1, 0.2, 0.3), std=(1, 2, 3)), tiny)
    assert (side, tf.size, tf.mean, tf.std) == (16, 16, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


def test_the_transform_is_probed_with_one_image_and_must_give_rgb(tiny):
    from fewshot_bench.train.inputs import resolve_transform

    seen = []

    def probe(x):
        seen.append(tuple(x.shape))
        return x.permute(0, 3, 1, 2).float()

    assert resolve_transform(probe, tiny)[1] == 16 and seen == [(1, 16, 16, 3)]
    with pytest.raises(DataError, match=r"^the transform gave shape \(1, 1, 16, 16\); it must give \(B, 3, S, S\)$"):
        resolve_transform(lambda x: x.permute(0, 3, 1, 2)[:, :1].float(), tiny)
    with pytest.raises(DataError, match=r"^the transform gave shape \(1, 3, 16, 8\); it must give \(B, 3, S, S\)$"):
        resolve_transform(lambda x: x.permute(0, 3, 1, 2)[..., :8].float(), tiny)  # not square


# ------------------------------------------------------------------ net, validation, losses: messages and switches


def test_trainnet_keeps_contrast_on_and_names_the_choices():
    from fewshot_bench.train.net import TrainNet

    net = TrainNet(nn.Identity(), 4, 3, 2, head=True, contrastive=True, contrast_on="projection")
    assert net.contrast_on == "projection"
    with pytest.raises(ValueError, match=r"^contrast_on='x'; choose from encoder, projection$"):
        TrainNet(nn.Identity(), 4, 3, 2, head=True, contrastive=True, contrast_on="x")


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(n_episodes=0), "--val-episodes must be a positive integer, got 0"),
        (dict(shots=0), "--val-shots must be a positive integer, got 0"),
        (dict(queries=0), "--val-queries must be a positive integer, got 0"),
        (dict(ways=9), "--val-ways 9 is more than the 4 classes in synthetic/val; use --val-ways 4 or fewer"),
        (dict(ways=2), "--val-shots 1 + --val-queries 15 = 16 images per class, but the smallest class in "
                       "synthetic/val (class0) has 4; lower --val-shots/--val-queries to at most 4 in total"),
    ],
)
def test_val_errors_name_the_val_flags(kw, msg):
    from fewshot_bench.train.validate import prepare_val

    with pytest.raises(ConfigError) as err:
        prepare_val(_val_split(), **kw)
    assert str(err.value) == f"validation on synthetic/val: {msg}"


_BAL = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])


def test_functional_losses_default_to_the_papers_values():
    from fewshot_bench.train.losses import clce_loss, hscl_loss, lacln_loss, supcon_loss

    logits, z = _data(8, 21, c=3)
    assert float(supcon_loss(z, _BAL)) == pytest.approx(_mean(literal_supcon(z, _BAL, 0.1)), rel=1e-9)
    lacln = _mean(literal_lacln(z, _BAL, 0.5))
    assert float(lacln_loss(z, _BAL)) == pytest.approx(lacln, rel=1e-9)
    assert float(clce_loss(logits, z, _BAL)) == pytest.approx(0.1 * literal_ce(logits, _BAL) + 0.9 * lacln, rel=1e-9)
    assert float(hscl_loss(z, _BAL)) == pytest.approx(_pair_mean(literal_hscl_pairs(z, _BAL, 0.5, 1.0)), rel=1e-9)


def test_clce_passes_detach_weights_to_lacln():
    from fewshot_bench.train.losses import clce_loss, cross_entropy, lacln_loss

    logits, z = _data(8, 22, c=3)
    grads = {}
    for detach in (False, True):
        zz = z.clone().requires_grad_(True)
        clce_loss(logits, zz, _BAL, detach_weights=detach).backward()
        ref = z.clone().requires_grad_(True)
        (0.1 * cross_entropy(logits, _BAL) + 0.9 * lacln_loss(ref, _BAL, detach_weights=detach)).backward()
        assert torch.allclose(zz.grad, ref.grad, rtol=1e-12, atol=0)
        grads[detach] = zz.grad
    assert not torch.allclose(grads[False], grads[True])


@pytest.mark.parametrize(
    "call, err, msg",
    [
        (lambda L: L.clce_loss(torch.zeros(4, 3), torch.ones(5, 2), torch.zeros(4, dtype=torch.long)),
         ValueError, "logits has 4 rows but z has 5"),
        (lambda L: L.hscl_loss(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), beta=-1.0),
         ConfigError, "--beta -1.0 must be a number >= 0 (e.g. 1.0)"),
        (lambda L: L.hscl_loss(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), reduction="avg"),
         ValueError, "reduction='avg'; choose from mean, sum, none"),
        (lambda L: L.supcon_loss(torch.ones(4), torch.zeros(4, dtype=torch.long)),
         ValueError, "z must be (B, d), got shape (4,)"),
        (lambda L: L.supcon_loss(torch.ones(4, 2), torch.zeros(3, dtype=torch.long)),
         ValueError, "z has 4 rows but labels has 3"),
        (lambda L: L.create_loss("clce")(torch.ones(2, 3), torch.ones(2, 2), [0, 1]),
         ValueError, "labels must be an int64 tensor (B,), got list"),
        (lambda L: L.create_loss("clce")(torch.ones(2, 3), torch.ones(2, 2), torch.tensor([True, False])),
         ValueError, "labels must hold integer class labels, got dtype torch.bool"),
        (lambda L: L.create_loss("supcon")(None, torch.ones(2, 2), torch.tensor([0, 1]), z_labels=torch.ones(2)),
         ValueError, "z_labels must hold integer class labels, got dtype torch.float32"),
    ],
)
def test_loss_input_errors_are_exact(call, err, msg):
    import fewshot_bench.train.losses as L

    with pytest.raises(err) as info:
        call(L)
    assert str(info.value) == msg


def test_hscl_of_two_rows_has_no_negative_term():
    from fewshot_bench.train.losses import hscl_loss

    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    out = hscl_loss(z, torch.tensor([3, 3]))  # M = 2: one pair each way, the (M - 2) multiplier is 0
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_reduce_anchors_divides_by_the_valid_count_even_when_it_is_one():
    from fewshot_bench.train.losses._pairs import reduce_anchors

    per = torch.tensor([3.0, 5.0, 7.0])
    valid = torch.tensor([False, True, False])
    assert reduce_anchors(per, valid, "mean").item() == 5.0
    assert reduce_anchors(per, valid, "mean", denominator=torch.tensor(1)).item() == 5.0
    assert reduce_anchors(per, valid, "sum").item() == 5.0


def test_loss_repr_listing_and_registration_errors():
    from fewshot_bench.train.losses import (
        LOSS_REGISTRY,
        TrainingLoss,
        create_loss,
        describe_losses,
        get_loss_class,
    )
    from fewshot_bench.train.losses.base import register_loss

    assert repr(create_loss("clce", lam=0.5)) == "CLCE(lam=0.5, temperature=0.5)"
    rows = describe_losses()
    assert rows and all((r.description, r.paper) == (LOSS_REGISTRY.get(r.name).description,
                                                      LOSS_REGISTRY.get(r.name).paper) for r in rows)
    assert all(r.description and r.paper for r in rows)

    class NotALoss:
        name = "not-a-loss"

    with pytest.raises(TypeError) as err:
        register_loss(NotALoss)
    assert str(err.value) == (f"{NotALoss!r} is not a TrainingLoss subclass; "
                              "derive it from fewshot_bench.train.losses.TrainingLoss")

    class NoCompute(TrainingLoss):
        name = "no-compute"
        uses_ce = True

    with pytest.raises(TypeError) as err:
        register_loss(NoCompute)
    assert str(err.value) == f"{NoCompute!r} does not implement compute"
    with pytest.raises(ConfigError) as err:
        get_loss_class("no/such/file.py:X")
    assert str(err.value).endswith("or a name from " + ", ".join(LOSS_REGISTRY))


# ------------------------------------------------------------------ pretrained weights and timm input protocols


def test_pretrained_cfg_records_the_timm_data_config(tmp_path):
    import timm

    from fewshot_bench.train.pretrained import pretrained_cfg

    model = timm.create_model("test_resnet", num_classes=0)
    cfg = pretrained_cfg(model)
    assert cfg == {"architecture": "test_resnet", "tag": "r160_in1k", "input_size": [3, 160, 160],
                   "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.95, "crop_mode": "center",
                   "interpolation": "bilinear"}
    assert pretrained_cfg(nn.Linear(2, 2)) is None
    torch.save(model.state_dict(), tmp_path / "t.pt")
    from fewshot_bench.train.pretrained import load_pretrained

    assert load_pretrained(model, tmp_path / "t.pt")["pretrained_cfg"] == cfg  # the timm protocol travels along


def test_load_pretrained_reports_exactly_these_fields(tmp_path):
    from fewshot_bench.train.pretrained import load_pretrained

    torch.manual_seed(0)
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    info = load_pretrained(nn.Linear(3, 2), tmp_path / "w.pt")
    assert set(info) == {"path", "sha256", "format", "ignored_head_keys", "load_report", "pretrained_cfg"}
    assert info["path"] == str(tmp_path / "w.pt") and info["pretrained_cfg"] is None
    with pytest.raises(CheckpointError) as err:
        load_pretrained(nn.Linear(3, 2), tmp_path)
    assert str(err.value) == f"--pretrained {tmp_path} is a folder; pass the .safetensors or .pt/.pth file inside it"
    assert info["format"] == info["load_report"]["format"] and isinstance(info["format"], str) and info["format"]


def test_a_timm_backbone_built_for_its_pretrained_cfg_gets_the_arch_kwargs(tiny):
    from fewshot_bench.train import finetune as ft

    mod = __import__("sys").modules[ft.__module__]
    tf, side, backbone = mod._input_and_backbone(tiny, "timm:test_resnet", {"drop_rate": 0.25}, None, None, None,
                                                 "weights.pt")
    assert (backbone.drop_rate, side, tf.name) == (0.25, 160, "pretrained-cfg")


# ------------------------------------------------------------------ the step inputs


def test_the_progress_bar_shows_the_running_loss_and_lr_only_with_progress(tiny, tmp_path, capsys):
    logs: list[dict] = []
    finetune(tiny, "conv4", loss="ce", batch_size=8, out=tmp_path / "p.pt", log=logs.append,
             **{**STEP, "progress": True})
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and f"loss={logs[0]['loss']:.4f}" in err and f"lr={STEP['lr']:.2e}" in err
    finetune(tiny, "conv4", loss="ce", batch_size=8, out=tmp_path / "q.pt", **STEP)
    assert "epoch 1/1" not in capsys.readouterr().err


def test_int32_labels_train_like_int64_labels(tiny, tmp_path):
    as32 = dataclasses.replace(tiny, labels=tiny.labels.astype(np.int32))
    a, b = [], []
    finetune(tiny, "conv4", loss="clce", batch_size=8, out=tmp_path / "a.pt", log=a.append, **STEP)
    finetune(as32, "conv4", loss="clce", batch_size=8, out=tmp_path / "b.pt", log=b.append, **STEP)
    assert a[0]["loss"] == b[0]["loss"]
    assert _same(_load(tmp_path / "a.pt")["state_dict"], _load(tmp_path / "b.pt")["state_dict"])


class _DrawingRecorder(nn.Module):
    """Keeps its inputs; draws ``k`` numbers from the global RNG per forward (as dropout would)."""

    out_dim = 3

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3)
        self.k, self.seen = k, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        torch.rand(self.k)
        return self.conv(x).mean((2, 3))


def test_the_augmentation_does_not_depend_on_the_models_global_rng_use(tmp_path):
    split = make_split(n_classes=2, per_class=4, side=16, seed=5)
    seen = []
    for k in (0, 7):
        rec = _DrawingRecorder(k)
        finetune(split, "rec", backbone=rec, loss="ce", batch_size=4, out=tmp_path / f"r{k}.pt",
                 **{**STEP, "augment": True})
        assert len(rec.seen) == 2
        seen.append(rec.seen)
    assert all(torch.equal(x, y) for x, y in zip(*seen))  # step 2 too: its own generator


def test_the_crop_padding_follows_the_image_height(tmp_path):
    # 16 x 64 images, bright in columns 0..7; the transform keeps columns 0..15. The padding is
    # clamp(H // 8, 1, 8) = 2, so column 4 stays bright (W // 8 = 8 would shift it off the bright part)
    base = make_split(n_classes=2, per_class=8, side=16, seed=5)
    img = np.zeros((16, 64, 3), np.uint8)
    img[:, :8] = 255
    wide = dataclasses.replace(base, images=np.repeat(img[None], 16, axis=0))
    rec = _Recorder()

    def left_square(x):
        return x[:, :, :16].permute(0, 3, 1, 2).float() / 255.0

    finetune(wide, "rec", backbone=rec, loss="ce", batch_size=16, out=tmp_path / "w.pt",
             **{**STEP, "augment": True, "flip": False, "transform": left_square})
    (x,) = rec.seen
    assert x.shape == (16, 3, 16, 16)
    assert bool((x[:, :, :, 4].mean((1, 2)) >= 14 / 16 - 1e-6).all())  # at most 2 zero-padded rows


# ------------------------------------------------------------------ DDP bookkeeping, faked in one process


def test_the_epoch_record_averages_the_ranks_means(monkeypatch):
    import time

    from fewshot_bench import distributed as D
    from fewshot_bench.train import finetune as ft

    mod = __import__("sys").modules[ft.__module__]
    other = torch.tensor([3.0, 1.0, float("nan"), 4.0], dtype=torch.float64)  # rank 1's means

    def all_reduce(t):
        assert t.dtype == torch.float64 and t.device.type == "cpu"
        t += other

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    loop = SimpleNamespace(info=D.DistInfo(0, 2, 0), dev=torch.device("cpu"), cfg={"batch_size": 4})
    mine = torch.tensor([1.0, 3.0, float("nan"), 2.0], dtype=torch.float64)
    rec = mod._epoch_record(loop, 2, mine, 0.05, 5, time.perf_counter())
    assert (rec["epoch"], rec["loss"], rec["ce"], rec["contrastive"], rec["grad_norm"], rec["lr"]) == (
        3, 2.0, 2.0, None, 3.0, 0.05)


def test_a_ddp_step_scores_the_gathered_embeddings_with_the_gathered_labels(monkeypatch):
    from fewshot_bench import distributed as D
    from fewshot_bench.train import finetune as ft
    from fewshot_bench.train.losses import create_loss, lacln_loss

    mod = __import__("sys").modules[ft.__module__]
    g = torch.Generator().manual_seed(0)
    other_z, other_y = torch.randn(4, 3, generator=g), torch.tensor([1, 1, 0, 2])
    monkeypatch.setattr(D, "gather_with_grad", lambda z: torch.cat([z, other_z]))
    monkeypatch.setattr(D, "all_gather_nograd", lambda y: torch.cat([y, other_y]))
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x, y = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 0, 2])
    with torch.no_grad():
        ref = lacln_loss(torch.cat([lin(x), other_z]), torch.cat([y, other_y]))  # before the update
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    terms, _ = mod._step(lambda inp: (None, lin(inp)), create_loss("lacln"), x, y, opt, scaler,
                         list(lin.parameters()), D.DistInfo(0, 2, 0), autocast=("cpu", torch.bfloat16, False),
                         where=(0, 0, 0.1))
    assert terms.total.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    from fewshot_bench.train.losses import cross_entropy, hscl_loss, lacln_loss, supcon_loss

    logits, z = _data(8, 23, c=3)
    z_h, logits_h = z.to(dtype), logits.to(dtype)
    for f in (supcon_loss, lacln_loss, hscl_loss):
        out = f(z_h, _BAL)
        assert out.dtype == torch.float32 and torch.equal(out, f(z_h.float(), _BAL))
    out = cross_entropy(logits_h, _BAL)
    assert out.dtype == torch.float32 and torch.equal(out, cross_entropy(logits_h.float(), _BAL))
    from fewshot_bench.train.losses._pairs import upcast

    assert upcast(z) is z and upcast(z.float()).dtype == torch.float32  # float64 / float32 pass through


class _DtypeProbe(nn.Module):
    """A linear backbone that records the dtype autocast gives its output."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.dtypes: set = set()

    def forward(self, x):
        f = self.lin(x.mean((2, 3)))
        self.dtypes.add(f.dtype)
        return f


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, None])
def test_validation_autocasts_to_the_dtype_it_is_given(dtype):
    from fewshot_bench.train.validate import prepare_val, val_accuracy
    from fewshot_bench.transforms import get_transform

    val = prepare_val(_val_split(), ways=3, shots=1, queries=2, n_episodes=4)
    probe = _DtypeProbe()
    acc, ci = val_accuracy(probe, get_transform("unit"), val, torch.device("cpu"), autocast_dtype=dtype)
    assert probe.dtypes == {dtype or torch.float32} and 0.0 <= acc <= 1.0 and probe.training


# ------------------------------------------------------------------ protocol, log lines, schedule, val description


def test_input_protocol_records_the_transform_and_the_pooling():
    from fewshot_bench.train.inputs import input_protocol
    from fewshot_bench.transforms import EvalTransform

    tf = EvalTransform("x", 20, resize=25, crop=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    avg = SimpleNamespace(pool="avg")
    assert input_protocol(tf, np.int64(20), avg) == {
        "transform": "x", "image_size": 20, "resize": 25, "crop": True, "mean": [0.5] * 3, "std": [0.25] * 3,
        "pool": "avg", "feature_layer": "final"}
    proto = input_protocol(_Unit(), 16, SimpleNamespace(pool="none"))
    assert proto == {"transform": "_Unit", "image_size": 16, "resize": None, "crop": False, "mean": None,
                     "std": None, "pool": "none", "feature_layer": "final"}
    assert input_protocol(_Named(), 16, SimpleNamespace(pool="max"))["pool"] is None  # the arch's own pooling
    assert input_protocol(_Named(), 16, nn.Identity())["transform"] == "my-unit"
    assert type(input_protocol(tf, np.int64(20), avg)["image_size"]) is int


def test_format_record_with_the_fewest_fields():
    from fewshot_bench.train.log import format_record

    assert format_record({"epoch": 1, "loss": 2.0, "lr": 0.1}) == "epoch 1  loss 2.0000  lr 1.00e-01  0.0 s (0 img/s)"
    line = format_record({"seed": 0, "epoch": 2, "epochs": 0, "loss": 1.0, "ce": None, "contrastive": 0.5,
                          "lr": 1e-3, "val_accuracy": 0.5, "val_ci95": None, "seconds": 1.0, "val_seconds": None,
                          "images_per_s": 10.4})
    assert line == "seed 0 epoch 2  loss 1.0000 (contrastive 0.5000)  lr 1.00e-03  val 50.00 ± 0.00 %  1.0 s (10 img/s)"


def test_write_log_writes_nonfinite_values_as_null_in_the_given_order(tmp_path):
    from fewshot_bench.train.log import read_log, write_log

    recs = [{"b": float("nan"), "a": 1.5, "c": float("-inf"), "d": None, "e": 3}, {"epoch": 2}]
    assert write_log(tmp_path / "l.jsonl", recs) == tmp_path / "l.jsonl"
    assert (tmp_path / "l.jsonl").read_text() == '{"b": null, "a": 1.5, "c": null, "d": null, "e": 3}\n{"epoch": 2}\n'
    assert read_log(tmp_path / "l.jsonl") == [{"b": None, "a": 1.5, "c": None, "d": None, "e": 3}, {"epoch": 2}]


def test_lr_factor_edges():
    from fewshot_bench.train import lr_factor

    assert lr_factor(2, 2, 2) == 1.0  # all steps warm up: the cosine span is clamped to 1
    assert lr_factor(9, 4, 0) == 0.0  # past the last step: clamped at the end of the cosine
    assert lr_factor(3, 3, 2) == 0.0  # one cosine step: its span is 1
    assert lr_factor(0, 4, 3) == pytest.approx(1 / 3, rel=1e-15) and lr_factor(2, 4, 3) == 1.0
    assert lr_factor(1, 3, 1) == pytest.approx(0.5 * (1 + math.cos(0)), rel=1e-15)
    assert lr_factor(2, 3, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)), abs=1e-15)


def test_val_episodes_describe_their_protocol():
    from fewshot_bench.train.validate import prepare_val

    val = prepare_val(_val_split(), ways=3, shots=1, queries=2, n_episodes=4, seed=5)
    d = val.describe()
    assert d == {"dataset": "synthetic", "split": "val", "data_fingerprint": "fp-val", "ways": 3, "shots": 1,
                 "queries": 2, "episodes": 4, "seed": 5, "method": "protonet",
                 "episodes_sha256": val.episodes.sha256()}
    assert len(d["episodes_sha256"]) == 64
    assert val.support.shape == (4, 3) and val.query.shape == (4, 6)
    assert np.array_equal(val.rows, np.unique(val.rows)) and val.rows.dtype == np.int64
    support, query = val.episodes.indices(val.split)
    assert np.array_equal(val.rows[val.support], support) and np.array_equal(val.rows[val.query], query)


# ------------------------------------------------------------------ optimiser, gradient norm, resume-state checks


def _ft():
    from fewshot_bench.train import finetune as ft

    return __import__("sys").modules[ft.__module__]


def test_the_optimiser_gets_the_settings_and_only_trainable_parameters():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].weight.requires_grad_(False)
    cfg = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.2, "momentum": 0.5}
    adamw = _ft()._make_optimizer(net, cfg)
    (group,) = adamw.param_groups
    assert type(adamw) is torch.optim.AdamW and len(group["params"]) == 3
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.01, 0.2, (0.9, 0.999))
    sgd = _ft()._make_optimizer(net, {**cfg, "optimizer": "sgd"})
    (group,) = sgd.param_groups
    assert type(sgd) is torch.optim.SGD and len(group["params"]) == 3
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.01, 0.2, 0.5)


def test_grad_norm_is_the_norm_of_the_concatenated_gradient():
    a, b, c = (torch.zeros(2, requires_grad=True), torch.zeros(1, dtype=torch.float64, requires_grad=True),
               torch.zeros(3, requires_grad=True))
    assert _ft()._grad_norm([a, b, c]) == 0.0  # no gradient at all
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0], dtype=torch.float64)
    assert _ft()._grad_norm([a, b, c]) == 13.0  # c has none: skipped


def test_keep_best_without_a_validated_epoch_is_refused():
    loop = SimpleNamespace(cfg={"keep": "best", "epochs": 3})
    with pytest.raises(ConfigError) as info:
        _ft()._select_backbone(loop, SimpleNamespace(best=None))
    assert str(info.value) == "--keep best found no validated epoch; use --val-every"
    assert _ft()._select_backbone(SimpleNamespace(cfg={"keep": "last", "epochs": 3}), None) == 3


def test_resume_state_errors_are_exact(tmp_path):
    from fewshot_bench.errors import CheckpointError

    mod, p = _ft(), tmp_path / "s.state.pt"
    cfg = {k: 1 for k in mod._RESUME_KEYS}
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        mod._load_state(p, cfg)
    assert str(info.value) == (f"{p}: cannot read the resume state (UnpicklingError); "
                               "delete it or run without --resume")
    for bad in ({"format": "other"}, [1, 2]):
        torch.save(bad, p)
        with pytest.raises(CheckpointError) as info:
            mod._load_state(p, cfg)
        assert str(info.value) == f"{p}: not a fewshot-bench resume state; delete it or run without --resume"
    torch.save({"format": mod.STATE_FORMAT, "format_version": 1}, p)
    with pytest.raises(CheckpointError) as info:
        mod._load_state(p, cfg)
    assert str(info.value) == f"{p}: resume state version 1 is not 2; run without --resume"
    good = {"format": mod.STATE_FORMAT, "format_version": 2, "config": dict(cfg)}
    torch.save(good, p)
    assert mod._load_state(p, cfg)["config"] == cfg
    torch.save({**good, "config": {**cfg, "lr": 2, "seed": 3, "keep": 4}}, p)
    with pytest.raises(ConfigError) as info:
        mod._load_state(p, cfg)
    assert str(info.value) == (f"{p}: written with lr=2, now lr=1 (and 2 more setting(s)); "
                               "pass the same settings to resume, or run without --resume to start over")
    torch.save({**good, "config": {**cfg, "seed": 3}}, p)
    with pytest.raises(ConfigError, match=r"written with seed=3, now seed=1; pass the same"):
        mod._load_state(p, cfg)


def test_get_loss_class_takes_a_class_and_checks_it():
    from fewshot_bench.train.losses import CLCE, SupCon, create_loss, get_loss_class

    assert get_loss_class(CLCE) is CLCE and repr(create_loss(CLCE, lam=0.5)) == "CLCE(lam=0.5, temperature=0.5)"

    class Plain:
        pass

    with pytest.raises(ConfigError) as info:
        get_loss_class(Plain)
    assert str(info.value) == (f"{Plain!r} is not a TrainingLoss subclass; "
                               "derive it from fewshot_bench.train.losses.TrainingLoss")
    z, y = torch.ones(2, 2), torch.tensor([0, 0])
    for bad in ((None, y), (z, None)):  # compute() is only reached through __call__, which fills both
        with pytest.raises(AssertionError):
            SupCon().compute(None, bad[0], y, bad[1])


def test_an_unknown_loss_parameter_names_the_loss_as_given(tmp_path):
    from fewshot_bench.train.losses import CLCE, create_loss

    with pytest.raises(ConfigError) as info:
        create_loss(CLCE, gamma=1)
    assert str(info.value) == "loss 'clce' has no parameter 'gamma'; its parameters: lam, temperature"
    (tmp_path / "const.py").write_text(_CONSTANT_LOSS)
    spec = f"{tmp_path / 'const.py'}:Constant"
    with pytest.raises(ConfigError) as info:
        create_loss(spec, gamma=1)
    assert str(info.value) == f"loss {spec!r} has no parameter 'gamma'; its parameters: none"


def test_lam_may_be_zero_or_one_and_a_mix_needs_a_contrastive_term_class():
    from fewshot_bench.train.losses import CrossEntropy, create_loss
    from fewshot_bench.train.losses.mixed import CEPlusContrastive

    logits, z = _data(8, 24, c=3)
    pure = create_loss("clce", lam=1.0)(logits, z, _BAL)
    assert torch.equal(pure.total, pure.contrastive)
    ce_only = create_loss("ce+supcon", lam=0.0)(logits, z, _BAL)
    assert torch.equal(ce_only.total, ce_only.ce)

    class NoTerm(CEPlusContrastive):
        def __init__(self, lam: float = 0.9) -> None:
            self.lam = lam

    class CETerm(NoTerm):
        term_class = CrossEntropy

    for cls in (NoTerm, CETerm):
        with pytest.raises(TypeError) as info:
            cls().term_loss()
        assert str(info.value) == f"{cls.__name__} must set term_class to a ContrastiveLoss subclass"


def test_image_size_resizes_only_when_the_side_differs(tiny):
    from fewshot_bench.train.inputs import resolve_transform
    from fewshot_bench.transforms import get_transform

    cifar = get_transform("metaoptnet-cifar")  # 32 px, no resize: cannot take the 16 px images as they are
    with pytest.raises(DataError, match=r"^transform 'metaoptnet-cifar' expects 32x32 images but got \(16, 16\)"):
        resolve_transform(cifar, tiny)
    tf, side = resolve_transform(cifar, tiny, np.int64(16))
    assert (tf.name, tf.size, tf.resize, tf.crop, tf.mean, tf.std, side) == (
        "metaoptnet-cifar@16", 16, 16, False, cifar.mean, cifar.std, 16)
    tf, side = resolve_transform("unit", tiny, 16)  # already 16 px: kept (pinned), not renamed
    assert (tf.name, tf.size, tf.resize, side) == ("unit", 16, None, 16)
    assert resolve_transform(_Unit(), tiny, 16)[0].__class__ is _Unit  # a custom one at the right side is fine
    for bad in (2.5, True, "3"):
        with pytest.raises(ConfigError) as info:
            resolve_transform("unit", tiny, bad)
        assert str(info.value) == f"--image-size {bad!r} must be a positive integer"
    tf, side = resolve_transform(None, SimpleNamespace(images=tiny.images))  # no dataset name: /255
    assert (tf.name, side) == ("unit", 16)


@pytest.mark.parametrize("labels", [[0, 0, 1], [0, 0, 0, 1], [2, 1, 2, 2]])
def test_hscl_and_lacln_with_a_single_negative_and_three_rows(labels):
    from fewshot_bench.train.losses import hscl_loss, lacln_loss

    y = torch.tensor(labels)
    _, z = _data(len(labels), 25)
    for hnm in (True, False):
        assert float(lacln_loss(z, y, hard_negatives=hnm)) == pytest.approx(
            _mean(literal_lacln(z, y, 0.5, hnm)), rel=1e-9)
    for beta in (0.0, 1.0):
        ref = _pair_mean(literal_hscl_pairs(z, y, 0.5, beta))
        assert ref > 0.01  # M - 2 >= 1 and one negative: the negative term is there
        assert float(hscl_loss(z, y, beta=beta)) == pytest.approx(ref, rel=1e-9)


class _WithCfg(nn.Module):
    """A module carrying a timm-style ``pretrained_cfg`` with non-default crop mode and interpolation."""

    def __init__(self, cfg):
        super().__init__()
        self.pretrained_cfg = cfg


def test_pretrained_cfg_reads_every_field_and_skips_empty_configs():
    from fewshot_bench.train.pretrained import pretrained_cfg

    cfg = {"architecture": "a", "tag": "t", "input_size": (3, 24, 24), "mean": (0.1, 0.2, 0.3),
           "std": (0.4, 0.5, 0.6), "crop_pct": 0.9, "crop_mode": "squash", "interpolation": "bicubic"}
    assert pretrained_cfg(_WithCfg(cfg)) == {
        "architecture": "a", "tag": "t", "input_size": [3, 24, 24], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
        "crop_pct": 0.9, "crop_mode": "squash", "interpolation": "bicubic"}
    assert pretrained_cfg(_WithCfg({})) is None and pretrained_cfg(_WithCfg("timm")) is None


def test_each_seed_gets_its_own_log_file(tiny, tmp_path):
    from fewshot_bench.train import finetune_seeds

    finetune_seeds(tiny, "conv4", seeds=[0, 1], loss="ce", batch_size=8, out=tmp_path / "m.pt",
                   log_file=tmp_path / "logs" / "run.log.jsonl", **STEP)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run-seed0.log.jsonl", "run-seed1.log.jsonl"]
    assert read_log(tmp_path / "logs" / "run-seed1.log.jsonl")[0]["epoch"] == 1


def test_prepare_val_defaults_to_600_seeded_5_way_1_shot_15_query_episodes():
    from fewshot_bench.train.validate import prepare_val

    val = dataclasses.replace(make_split(n_classes=5, per_class=16, side=8, seed=9), split="val")
    d = prepare_val(val).describe()
    assert (d["ways"], d["shots"], d["queries"], d["episodes"], d["seed"]) == (5, 1, 15, 600, 0)


def test_a_loss_without_its_computation_names_the_missing_method():
    """A subclass that forgets ``compute`` (or ``term``, for a contrastive loss) fails naming its class
    and the method to write, not with a bare NotImplementedError."""
    from fewshot_bench.train.losses.base import ContrastiveLoss, TrainingLoss

    class Half(TrainingLoss):
        pass

    class HalfContrastive(ContrastiveLoss):
        pass

    z, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(NotImplementedError, match="^Half must implement compute$"):
        Half().compute(z, None, y, None)
    with pytest.raises(NotImplementedError, match="^HalfContrastive must implement term$"):
        HalfContrastive().term(z, y)
