"""Published checkpoint layouts load exactly, or are refused with one line that says what to do.

Every synthetic file here follows the public code that writes it: the key names and shapes
are spelled out below per block, after the source named in each builder's docstring, and
wrapped as that code nests and prefixes them. Each layout is checked twice:

- full size, on the ``meta`` device (exact public shapes, no memory): every key is loaded or
  dropped by a named rule, nothing missing, the format is recognised;
- narrow widths, with real tensors: features equal those of the same model loaded with a plain
  ``load_state_dict`` of the un-nested, un-prefixed backbone keys.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_bench.backbones import create_backbone, load_checkpoint, read_checkpoint_meta
from fewshot_bench.backbones.checkpoint import SAFE_GLOBALS
from fewshot_bench.backbones.convert import convert_checkpoint
from fewshot_bench.backbones.formats import RULES
from fewshot_bench.backbones.wrn import WideResNet
from fewshot_bench.cli import main
from fewshot_bench.errors import CheckpointError, ConfigError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# full-size layouts load into models on the meta device, where BatchNorm's fill-in of absent counters warns
pytestmark = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter:UserWarning")


class Shape(tuple):
    """A tensor to be made (full size: on ``meta``; narrow: random)."""


def _bn(out: dict, name: str, c: int, nbt: bool = True) -> None:
    """``nn.BatchNorm2d(c)``: weight, bias, running_mean, running_var (c,) [+ num_batches_tracked ()]."""
    for s in BN if nbt else BN[:4]:
        out[f"{name}.{s}"] = Shape(() if s == "num_batches_tracked" else (c,))


def resnet12_keys(widths=(64, 160, 320, 640), *, se: bool = False, nbt: bool = True) -> dict[str, Shape]:
    """ResNet-12 of WangYueFt/rfs ``models/resnet.py`` (= MetaOptNet ``ResNet12_embedding.py``, FEAT
    ``model/networks/res12.py``, LibFewShot ``resnet_12.py``, easyfsl ``feat_resnet12.py``): one
    ``BasicBlock`` per ``layerK``: ``conv1/2/3 = conv3x3(bias=False)`` + ``bn1/2/3``,
    ``downsample = Sequential(Conv2d(cin, c, 1, bias=False), BatchNorm2d(c))``; RFS ``use_se`` adds
    ``se = SELayer(c, 4)``, ``fc = Sequential(Linear(c, c // 4), ReLU, Linear(c // 4, c), Sigmoid)``."""
    out: dict[str, Shape] = {}
    cin = 3
    for i, c in enumerate(widths, 1):
        p = f"layer{i}.0."
        out[p + "conv1.weight"] = Shape((c, cin, 3, 3))
        _bn(out, p + "bn1", c, nbt)
        out[p + "conv2.weight"] = Shape((c, c, 3, 3))
        _bn(out, p + "bn2", c, nbt)
        out[p + "conv3.weight"] = Shape((c, c, 3, 3))
        _bn(out, p + "bn3", c, nbt)
        out[p + "downsample.0.weight"] = Shape((c, cin, 1, 1))
        _bn(out, p + "downsample.1", c, nbt)
        if se:
            out[p + "se.fc.0.weight"] = Shape((c // 4, c))
            out[p + "se.fc.0.bias"] = Shape((c // 4,))
            out[p + "se.fc.2.weight"] = Shape((c, c // 4))
            out[p + "se.fc.2.bias"] = Shape((c,))
        cin = c
    return out


def wrn_keys(depth: int = 28, k: int = 10) -> dict[str, Shape]:
    """WRN of nupurkmr9/S2M2_fewshot ``wrn_mixup_model.py``: ``conv1`` (16, 3, 3, 3); ``blockG =
    NetworkBlock`` → ``layer.N = BasicBlock(bn1, conv1, bn2, conv2[, convShortcut])``, widths
    16, 16k, 32k, 64k, n = (depth - 4) / 6; ``convShortcut`` (1×1, no bias) when in ≠ out; final ``bn1``."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    out: dict[str, Shape] = {"conv1.weight": Shape((16, 3, 3, 3))}
    for g in (1, 2, 3):
        for j in range(n):
            p, cin, cout = f"block{g}.layer.{j}.", widths[g - 1] if j == 0 else widths[g], widths[g]
            _bn(out, p + "bn1", cin)
            out[p + "conv1.weight"] = Shape((cout, cin, 3, 3))
            _bn(out, p + "bn2", cout)
            out[p + "conv2.weight"] = Shape((cout, cout, 3, 3))
            if cin != cout:
                out[p + "convShortcut.weight"] = Shape((cout, cin, 1, 1))
    _bn(out, "bn1", widths[3])
    return out


def conv4_keys(hidden: int = 64, *, nbt: bool = False) -> dict[str, Shape]:
    """jakesnell/prototypical-networks ``few_shot.py``: ``encoder = Sequential(conv_block × 4, Flatten())``,
    ``conv_block = Sequential(Conv2d(cin, cout, 3, padding=1), BatchNorm2d(cout), ReLU(), MaxPool2d(2))``
    (x_dim 3, hid_dim = z_dim = 64); saved under PyTorch 0.3: no num_batches_tracked. Keys without ``encoder.``."""
    out: dict[str, Shape] = {}
    for i, cin in enumerate((3, hidden, hidden, hidden)):
        out[f"{i}.0.weight"] = Shape((hidden, cin, 3, 3))
        out[f"{i}.0.bias"] = Shape((hidden,))
        _bn(out, f"{i}.1", hidden, nbt)
    return out


def feat_attention_keys(d: int) -> dict[str, Shape]:
    """Sha-Lab/FEAT ``model/models/feat.py``: ``slf_attn = MultiHeadAttention(1, d, d, d)``."""
    return {
        "slf_attn.w_qs.weight": Shape((d, d)),
        "slf_attn.w_ks.weight": Shape((d, d)),
        "slf_attn.w_vs.weight": Shape((d, d)),
        "slf_attn.layer_norm.weight": Shape((d,)),
        "slf_attn.layer_norm.bias": Shape((d,)),
        "slf_attn.fc.weight": Shape((d, d)),
        "slf_attn.fc.bias": Shape((d,)),
    }


def _pre(prefix: str, sd: dict) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ------------------------------------------------------------------------------------ the layouts
@dataclass(frozen=True)
class Spec:
    r12: tuple[int, ...]
    wrn: tuple[int, int]
    hidden: int
    n_cls: int


FULL = Spec((64, 160, 320, 640), (28, 10), 64, 64)
TINY = Spec((8, 16, 32, 64), (10, 2), 8, 5)


def _opt(model: str) -> argparse.Namespace:  # a slice of RFS train_supervised.py's parse_option()
    return argparse.Namespace(model=model, dataset="miniImageNet", learning_rate=0.05, lr_decay_epochs=[60, 80],
                              epochs=100, n_gpu=1, save_folder="./models_pretrained/resnet12_miniImageNet")


def rfs_last(bb: dict, s: Spec, T: Callable) -> Any:
    """rfs train_supervised.py: ``{'opt': opt, 'model': model.state_dict()}`` (<model>_last.pth)."""
    return {"opt": _opt("resnet12"), "model": {**bb, "classifier.weight": T(s.n_cls, s.r12[-1]),
                                               "classifier.bias": T(s.n_cls)}}


def rfs_epoch_dataparallel(bb: dict, s: Spec, T: Callable) -> Any:
    """rfs ckpt_epoch_N.pth ``{'epoch', 'model'}`` from a fork that saves ``DataParallel`` keys."""
    return {"epoch": 90, "model": collections.OrderedDict(_pre("module.", bb))}


def rfs_se(bb: dict, s: Spec, T: Callable) -> Any:
    return {"opt": _opt("seresnet12"), "model": {**bb, "classifier.weight": T(s.n_cls, s.r12[-1]),
                                                 "classifier.bias": T(s.n_cls)}}


def metaoptnet(bb: dict, s: Spec, T: Callable) -> Any:
    """MetaOptNet train.py: ``{'embedding': DataParallel(resnet12).state_dict(), 'head': cls_head.state_dict()}``."""
    return {"embedding": _pre("module.", bb), "head": {"scale": T(1)}}


def feat_pretrain(bb: dict, s: Spec, T: Callable) -> Any:
    """FEAT pretrain.py: ``dict(params=Classifier.state_dict())`` → ``encoder.*`` + ``fc`` (num_class 64)."""
    return {"params": {**_pre("encoder.", bb), "fc.weight": T(s.n_cls, s.r12[-1]), "fc.bias": T(s.n_cls)}}


def feat_model(bb: dict, s: Spec, T: Callable) -> Any:
    """FEAT fsl_trainer: ``dict(params=FEAT.state_dict())`` → ``encoder.*`` + ``slf_attn.*``."""
    attn = {k: T(*v) for k, v in feat_attention_keys(s.r12[-1]).items()}
    return {"params": {**_pre("encoder.", bb), **attn}}


def s2m2(bb: dict, s: Spec, T: Callable) -> Any:
    """S2M2 train.py (S2M2_R best.tar): ``{'epoch', 'state': DataParallel(wrn28_10).state_dict(),
    'rotate': Sequential(Linear(640, 4)).state_dict()}``; head ``distLinear``: ``L`` with WeightNorm(dim=0)."""
    d = 64 * s.wrn[1]
    state = {**bb, "linear.L.weight_g": T(200, 1), "linear.L.weight_v": T(200, d)}
    return {"epoch": 399, "state": _pre("module.", state), "rotate": {"0.weight": T(4, d), "0.bias": T(4)}}


def protonet_converted(bb: dict, s: Spec, T: Callable) -> Any:
    """What ``fewshot-bench convert`` writes for prototypical-networks' best_model.pt: ``encoder.*``."""
    return _pre("encoder.", bb)


def easyfsl(bb: dict, s: Spec, T: Callable) -> Any:
    """easyfsl: ``torch.save(PrototypicalNetworks(feat_resnet12()).state_dict())`` → ``backbone.*``."""
    return _pre("backbone.", bb)


def libfewshot_best(bb: dict, s: Spec, T: Callable) -> Any:
    """LibFewShot save_model(SaveType.BEST): ``model.state_dict()`` (Baseline: ``emb_func`` + ``classifier``)."""
    return {**_pre("emb_func.", bb), "classifier.weight": T(s.n_cls, s.r12[-1]), "classifier.bias": T(s.n_cls)}


def libfewshot_last(bb: dict, s: Spec, T: Callable) -> Any:
    """LibFewShot save_model(SaveType.LAST): ``{'epoch', 'model', 'optimizer', 'lr_scheduler'}``."""
    return {"epoch": 99, "model": libfewshot_best(bb, s, T),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
            "lr_scheduler": {"step_size": 40, "gamma": 0.5, "last_epoch": 99}}


def _r12(s: Spec, **kw):
    return resnet12_keys(s.r12, **kw)


def _make_r12(name: str):
    return lambda s: create_backbone(name) if s is FULL else create_backbone(name, channels=s.r12)


def _make_wrn(s: Spec):
    return create_backbone("wrn28_10") if s is FULL else WideResNet(depth=s.wrn[0], widen_factor=s.wrn[1])


def _make_conv4(s: Spec):
    return create_backbone("conv4") if s is FULL else create_backbone("conv4", hidden=s.hidden, image_size=32)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable
    keys: Callable  # Spec -> bare backbone {key: Shape}
    make: Callable  # Spec -> model
    format: str
    stripped: list
    dropped: dict  # rule -> count
    defaulted: int = 0


CASES = [
    Case("rfs-last", rfs_last, _r12, _make_r12("resnet12"), "rfs", [],
         {"classifier-head": 2, "training-metadata": 1}),
    Case("rfs-epoch-dataparallel", rfs_epoch_dataparallel, _r12, _make_r12("resnet12"), "rfs", ["module."],
         {"training-metadata": 1}),
    Case("rfs-seresnet12", rfs_se, lambda s: _r12(s, se=True), _make_r12("seresnet12"), "rfs", [],
         {"classifier-head": 2, "training-metadata": 1}),
    Case("metaoptnet", metaoptnet, lambda s: _r12(s, nbt=False), _make_r12("resnet12"), "metaoptnet", ["module."],
         {"classifier-head": 1}, defaulted=16),
    Case("feat-pretrain", feat_pretrain, _r12, _make_r12("resnet12"), "feat", ["encoder."], {"classifier-head": 2}),
    Case("feat-model", feat_model, _r12, _make_r12("resnet12"), "feat", ["encoder."], {"method-module": 7}),
    Case("s2m2", s2m2, lambda s: wrn_keys(*s.wrn), _make_wrn, "s2m2", ["module."],
         {"classifier-head": 2, "training-metadata": 1, "rotation-head": 1}),
    Case("protonet", protonet_converted, lambda s: conv4_keys(s.hidden), _make_conv4, "protonet", ["encoder."], {},
         defaulted=4),
    Case("easyfsl", easyfsl, _r12, _make_r12("resnet12"), "easyfsl", ["backbone."], {}),
    Case("libfewshot-best", libfewshot_best, _r12, _make_r12("resnet12"), "libfewshot", ["emb_func."],
         {"classifier-head": 2}),
    Case("libfewshot-last", libfewshot_last, _r12, _make_r12("resnet12"), "libfewshot", ["emb_func."],
         {"classifier-head": 2, "optimizer-state": 2, "training-metadata": 1}),
]


def _maker(device: str, seed: int = 0) -> Callable:
    g = torch.Generator().manual_seed(seed)

    def T(*shape: int, key: str = "") -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta", dtype=torch.long if key.endswith("tracked") else torch.float32)
        if key.endswith("num_batches_tracked"):
            return torch.tensor(7)
        if key.endswith("running_var"):
            return torch.rand(shape, generator=g) + 0.5
        return torch.randn(shape, generator=g) * 0.2

    return T


def _write(case: Case, s: Spec, device: str, path) -> dict[str, torch.Tensor]:
    T = _maker(device)
    bb = {k: T(*v, key=k) for k, v in case.keys(s).items()}
    torch.save(case.build(bb, s, T), path)
    return bb


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_full_size_layout_loads_with_every_key_explained(tmp_path, case):
    _write(case, FULL, "meta", tmp_path / "ck.pth")
    with torch.device("meta"):
        model = case.make(FULL)
    report = load_checkpoint(tmp_path / "ck.pth", model)
    assert report.format == case.format
    assert report.missing == report.unexpected == report.mismatched == [] and report.ok and not report.partial
    assert {rule: len(v) for rule, v in report.dropped.items()} == case.dropped
    assert set(report.dropped) <= set(RULES)
    assert sum(map(len, report.defaulted.values())) == case.defaulted
    assert report.stripped == case.stripped
    assert report.consumed == len(model.state_dict()) - case.defaulted
    line = report.summary()
    assert "\n" not in line and line.startswith(f"{case.format} format: {report.consumed} tensors loaded")
    json.dumps(report.to_json())  # plain JSON


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_narrow_layout_features_equal_plain_load_state_dict(tmp_path, case):
    bb = _write(case, TINY, "cpu", tmp_path / "ck.pth")
    torch.manual_seed(1)
    ours = case.make(TINY).eval()
    load_checkpoint(tmp_path / "ck.pth", ours)
    torch.manual_seed(2)
    ref = case.make(TINY).eval()
    result = ref.load_state_dict(bb, strict=case.defaulted == 0)  # BatchNorm fills absent counters itself
    assert not result.unexpected_keys and not result.missing_keys
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_literal_key_lists_match_the_models_and_easyfsl():
    """The builders' counts are the public ones; easyfsl's own modules give the same keys."""
    assert len(resnet12_keys()) == 96 and len(resnet12_keys(se=True)) == 112
    assert len(resnet12_keys(nbt=False)) == 80 and len(wrn_keys()) == 153 and len(conv4_keys()) == 24
    with torch.device("meta"):
        for keys, arch in ((resnet12_keys(), "resnet12"), (resnet12_keys(se=True), "seresnet12"),
                           (wrn_keys(), "wrn28_10"), (conv4_keys(nbt=True), "conv4")):
            sd = create_backbone(arch).state_dict()
            assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v) for k, v in keys.items()}, arch
    pytest.importorskip("easyfsl")
    from easyfsl.methods import FEAT, PrototypicalNetworks
    from easyfsl.modules import MultiHeadAttention
    from easyfsl.modules.feat_resnet12 import feat_resnet12

    with torch.device("meta"):
        proto = PrototypicalNetworks(feat_resnet12()).state_dict()
        feat = FEAT(feat_resnet12(), attention_module=MultiHeadAttention(1, 640, 640, 640)).state_dict()
    assert {k: tuple(v.shape) for k, v in proto.items()} == {k: tuple(v) for k, v in easyfsl(resnet12_keys(), FULL,
                                                                                          None).items()}
    attn = {k.replace("slf_attn.", "attention_module."): v for k, v in feat_attention_keys(640).items()}
    assert {k: tuple(v.shape) for k, v in feat.items() if not k.startswith("backbone.")} == attn


def test_easyfsl_feat_state_dict_loads(tmp_path):
    pytest.importorskip("easyfsl")
    from easyfsl.methods import FEAT
    from easyfsl.modules import MultiHeadAttention
    from easyfsl.modules.feat_resnet12 import feat_resnet12

    with torch.device("meta"):
        torch.save(FEAT(feat_resnet12(), attention_module=MultiHeadAttention(1, 640, 640, 640)).state_dict(),
                   tmp_path / "easyfsl-feat.pt")
        model = create_backbone("resnet12")
    report = load_checkpoint(tmp_path / "easyfsl-feat.pt", model)
    assert report.format == "easyfsl" and report.ok and report.consumed == 96
    assert {rule: len(v) for rule, v in report.dropped.items()} == {"method-module": 7}


# ------------------------------------------------------------------------------------ timm, safetensors
def _timm_full(seed: int = 0) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


def test_timm_state_dict_checkpoint_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    full = _timm_full()
    sd = full.state_dict()
    torch.save(sd, tmp_path / "hub.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    ns = argparse.Namespace(model="test_resnet", lr=0.4, sched="cosine", epochs=300, amp=True)
    torch.save({"epoch": 299, "arch": "test_resnet", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
                "version": 2, "args": ns, "amp_scaler": {"scale": 65536.0}, "metric": 71.2,
                "state_dict_ema": sd}, tmp_path / "train.pth.tar")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = full.forward_head(full.forward_features(x), pre_logits=True)
    expected = {
        "hub.pth": ("timm-state-dict", {"classifier-head": 2}),
        "model.safetensors": ("safetensors", {"classifier-head": 2}),
        "train.pth.tar": ("timm-checkpoint", {"classifier-head": 2, "training-metadata": 5, "optimizer-state": 2,
                                              "ema-copy": 1}),
    }
    for name, (fmt, dropped) in expected.items():
        model = create_backbone("timm:test_resnet").eval()
        report = load_checkpoint(tmp_path / name, model)
        assert report.format == fmt and report.ok, name
        assert {rule: len(v) for rule, v in report.dropped.items()} == dropped, name
        with torch.no_grad():
            assert torch.equal(model(x), want), name
    assert report.origin["args"]["sched"] == "cosine" and report.origin["arch"] == "test_resnet"


def test_damaged_safetensors_is_one_line(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"w\.safetensors is not a valid safetensors file") as exc:
        load_checkpoint(tmp_path / "w.safetensors", create_backbone("conv4"))
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------ refusals
def _save_full(tmp_path, case_name: str, name: str, *, mutate=None) -> Any:
    case = next(c for c in CASES if c.name == case_name)
    T = _maker("meta")
    bb = {k: T(*v, key=k) for k, v in case.keys(FULL).items()}
    obj = case.build(bb, FULL, T)
    if mutate:
        obj = mutate(obj)
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _meta(arch: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_backbone(arch, **kw)


def test_rfs_seresnet12_into_resnet12_is_refused_naming_seresnet12(tmp_path):
    path = _save_full(tmp_path, "rfs-seresnet12", "seresnet12_last.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, _meta("resnet12"))
    assert str(exc.value) == (
        f"checkpoint {path} (rfs format) does not fit --arch resnet12: 16 unexpected keys (e.g. "
        "layer1.0.se.fc.0.weight, layer1.0.se.fc.0.bias, layer1.0.se.fc.2.weight, ...); use --arch seresnet12, "
        "which consumes every key (or --allow-partial to load only what fits)"
    )
    report = load_checkpoint(path, _meta("resnet12"), allow_partial=True)
    assert report.partial and not report.ok and report.consumed == 96 and report.missing == []
    assert len(report.unexpected) == 16 and all(".se.fc." in k for k in report.unexpected)
    assert "16 unexpected" in report.summary() and "partial load" in report.summary()
    assert report.to_json()["unexpected"] == {"count": 16, "keys": report.unexpected}


@pytest.mark.parametrize(
    "case_name,arch,hint",
    [
        ("rfs-last", "wrn28_10", "use --arch resnet12, which consumes every key"),
        ("s2m2", "resnet12", "use --arch wrn28_10, which consumes every key"),
        ("protonet", "resnet12", "use --arch conv4, which consumes every key"),
        ("feat-pretrain", "conv4", "use --arch resnet12, which consumes every key"),
    ],
)
def test_wrong_arch_is_refused_naming_the_arch_that_fits(tmp_path, case_name, arch, hint):
    path = _save_full(tmp_path, case_name, "ck.pth")
    with pytest.raises(CheckpointError, match=rf"^checkpoint .*ck\.pth \(\S+ format\) does not fit --arch {arch}: "
                                              rf".*; {hint}$") as exc:
        load_checkpoint(path, _meta(arch))
    assert "\n" not in str(exc.value)


def test_missing_keys_are_refused(tmp_path):
    path = _save_full(tmp_path, "rfs-last", "ck.pth",
                      mutate=lambda o: {**o, "model": {k: v for k, v in o["model"].items()
                                                       if not k.startswith("layer4.")}})
    with pytest.raises(CheckpointError, match=r"\(rfs format\) does not fit --arch resnet12: 20 missing keys "
                                              r"\(e\.g\. layer4\.0\.conv1\.weight, layer4\.0\.bn1\.weight, "
                                              r"layer4\.0\.bn1\.bias, \.\.\.\); .*--allow-partial"):
        load_checkpoint(path, _meta("resnet12"))
    report = load_checkpoint(path, _meta("resnet12"), allow_partial=True)
    assert len(report.missing) == 20 and report.partial and report.consumed == 72


def test_other_widths_are_refused_naming_the_arch_kw(tmp_path):
    with torch.device("meta"):
        tadam = create_backbone("resnet12", channels=(64, 128, 256, 512)).state_dict()
    torch.save({"model": tadam}, tmp_path / "tadam.pth")
    with pytest.raises(CheckpointError, match=r"does not fit --arch resnet12: 60 shape mismatches \(e\.g\. "
                                              r"layer2\.0\.conv1\.weight: \[128, 64, 3, 3\] in checkpoint, "
                                              r"\[160, 64, 3, 3\] in model\); the widths differ: use --arch "
                                              r"resnet12 --arch-kw channels=\[64,128,256,512\]"):
        load_checkpoint(tmp_path / "tadam.pth", _meta("resnet12"))
    report = load_checkpoint(tmp_path / "tadam.pth", _meta("resnet12"), allow_partial=True)
    assert len(report.mismatched) == 60 and report.consumed == 24 + 12  # layer1 (64 wide in both), BN counters
    assert report.to_json()["mismatched"]["items"][0] == {"key": "layer2.0.conv1.weight", "checkpoint": [128, 64, 3, 3],
                                                          "model": [160, 64, 3, 3]}


def test_unexplained_extra_network_is_refused(tmp_path):
    path = _save_full(tmp_path, "rfs-last", "distill.pth", mutate=lambda o: {**o, "teacher": dict(o["model"])})
    with pytest.raises(CheckpointError, match=r"98 unexpected keys \(e\.g\. teacher\.layer1\.0\.conv1\.weight, "):
        load_checkpoint(path, _meta("resnet12"))


def test_no_tensor_in_common_fails_even_when_partial(tmp_path):
    path = _save_full(tmp_path, "rfs-last", "ck.pth")
    with pytest.raises(CheckpointError, match=r"no tensor in common \(checkpoint has e\.g\. layer1\.0\.conv1\.weight\)"):
        load_checkpoint(path, _meta("conv4"), allow_partial=True)


# ------------------------------------------------------------------------------------ pickled objects
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class Protonet(nn.Module):
    """prototypical-networks ``protonets/models/few_shot.py``: ``Protonet(encoder)``, saved whole by
    ``scripts/train/few_shot/train.py``: ``torch.save(model, 'best_model.pt')``."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()

        def conv_block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.encoder = nn.Sequential(conv_block(3, hidden), conv_block(hidden, hidden), conv_block(hidden, hidden),
                                     conv_block(hidden, hidden), Flatten())


class _Config:
    """Any class that is not on the allow-list."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_whole_module_pickle_is_refused_and_converts_with_trust(tmp_path, capsys):
    torch.manual_seed(0)
    proto = Protonet().eval()
    for m in proto.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
    src = tmp_path / "best_model.pt"
    torch.save(proto, src)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(src, create_backbone("conv4", hidden=8, image_size=32))
    msg = str(exc.value)
    assert msg == (
        f"checkpoint {src} is a whole-module pickle (torch.save(model) of {Protonet.__module__}.Protonet), refused "
        f"for safety: unpickling it runs code named in the file (weights_only=True); if you trust its source, "
        f"convert it once to a plain state dict: fewshot-bench convert {src} --out {tmp_path / 'best_model'}"
        f".state_dict.pt --trust-source"
    )
    with pytest.raises(CheckpointError, match="whole-module pickle"):
        read_checkpoint_meta(src)
    # no trust, no conversion, nothing written
    with pytest.raises(CheckpointError, match=r"runs any code the file holds; pass --trust-source only if you trust"):
        convert_checkpoint(src, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = proto.encoder(x)
    for dst, fmt in ((tmp_path / "c.pt", "protonet"), (tmp_path / "c.safetensors", "safetensors")):
        assert convert_checkpoint(src, dst, trust_source=True) == dst
        model = create_backbone("conv4", hidden=8, image_size=32).eval()
        report = load_checkpoint(dst, model)
        assert report.format == fmt and report.ok and report.stripped == ["encoder."] and report.consumed == 28
        with torch.no_grad():
            assert torch.equal(model(x), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "c.pt", "c.safetensors"]  # no temp files


def test_convert_cli(tmp_path, capsys):
    src, dst = tmp_path / "best_model.pt", tmp_path / "out" / "protonet.pt"
    torch.save(Protonet(), src)
    capsys.readouterr()
    assert main(["convert", str(src), "--out", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: converting ") and "--trust-source" in err
    assert not dst.exists()
    assert main(["convert", str(src), "--out", str(dst), "--trust-source"]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    assert load_checkpoint(dst, create_backbone("conv4", hidden=8, image_size=32)).ok
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "fewshot-bench convert best_model.pt --out protonet-conv4.safetensors --trust-source" in out


@pytest.mark.parametrize("kind", ["garbage", "missing-module", "same-path", "no-tensors"])
def test_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, kind):
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    if kind == "garbage":
        src.write_bytes(b"<html>not a checkpoint</html>")
        match = r"cannot convert .*src\.pt: torch\.load failed \(\w+.*\); is it a PyTorch checkpoint\?"
    elif kind == "missing-module":
        (tmp_path / "paper_models.py").write_text(
            "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.fc = torch.nn.Linear(2, 2)\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        import paper_models

        torch.save(paper_models.Net(), src)
        monkeypatch.delitem(sys.modules, "paper_models")
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
        match = r"needs the Python module 'paper_models', which is not importable here; run the command where"
    elif kind == "same-path":
        torch.save(Protonet(), src)
        dst = src
        match = r"--out .*src\.pt is the source file"
    else:
        torch.save({"epoch": 3}, src)
        match = r"holds no state dict"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises((CheckpointError, ConfigError), match=match) as exc:
        convert_checkpoint(src, dst, trust_source=True)
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_allowed_and_refused_globals(tmp_path):
    assert SAFE_GLOBALS == (argparse.Namespace,)
    with torch.device("meta"):
        sd = create_backbone("resnet12").state_dict()  # an OrderedDict: allowed by torch itself
    assert isinstance(sd, collections.OrderedDict)
    torch.save({"opt": _opt("resnet12"), "model": sd}, tmp_path / "ok.pth")
    report = load_checkpoint(tmp_path / "ok.pth", _meta("resnet12"))
    assert report.ok and report.origin["opt"]["model"] == "resnet12" and report.dropped["training-metadata"] == ["opt"]
    for name, extra, shown in (("custom.pth", _Config(), r"[\w.]*_Config"),
                               ("numpy.pth", np.float64(0.61), r"numpy\S*")):
        torch.save({"model": sd, "extra": extra}, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name} holds Python objects \({shown}\), refused for safety "
                                                  rf"\(weights_only=True\); if you trust its source, re-save its "
                                                  rf"tensors: fewshot-bench convert .* --trust-source$"):
            load_checkpoint(tmp_path / name, _meta("resnet12"))


def test_easyfsl_big_kernel_resnet18_is_refused_into_the_paper_stem_and_loads_into_its_own(tmp_path):
    """Same keys and shapes as the paper stem, another network: refused, then exact under stem=easyfsl-big."""
    from easyfsl.modules import resnet18 as easyfsl_resnet18

    from fewshot_bench.backbones import create_backbone, load_checkpoint

    torch.manual_seed(0)
    peer = easyfsl_resnet18(big_kernel=True, use_fc=False).eval()
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "easyfsl_big.pt"
    torch.save({f"backbone.{k}": v for k, v in peer.state_dict().items()}, path)  # easyfsl's ProtoNet(backbone)
    with pytest.raises(CheckpointError, match=r"big_kernel=True .*--arch-kw stem=easyfsl-big$"):
        load_checkpoint(path, create_backbone("resnet18"))
    ours = create_backbone("resnet18", stem="easyfsl-big").eval()
    assert load_checkpoint(path, ours).format == "easyfsl"
    x = torch.randn(2, 3, 84, 84)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x).flatten(1), rtol=1e-5, atol=1e-5)
