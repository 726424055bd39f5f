"""The fine-tuning loop at the loop level: one optimisation step through ``finetune`` equals a
hand-computed step with the registered loss (for every loss), and the λ mix, hard-negative
weighting, LR schedule, views, resume, contrast_on, image size, seeds, log and best-on-val
selection are pinned.

Every run is a tiny Conv-4 (8 channels) at 16 px on a synthetic uint8 split, CPU only.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_finetune import make_split
from torch import nn

from fewshot_bench import distributed as D
from fewshot_bench.backbones import create_backbone, load_checkpoint
from fewshot_bench.episodes import EpisodeSet, EpisodeSpec
from fewshot_bench.errors import CheckpointError, ConfigError
from fewshot_bench.protocol import transform_from_meta
from fewshot_bench.train import finetune, finetune_seeds, lr_factor, read_log, seed_path, state_path
from fewshot_bench.train.losses import available_losses, create_loss
from fewshot_bench.train.schedule import lr_factors
from fewshot_bench.transforms import METAOPTNET_MINI_MEAN, METAOPTNET_MINI_STD

HIDDEN = 8
LR = 0.1
# one step of plain SGD over one batch holding the whole split, images as stored
STEP = dict(
    epochs=1, optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, augment=False, transform="unit",
    progress=False, arch_kwargs={"hidden": HIDDEN}, embed_dim=6,
)


@pytest.fixture(scope="module")
def tiny():
    return make_split(n_classes=4, per_class=2, side=16, seed=1)  # 8 images, one batch of 8


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _loop_step(split, tmp_path, loss, **kw):
    """Parameters after one step through ``finetune``: backbone (checkpoint) and heads (resume state)."""
    out = tmp_path / f"{loss.replace('+', 'p')}-{kw.get('contrast_on', 'encoder')}.pt"
    finetune(split, "conv4", loss=loss, batch_size=len(split.labels), out=out, **{**STEP, **kw})
    state = _load(state_path(out))
    params = {f"backbone.{k}": v for k, v in _load(out)["state_dict"].items()}
    for part in ("head", "projection"):
        for k, v in (state[part] or {}).items():
            params[f"{part}.{k}"] = v
    return params, _load(out)["fewshot_bench"], read_log(_load(out)["fewshot_bench"]["log"])


def _hand_step(split, loss_fn, *, seed=0, contrast_on="encoder", embed_dim=6):
    """The same step written out: init after manual_seed(seed) (backbone, head, projection), the
    shuffled batch, two identical views for contrastive losses, ``loss_fn`` called directly, then
    ``p <- p - lr * grad``. Returns (parameters after the step, total gradient norm)."""
    torch.manual_seed(seed)
    backbone = create_backbone("conv4", image_size=16, hidden=HIDDEN)
    dim, n_classes = backbone.out_dim, len(split.class_names)
    head = nn.Linear(dim, n_classes) if loss_fn.uses_ce else None
    proj = None
    if loss_fn.uses_contrastive and contrast_on == "projection":
        proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, embed_dim))
    n = len(split.labels)
    (idx,) = D.shard_batches(n, n, torch.Generator().manual_seed(seed))
    x = torch.from_numpy(split.images[idx.numpy()])
    y = torch.from_numpy(split.labels[idx.numpy()].astype(np.int64))
    views = 2 if loss_fn.uses_contrastive else 1
    inp = torch.cat([x] * views).permute(0, 3, 1, 2).float() / 255.0
    yv = y.repeat(views)
    f = backbone(inp)
    logits = head(f) if head is not None else None
    z = (proj(f) if proj is not None else f) if loss_fn.uses_contrastive else None
    loss_fn(logits, z, yv).total.backward()
    modules = {"backbone": backbone, "head": head, "projection": proj}
    grads = [p.grad for m in modules.values() if m is not None for p in m.parameters() if p.grad is not None]
    gnorm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    out = {}
    with torch.no_grad():
        for name, m in modules.items():
            if m is None:
                continue
            for p in m.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-LR)
            out.update({f"{name}.{k}": v.clone() for k, v in m.state_dict().items()})
    return out, gnorm


class _Literal:
    """``(1 - lam) * CE + lam * LACLN`` written as loops over anchors (CLCE paper Eqs. 3-4)."""

    uses_ce = uses_contrastive = True

    def __init__(self, lam, tau, hard):
        self.lam, self.tau, self.hard = lam, tau, hard

    def __call__(self, logits, z, y):
        ce = torch.stack([torch.logsumexp(logits[i], 0) - logits[i, y[i]] for i in range(len(y))]).mean()
        z = z / z.norm(dim=1, keepdim=True)
        terms = []
        for i in range(len(y)):
            pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
            neg = [k for k in range(len(y)) if y[k] != y[i]]
            e_pos = torch.stack([torch.exp(z[i] @ z[p] / self.tau) for p in pos])
            e_neg = torch.stack([torch.exp(z[i] @ z[k] / self.tau) for k in neg])
            w = len(neg) * e_neg / e_neg.sum() if self.hard else torch.ones_like(e_neg)
            terms.append(-torch.log(e_pos.sum() / len(pos) / (e_pos.sum() + (w * e_neg).sum())))
        con = torch.stack(terms).mean()

        class T:
            total = (1 - self.lam) * ce + self.lam * con

        return T


def _gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ------------------------------------------------------------------ one step == the registered loss


@pytest.mark.parametrize("loss", available_losses())
def test_one_step_equals_a_hand_step_with_the_registered_loss(tiny, tmp_path, loss):
    loop, meta, log = _loop_step(tiny, tmp_path, loss)
    loss_fn = create_loss(loss)
    hand, gnorm = _hand_step(tiny, loss_fn)
    torch.testing.assert_close(loop, hand, rtol=1e-5, atol=1e-6)
    assert log[0]["grad_norm"] == pytest.approx(gnorm, rel=1e-5)
    assert log[0]["lr"] == LR  # one step, no warm-up: cosine factor 1 at step 0
    assert meta["loss"] == loss and meta["loss_params"] == loss_fn.params
    assert set(k.split(".")[0] for k in loop) == (
        {"backbone"} | ({"head"} if loss_fn.uses_ce else set())
    )  # no projection with contrast_on="encoder", no head without CE
    if "lam" in loss_fn.params:  # a swapped mix (λ·CE + (1-λ)·contrastive) is a different step
        lam = loss_fn.params["lam"]
        swapped, _ = _hand_step(tiny, create_loss(loss, lam=1 - lam))
        assert _gap(loop, swapped) > 1e-3 > 100 * _gap(loop, hand)


def test_clce_step_is_the_literal_formula_and_hard_negatives_matter(tiny, tmp_path):
    lam, tau = 0.9, 0.5
    clce, _, _ = _loop_step(tiny, tmp_path, "clce")
    nohnm, _, _ = _loop_step(tiny, tmp_path, "clce-nohnm")
    lit_hard, _ = _hand_step(tiny, _Literal(lam, tau, hard=True))
    lit_flat, _ = _hand_step(tiny, _Literal(lam, tau, hard=False))
    lit_swapped, _ = _hand_step(tiny, _Literal(1 - lam, tau, hard=True))
    tol = 10 * max(_gap(clce, lit_hard), _gap(nohnm, lit_flat), 1e-7)
    torch.testing.assert_close(clce, lit_hard, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nohnm, lit_flat, rtol=1e-5, atol=1e-6)
    # the loop would fail these if it mixed up hard-negative weighting or swapped λ and 1-λ
    assert _gap(clce, lit_flat) > tol and _gap(nohnm, lit_hard) > tol
    assert _gap(clce, lit_swapped) > 1e-3


def test_contrast_on_projection_is_a_hand_step_through_the_projection(tiny, tmp_path):
    loop, meta, _ = _loop_step(tiny, tmp_path, "clce", contrast_on="projection")
    hand, _ = _hand_step(tiny, create_loss("clce"), contrast_on="projection")
    torch.testing.assert_close(loop, hand, rtol=1e-5, atol=1e-6)
    enc, enc_meta, _ = _loop_step(tiny, tmp_path, "clce", contrast_on="encoder")
    assert (meta["contrast_on"], enc_meta["contrast_on"]) == ("projection", "encoder")
    assert meta["embed_dim"] == 6 and enc_meta["embed_dim"] is None
    backbone = [k for k in enc if k.startswith("backbone.") and "running" not in k]
    assert max(float((loop[k] - enc[k]).abs().max()) for k in backbone) > 1e-4  # a different update
    _, ce_meta, _ = _loop_step(tiny, tmp_path, "ce", contrast_on="projection")
    assert ce_meta["contrast_on"] is None  # no contrastive term: nothing to place
    with pytest.raises(ConfigError, match=r"--contrast-on 'head': choose encoder or projection"):
        _loop_step(tiny, tmp_path, "clce", contrast_on="head")


# ------------------------------------------------------------------ schedule


def test_lr_schedule_literal_values():
    assert lr_factors(6, 2) == pytest.approx(
        [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627], abs=1e-15)
    assert lr_factors(4, 0) == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.14644660940672627], abs=1e-15)
    assert lr_factor(0, 1, 0) == 1.0


@pytest.mark.parametrize(
    "epochs, batch, warmup, expected",
    [
        (4, 8, 1, [1.0, 1.0, 0.75, 0.25]),  # 1 step per epoch: every step's lr is logged
        (4, 8, 2, [0.5, 1.0, 1.0, 0.5]),
        (2, 4, 1, [1.0, 0.5]),  # 2 steps per epoch, factors 0.5 1 | 1 0.5: the last step's is logged
    ],
)
def test_the_loop_follows_the_schedule(tiny, tmp_path, epochs, batch, warmup, expected):
    out = finetune(tiny, "conv4", loss="ce", batch_size=batch, out=tmp_path / "s.pt",
                   **{**STEP, "epochs": epochs, "warmup_epochs": warmup})
    assert [r["lr"] for r in read_log(_load(out)["fewshot_bench"]["log"])] == pytest.approx(
        [LR * e for e in expected], abs=1e-12)


# ------------------------------------------------------------------ views, resume


class _Recorder(nn.Module):
    """A backbone that keeps every input batch it sees."""

    out_dim = 3

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.conv(x).mean((2, 3))


def test_two_augmented_views_differ(tiny, tmp_path):
    rec = _Recorder()
    finetune(tiny, "rec", backbone=rec, loss="clce", batch_size=8, out=tmp_path / "v.pt",
             **{**STEP, "augment": True})
    (x,) = rec.seen
    assert x.shape == (16, 3, 16, 16)
    first, second = x[:8], x[8:]
    assert not torch.equal(first, second)
    assert sum(not torch.equal(first[i], second[i]) for i in range(8)) >= 6  # (2% chance of a repeat each)
    rec = _Recorder()
    finetune(tiny, "rec", backbone=rec, loss="clce", batch_size=8, out=tmp_path / "w.pt", **STEP)
    assert torch.equal(rec.seen[0][:8], rec.seen[0][8:])  # augment=False: both views are the image
    rec = _Recorder()
    finetune(tiny, "rec", backbone=rec, loss="ce", batch_size=8, out=tmp_path / "c.pt", **STEP)
    assert rec.seen[0].shape[0] == 8  # CE-only: one view


class _Crash(RuntimeError):
    pass


def _crash_at(epoch):
    def hook(entry):
        if entry["epoch"] == epoch:
            raise _Crash

    return hook


def test_resume_after_interruption_is_bit_identical_with_val_and_log(tmp_path):
    train, val = make_split(n_classes=4, per_class=4, seed=2), _val_split()
    kw = dict(STEP, epochs=3, warmup_epochs=1, augment=True, optimizer="adamw", lr=3e-3, loss="clce",
              batch_size=8, val_split=val, val_every=1, keep="best", **_VAL)
    straight = finetune(train, "conv4", out=tmp_path / "a.pt", **kw)
    out = tmp_path / "b.pt"
    with pytest.raises(_Crash):
        finetune(train, "conv4", out=out, log=_crash_at(2), **kw)
    assert len(read_log(tmp_path / "b.log.jsonl")) == 2
    finetune(train, "conv4", out=out, resume=True, **kw)
    a, b = _load(straight), _load(out)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for key in ("val", "selected_epoch", "train_loss_history"):
        assert a["fewshot_bench"][key] == b["fewshot_bench"][key]
    drop = ("seconds", "images_per_s", "val_seconds")
    la, lb = (read_log(tmp_path / n) for n in ("a.log.jsonl", "b.log.jsonl"))
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == [
        {k: v for k, v in r.items() if k not in drop} for r in lb]


# ------------------------------------------------------------------ image size, seeds, log


def test_image_size_is_honoured_and_round_trips(tmp_path):
    big = make_split(n_classes=2, per_class=4, side=84, seed=3)
    out = finetune(big, "conv4", loss="ce", batch_size=8, image_size=32, out=tmp_path / "m.pt",
                   **{**STEP, "transform": "metaoptnet-mini"})
    meta = _load(out)["fewshot_bench"]
    assert meta["image_size"] == 32 and meta["transform"] == "metaoptnet-mini@32"
    assert meta["protocol"] == {
        "transform": "metaoptnet-mini@32", "image_size": 32, "resize": 32, "crop": False,
        "mean": pytest.approx(list(METAOPTNET_MINI_MEAN)), "std": pytest.approx(list(METAOPTNET_MINI_STD)),
        "pool": "none", "feature_layer": "final",
    }
    tf = transform_from_meta(meta["protocol"])  # what eval rebuilds from the checkpoint
    assert tf.key == meta["transform_key"]
    assert not load_checkpoint(out, create_backbone("conv4", image_size=32, hidden=HIDDEN)).missing
    rec = _Recorder()
    finetune(big, "rec", backbone=rec, loss="ce", batch_size=8, image_size=32, out=tmp_path / "r.pt",
             **{**STEP, "transform": "metaoptnet-mini"})
    (x,) = rec.seen
    (idx,) = D.shard_batches(8, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, tf(big.images[idx.numpy()]))  # what eval rebuilds is what training fed
    same = finetune(make_split(side=16), "conv4", loss="ce", image_size=16, batch_size=16,
                    out=tmp_path / "u.pt", **STEP)
    same_meta = _load(same)["fewshot_bench"]
    assert same_meta["transform"] == "unit" and same_meta["protocol"]["resize"] is None  # already 16 px: no resize
    assert transform_from_meta(same_meta["protocol"]).key == same_meta["transform_key"]


def test_seeds_give_one_checkpoint_per_initialisation(tiny, tmp_path):
    paths = finetune_seeds(tiny, "conv4", seeds=[0, 1], loss="ce", batch_size=8, out=tmp_path / "ckpt.pt", **STEP)
    assert paths == [tmp_path / "ckpt-seed0.pt", tmp_path / "ckpt-seed1.pt"]
    a, b = (_load(p) for p in paths)
    assert (a["fewshot_bench"]["seed"], b["fewshot_bench"]["seed"]) == (0, 1)
    assert a["fewshot_bench"]["log"] == str(tmp_path / "ckpt-seed0.log.jsonl")
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    alone = _load(finetune(tiny, "conv4", seed=1, loss="ce", batch_size=8, out=tmp_path / "one.pt", **STEP))
    assert all(torch.equal(alone["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    assert finetune_seeds(tiny, "conv4", seeds=[3], loss="ce", batch_size=8, out=tmp_path / "x.pt",
                          **STEP) == [tmp_path / "x.pt"]
    assert seed_path("r/run.log.jsonl", 2, 3).as_posix() == "r/run-seed2.log.jsonl"
    with pytest.raises(ConfigError, match="--seeds lists seed 1 twice"):
        finetune_seeds(tiny, "conv4", seeds=[1, 1], loss="ce", out=tmp_path / "y.pt", **STEP)


@pytest.mark.parametrize("loss", ["ce", "supcon", "clce"])
def test_jsonl_log_has_every_field_and_the_weighted_total(tmp_path, loss):
    split = make_split(n_classes=4, per_class=4, seed=4)
    out = finetune(split, "conv4", loss=loss, batch_size=8, log_file=tmp_path / "train.jsonl",
                   out=tmp_path / "m.pt", **{**STEP, "epochs": 2, "augment": True})
    assert _load(out)["fewshot_bench"]["log"] == str(tmp_path / "train.jsonl")
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 2
    loss_fn = create_loss(loss)
    for epoch, line in enumerate(lines, 1):
        r = json.loads(line)
        assert {"epoch", "loss", "ce", "contrastive", "lr", "grad_norm", "images_per_s", "seconds"} <= set(r)
        assert r["epoch"] == epoch and r["grad_norm"] > 0 and r["images_per_s"] > 0 and r["seconds"] > 0
        lam = loss_fn.params.get("lam")
        if lam is not None:
            assert r["loss"] == pytest.approx((1 - lam) * r["ce"] + lam * r["contrastive"], rel=1e-6)
        else:
            assert r["loss"] == pytest.approx(r["ce"] if loss_fn.uses_ce else r["contrastive"], rel=1e-12)
        assert (r["ce"] is None) != loss_fn.uses_ce and (r["contrastive"] is None) != loss_fn.uses_contrastive


# ------------------------------------------------------------------ validation and keep=best

_VAL = dict(val_ways=3, val_shots=1, val_queries=2, val_episodes=20)


def _val_split():
    return dataclasses.replace(make_split(n_classes=4, per_class=4, seed=9), split="val", fingerprint="fp-val")


def test_validation_is_protonet_on_fixed_val_episodes(tiny, tmp_path):
    val = _val_split()
    kw = dict(STEP, epochs=2, loss="ce", batch_size=8)
    out = finetune(tiny, "conv4", out=tmp_path / "v.pt", val_split=val, val_every=1, **_VAL, **kw)
    meta = _load(out)["fewshot_bench"]
    assert [v["epoch"] for v in meta["val"]] == [1, 2] and meta["keep"] == "last" and meta["selected_epoch"] == 2
    assert meta["val_spec"]["ways"] == 3 and meta["val_spec"]["episodes"] == 20
    # recompute the last validation by hand: eval-mode features, class means, squared Euclidean
    net = create_backbone("conv4", image_size=16, hidden=HIDDEN)
    load_checkpoint(out, net)
    net.eval()
    with torch.no_grad():
        feats = net(torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255.0)
    eps = EpisodeSet.from_split(EpisodeSpec(3, 1, 2, 20, 0), val)
    s_rows, q_rows = eps.indices(val)
    acc = []
    for s, q in zip(s_rows, q_rows):
        protos = feats[s].reshape(3, 1, -1).mean(1)
        pred = ((feats[q][:, None, :] - protos[None]) ** 2).sum(-1).argmin(1)
        acc.append(int((pred == torch.arange(3).repeat_interleave(2)).sum()) / 6)
    assert meta["val"][-1]["accuracy"] == pytest.approx(np.mean(acc), abs=1e-12)
    log = read_log(meta["log"])
    assert [r["val_accuracy"] for r in log] == [v["accuracy"] for v in meta["val"]]
    plain = finetune(tiny, "conv4", out=tmp_path / "p.pt", **kw)  # validating does not change training
    assert all(torch.equal(_load(plain)["state_dict"][k], v) for k, v in _load(out)["state_dict"].items())


def test_keep_best_writes_the_best_val_epoch(tiny, tmp_path, monkeypatch):
    import fewshot_bench.train.validate as validate

    scripted = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(validate, "val_accuracy", lambda *a, **k: (next(scripted), 0.01))
    kw = dict(STEP, epochs=3, loss="ce", batch_size=8, val_split=_val_split(), val_every=1, keep="best", **_VAL)
    out = finetune(tiny, "conv4", out=tmp_path / "best.pt", **kw)
    meta = _load(out)["fewshot_bench"]
    assert meta["keep"] == "best" and meta["selected_epoch"] == 2
    assert [(v["epoch"], v["accuracy"]) for v in meta["val"]] == [(1, 0.5), (2, 0.9), (3, 0.7)]
    # the weights after epoch 2: a run of the same config stopped right after it
    scripted = iter([0.5, 0.9, 0.7])
    with pytest.raises(_Crash):
        finetune(tiny, "conv4", out=tmp_path / "stop.pt", log=_crash_at(2), **kw)
    epoch2 = _load(state_path(tmp_path / "stop.pt"))["model"]
    best = _load(out)["state_dict"]
    assert all(torch.equal(best[k], epoch2[k]) for k in best)
    last = _load(state_path(out))["model"]
    assert any(not torch.equal(best[k], last[k]) for k in best)


def test_validation_settings_are_checked(tiny, tmp_path):
    with pytest.raises(ConfigError, match="--keep best needs validation: add --val-every N"):
        finetune(tiny, "conv4", loss="ce", batch_size=8, keep="best", out=tmp_path / "x.pt", **STEP)
    with pytest.raises(ConfigError, match="--val-every 2 needs a val split"):
        finetune(tiny, "conv4", loss="ce", batch_size=8, val_every=2, out=tmp_path / "x.pt", **STEP)
    with pytest.raises(ConfigError, match=r"validation on synthetic/val: --val-ways 5 is more than the 4 classes"):
        finetune(tiny, "conv4", loss="ce", batch_size=8, val_every=1, val_split=_val_split(),
                 out=tmp_path / "x.pt", **STEP)


# ------------------------------------------------------------------ pretrained starting points


def test_pretrained_timm_weights_load_strictly_and_carry_their_protocol(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = timm.create_model("test_resnet", num_classes=7)  # an ImageNet-style model with its head
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    split = make_split(n_classes=2, per_class=2, side=16, seed=6)
    kw = dict(STEP, loss="ce", batch_size=4, lr=1e-9, arch_kwargs=None, transform=None)
    out = finetune(split, "timm:test_resnet", pretrained=tmp_path / "w.safetensors", out=tmp_path / "t.pt", **kw)
    meta = _load(out)["fewshot_bench"]
    pre = meta["pretrained"]
    assert pre["path"] == str(tmp_path / "w.safetensors") and len(pre["sha256"]) == 64
    assert pre["ignored_head_keys"] == 2  # fc.weight, fc.bias
    assert pre["pretrained_cfg"]["input_size"] == [3, 160, 160] and pre["pretrained_cfg"]["mean"] == [0.5] * 3
    assert meta["protocol"] == {"transform": "pretrained-cfg", "image_size": 160, "resize": 168, "crop": True,
                                "mean": [0.5] * 3, "std": [0.5] * 3, "pool": None, "feature_layer": "final"}  # timm: its own pooling
    weights = _load(out)["state_dict"]
    conv = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 4)
    torch.testing.assert_close(weights[conv], src.state_dict()[conv], atol=1e-6, rtol=0)  # lr ~ 0: unchanged
    small = finetune(split, "timm:test_resnet", pretrained=tmp_path / "w.safetensors", image_size=32,
                     out=tmp_path / "s.pt", **kw)
    proto = _load(small)["fewshot_bench"]["protocol"]
    assert (proto["image_size"], proto["resize"], proto["crop"], proto["mean"]) == (32, 32, False, [0.5] * 3)


def test_pretrained_files_are_checked_strictly(tmp_path):
    from fewshot_bench.train.pretrained import load_pretrained

    torch.manual_seed(0)
    src = create_backbone("conv4", image_size=16, hidden=HIDDEN)
    sd = src.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ok.pt")
    target = create_backbone("conv4", image_size=16, hidden=HIDDEN)
    info = load_pretrained(target, tmp_path / "ok.pt")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in sd.items())
    assert (info["pretrained_cfg"], info["ignored_head_keys"]) == (None, 0)  # not a timm model, no head
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "0.0.weight"}, r"^--pretrained: .*1 missing keys? \(e.g. 0.0.weight"),
        "extra": ({**sd, "extra.weight": torch.zeros(1)}, r"^--pretrained: .*1 unexpected keys? \(e.g. extra.weight"),
        "shape": ({**sd, "0.0.bias": torch.zeros(3)}, r"^--pretrained: .*1 shape mismatch.*0.0.bias"),
    }
    for name, (bad, match) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=match) as err:
            load_pretrained(create_backbone("conv4", image_size=16, hidden=HIDDEN), tmp_path / f"{name}.pt")
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(target, tmp_path / "nope.safetensors")


# -- the per-epoch line `fewshot-bench finetune` prints ------------------------------------------------
def test_format_record_prints_every_field_it_is_given():
    from fewshot_bench.train.log import format_record

    full = {"seed": 2, "epoch": 3, "epochs": 10, "loss": 1.23456, "ce": 1.1, "contrastive": 2.34567,
            "lr": 0.001, "val_accuracy": 0.452, "val_ci95": 0.011, "seconds": 12.25, "val_seconds": 1.0,
            "images_per_s": 812.6}  # fmt: skip
    assert format_record(full) == (
        "seed 2 epoch 3/10  loss 1.2346 (ce 1.1000, contrastive 2.3457)  lr 1.00e-03  "
        "val 45.20 ± 1.10 %  13.2 s (813 img/s)"
    )
    bare = {"epoch": 1, "loss": 0.5, "lr": 0.1}  # no seed, epochs, terms, validation or timings
    assert format_record(bare) == "epoch 1  loss 0.5000  lr 1.00e-01  0.0 s (0 img/s)"
    partial = dict(bare, seed=0, epochs=0, ce=0.25, contrastive=None, val_accuracy=0.5, val_ci95=None,
                   seconds=2.0, val_seconds=None)  # fmt: skip
    assert format_record(partial) == "seed 0 epoch 1  loss 0.5000 (ce 0.2500)  lr 1.00e-01  val 50.00 ± 0.00 %  2.0 s (0 img/s)"
