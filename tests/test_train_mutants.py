"""Training-loop behaviours a mutation sample of ``fewshot_bench/train`` showed untested.

The seed reaches every random stream (global RNG reseeded per epoch, the per-step augmentation
generator), the flip flag reaches the augmentation, resume restores the projection head and the
best-epoch state, the resume file records the schedule, validation defaults to 600 episodes and
records its CI, a step whose loss reaches no parameter logs grad norm 0, and the error messages
name the right flag. Tiny Conv-4 / one-conv backbones at 16 px on synthetic uint8 splits, CPU.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_finetune import make_split
from test_train_loop import _VAL, STEP, _Crash, _crash_at, _load, _Recorder, _val_split
from torch import nn

from fewshot_bench.errors import ConfigError, DataError
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
