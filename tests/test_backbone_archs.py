"""Few-shot backbone architectures: public key names and shapes, and forwards against F.* references.

Each ``*_keys`` function below writes out, from the public reference code (not from our
models), the parameter/buffer names and shapes its checkpoints carry:

- ResNet-12: WangYueFt/rfs ``models/resnet.py`` (= kjunelee/MetaOptNet
  ``models/ResNet12_embedding.py`` = Sha-Lab/FEAT ``model/networks/res12.py``); SE from RFS
  ``SELayer(planes, 4)`` (``use_se=True``).
- Conv-4: jakesnell/prototypical-networks ``protonets/models/few_shot.py`` (``encoder.`` stripped).
- WRN-28-10: nupurkmr9/S2M2_fewshot ``wrn_mixup_model.py``.
- ResNet-18: torchvision ``resnet18`` names (FEAT ``res18.py``, easyfsl); CloserLook ``trunk.*``.

A synthetic state dict with exactly those names and shapes (random values, random BN running
statistics) must load with ``strict=True``, and in eval mode our features must equal an
independent forward written here with ``torch.nn.functional`` over that state dict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_bench.backbones import BACKBONES, create_backbone
from fewshot_bench.errors import ConfigError, DataError

TOL = dict(rtol=1e-5, atol=1e-5)

# ----------------------------------------------------------------------- public key lists


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def resnet12_keys(se: bool = False) -> dict[str, tuple]:
    """RFS/MetaOptNet/FEAT ResNet-12: layerK = Sequential(BasicBlock) with conv1-3/bn1-3, downsample."""
    keys: dict[str, tuple] = {}
    inplanes = 3
    for k, planes in enumerate((64, 160, 320, 640), start=1):
        p = f"layer{k}.0"
        keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
        keys.update(_bn(f"{p}.bn1", planes))
        keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
        keys.update(_bn(f"{p}.bn2", planes))
        keys[f"{p}.conv3.weight"] = (planes, planes, 3, 3)
        keys.update(_bn(f"{p}.bn3", planes))
        keys[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
        keys.update(_bn(f"{p}.downsample.1", planes))
        if se:  # SELayer(planes, 4): fc = [Linear(C, C//4), ReLU, Linear(C//4, C), Sigmoid]
            keys[f"{p}.se.fc.0.weight"] = (planes // 4, planes)
            keys[f"{p}.se.fc.0.bias"] = (planes // 4,)
            keys[f"{p}.se.fc.2.weight"] = (planes, planes // 4)
            keys[f"{p}.se.fc.2.bias"] = (planes,)
        inplanes = planes
    return keys


def conv4_keys(hidden: int = 64, in_chans: int = 3) -> dict[str, tuple]:
    """ProtoNet encoder: 4 × Sequential(Conv2d(3, pad 1, bias), BatchNorm2d, ReLU, MaxPool2d(2))."""
    keys: dict[str, tuple] = {}
    cin = in_chans
    for b in range(4):
        keys[f"{b}.0.weight"] = (hidden, cin, 3, 3)
        keys[f"{b}.0.bias"] = (hidden,)
        keys.update(_bn(f"{b}.1", hidden))
        cin = hidden
    return keys


def wrn28_10_keys() -> dict[str, tuple]:
    """S2M2 WideResNet(28, 10): conv1, block{1,2,3}.layer.{0..3}, final bn1 (``linear.*`` is the head)."""
    keys: dict[str, tuple] = {"conv1.weight": (16, 3, 3, 3)}
    widths = [16, 160, 320, 640]
    for g in (1, 2, 3):
        cin, cout = widths[g - 1], widths[g]
        for i in range(4):
            p = f"block{g}.layer.{i}"
            i_planes = cin if i == 0 else cout
            keys.update(_bn(f"{p}.bn1", i_planes))
            keys[f"{p}.conv1.weight"] = (cout, i_planes, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if i_planes != cout:
                keys[f"{p}.convShortcut.weight"] = (cout, i_planes, 1, 1)
    keys.update(_bn("bn1", 640))
    return keys


def resnet18_keys(stem: str = "imagenet") -> dict[str, tuple]:
    """torchvision ResNet-18 (fc dropped); FEAT/easyfsl's small stem has a 3×3 conv1."""
    k = 7 if stem == "imagenet" else 3
    keys: dict[str, tuple] = {"conv1.weight": (64, 3, k, k)}
    keys.update(_bn("bn1", 64))
    inplanes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for n in range(2):
            p = f"layer{layer}.{n}"
            cin = inplanes if n == 0 else planes
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(_bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn(f"{p}.bn2", planes))
            if n == 0 and (layer > 1 or inplanes != planes):
                keys[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", planes))
        inplanes = planes
    return keys


def closerlook_resnet18_keys() -> dict[str, tuple]:
    """CloserLookFewShot ResNet18: trunk = [conv1, bn1, relu, pool1, 8 × SimpleBlock, avgpool, Flatten]."""
    keys: dict[str, tuple] = {"trunk.0.weight": (64, 3, 7, 7)}
    keys.update(_bn("trunk.1", 64))
    indim, t = 64, 4
    for outdim in (64, 128, 256, 512):
        for _ in range(2):
            p = f"trunk.{t}"
            keys[f"{p}.C1.weight"] = (outdim, indim, 3, 3)
            keys.update(_bn(f"{p}.BN1", outdim))
            keys[f"{p}.C2.weight"] = (outdim, outdim, 3, 3)
            keys.update(_bn(f"{p}.BN2", outdim))
            if indim != outdim:
                keys[f"{p}.shortcut.weight"] = (outdim, indim, 1, 1)
                keys.update(_bn(f"{p}.BNshortcut", outdim))
            indim, t = outdim, t + 1
    return keys


def closerlook_to_torchvision(name: str) -> str:
    """The rename that maps CloserLook ResNet-18 keys onto torchvision's (reported to the loader)."""
    parts = name.split(".")
    idx = int(parts[1])
    if idx in (0, 1):
        return ("conv1." if idx == 0 else "bn1.") + ".".join(parts[2:])
    block = idx - 4
    sub = {
        "C1": "conv1",
        "BN1": "bn1",
        "C2": "conv2",
        "BN2": "bn2",
        "shortcut": "downsample.0",
        "BNshortcut": "downsample.1",
    }[parts[2]]
    return f"layer{block // 2 + 1}.{block % 2}.{sub}." + ".".join(parts[3:])


def synth(spec: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes: He-scaled weights, random BN affine and running stats."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in spec.items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(17)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean") or name.endswith(".bias"):
            sd[name] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            sd[name] = torch.rand(shape, generator=g) + 0.5
        else:  # conv / linear weight
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            sd[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return sd


# ----------------------------------------------------------------- independent F.* forwards


def _bnf(x, sd, p):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        training=False,
        eps=1e-5,
    )


def ref_resnet12(sd, x, se=False):
    """RFS BasicBlock: 3 × conv-BN-LReLU(0.1) (last LReLU after the sum), SE after bn3, maxpool 2."""
    for k in range(1, 5):
        p = f"layer{k}.0"
        o = F.leaky_relu(_bnf(F.conv2d(x, sd[f"{p}.conv1.weight"], padding=1), sd, f"{p}.bn1"), 0.1)
        o = F.leaky_relu(_bnf(F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2"), 0.1)
        o = _bnf(F.conv2d(o, sd[f"{p}.conv3.weight"], padding=1), sd, f"{p}.bn3")
        if se:
            s = o.mean(dim=(2, 3))
            s = F.relu(s @ sd[f"{p}.se.fc.0.weight"].T + sd[f"{p}.se.fc.0.bias"])
            s = torch.sigmoid(s @ sd[f"{p}.se.fc.2.weight"].T + sd[f"{p}.se.fc.2.bias"])
            o = o * s[:, :, None, None]
        r = _bnf(F.conv2d(x, sd[f"{p}.downsample.0.weight"]), sd, f"{p}.downsample.1")
        x = F.max_pool2d(F.leaky_relu(o + r, 0.1), 2)
    return x


def ref_conv4(sd, x):
    for b in range(4):
        x = F.conv2d(x, sd[f"{b}.0.weight"], sd[f"{b}.0.bias"], padding=1)
        x = F.max_pool2d(F.relu(_bnf(x, sd, f"{b}.1")), 2)
    return x


def ref_wrn(sd, x):
    """S2M2 BasicBlock: pre-activation; the 1×1 shortcut takes the activated input when cin != cout."""
    x = F.conv2d(x, sd["conv1.weight"], padding=1)
    for g, stride in ((1, 1), (2, 2), (3, 2)):
        for i in range(4):
            p = f"block{g}.layer.{i}"
            s = stride if i == 0 else 1
            a = F.relu(_bnf(x, sd, f"{p}.bn1"))
            o = F.relu(_bnf(F.conv2d(a, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn2"))
            o = F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1)
            short = (
                F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=s)
                if f"{p}.convShortcut.weight" in sd
                else x
            )
            x = o + short
    return F.relu(_bnf(x, sd, "bn1"))


def ref_resnet18(sd, x, stem="imagenet"):
    if stem == "imagenet":
        x = F.max_pool2d(
            F.relu(_bnf(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1
        )
    else:
        x = F.relu(_bnf(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for layer in range(1, 5):
        for n in range(2):
            p = f"layer{layer}.{n}"
            s = 2 if layer > 1 and n == 0 else 1
            o = F.relu(_bnf(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s, padding=1), sd, f"{p}.bn1"))
            o = _bnf(F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bnf(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
            x = F.relu(o + x)
    return x


# (arch, kwargs, public keys, reference, input side): side kept tiny for CPU speed
CASES = {
    "resnet12": ("resnet12", {}, lambda: resnet12_keys(), lambda sd, x: ref_resnet12(sd, x), 32),
    "seresnet12": (
        "seresnet12",
        {},
        lambda: resnet12_keys(se=True),
        lambda sd, x: ref_resnet12(sd, x, se=True),
        32,
    ),
    "conv4": ("conv4", {}, lambda: conv4_keys(), ref_conv4, 32),
    "conv4-h32": ("conv4", {"hidden": 32}, lambda: conv4_keys(32), ref_conv4, 32),
    "wrn28_10": ("wrn28_10", {}, wrn28_10_keys, ref_wrn, 12),
    "resnet18": ("resnet18", {}, lambda: resnet18_keys(), ref_resnet18, 32),
    "resnet18-small": (
        "resnet18",
        {"stem": "small"},
        lambda: resnet18_keys("small"),
        lambda sd, x: ref_resnet18(sd, x, "small"),
        16,
    ),
}


def _loaded(arch, sd, **kw):
    """``arch`` built on the meta device (no init cost), then given ``sd`` with strict=True.

    ``load_state_dict`` raises on any missing/unexpected name or shape mismatch (``assign`` only
    skips the copy), so a pass proves names and shapes equal the public list exactly.
    """
    with torch.device("meta"):
        model = create_backbone(arch, **kw)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_public_keys_load_strict_and_forward_matches_reference(case):
    arch, kw, keys, ref, side = CASES[case]
    sd = synth(keys(), seed=len(case))
    flat = _loaded(arch, sd, pool="none", image_size=side, **kw)
    avg = _loaded(arch, sd, pool="avg", **kw)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(sd, x)  # (B, C, h, w)
        feats_flat, feats_avg = flat(x), avg(x)
    assert expected.abs().mean() > 1e-2  # the reference is not trivially zero
    torch.testing.assert_close(feats_flat, expected.flatten(1), **TOL)  # = forward_features, flattened
    torch.testing.assert_close(feats_avg, expected.mean(dim=(2, 3)), **TOL)
    assert feats_flat.shape == (2, flat.out_dim) and feats_avg.shape == (2, avg.out_dim)
    assert (flat.pool, avg.pool, flat.arch, avg.arch) == ("none", "avg", arch, arch)


def test_key_counts_and_se_keys():
    assert len(resnet12_keys()) == 96 and len(resnet12_keys(se=True)) == 112
    assert len(conv4_keys()) == 28 and len(wrn28_10_keys()) == 153 and len(resnet18_keys()) == 120
    with torch.device("meta"):
        plain, se = create_backbone("resnet12").state_dict(), create_backbone("seresnet12").state_dict()
    se_keys = sorted(set(se) - set(plain))
    assert len(se_keys) == 16 and se_keys == sorted(k for k in resnet12_keys(se=True) if ".se." in k)
    assert "layer4.0.se.fc.0.weight" in se_keys and tuple(se["layer4.0.se.fc.0.weight"].shape) == (160, 640)


def test_resnet12_matches_easyfsl_feat_resnet12():
    """Same state dict in easyfsl's port of FEAT's ResNet-12 gives the same 640-d features."""
    from easyfsl.modules.feat_resnet12 import feat_resnet12

    sd = synth(resnet12_keys(), seed=5)
    ours, theirs = create_backbone("resnet12"), feat_resnet12()
    ours.load_state_dict(sd, strict=True)
    theirs.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), **TOL)


def test_resnet18_matches_torchvision_timm_and_easyfsl():
    import timm
    import torchvision
    from easyfsl.modules.predesigned_modules import resnet18 as easyfsl_resnet18

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sd = synth(resnet18_keys(), seed=6)
    ours = create_backbone("resnet18").eval()
    ours.load_state_dict(sd, strict=True)
    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    tv.load_state_dict(sd, strict=True)
    tm = timm.create_model("resnet18", num_classes=0)
    tm.load_state_dict(sd, strict=True)
    with torch.no_grad():
        y = ours(x)
        torch.testing.assert_close(y, tv.eval()(x), **TOL)
        torch.testing.assert_close(y, tm.eval()(x), **TOL)
    small = synth(resnet18_keys("small"), seed=7)
    ours = create_backbone("resnet18", stem="small").eval()
    ours.load_state_dict(small, strict=True)
    ef = easyfsl_resnet18()  # 3×3 stem, no max-pool; its unused fc is dropped
    ef.fc = nn.Identity()
    ef.load_state_dict(small, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ef.eval()(x), **TOL)
    with pytest.raises(RuntimeError, match=r"conv1\.weight.*\[64, 3, 7, 7\].*\[64, 3, 3, 3\]"):
        ours.load_state_dict(sd, strict=True)  # a wrong stem is a shape mismatch, not a silent load


def test_closerlook_resnet18_renames_onto_torchvision_keys():
    cl = closerlook_resnet18_keys()
    assert len(cl) == 120
    renamed = {closerlook_to_torchvision(k): v for k, v in synth(cl, seed=8).items()}
    assert {k: tuple(v.shape) for k, v in renamed.items()} == resnet18_keys()
    create_backbone("resnet18").load_state_dict(renamed, strict=True)


# ---------------------------------------------------------------------------- out_dim, pooling


@pytest.mark.parametrize(
    "arch,kw,side,dim",
    [
        ("conv4", {}, 84, 1600),
        ("conv4", {}, 32, 256),
        ("conv4", {"pool": "avg"}, 84, 64),
        ("conv4", {"hidden": 32}, 84, 800),
        ("conv4", {"hidden": 128, "pool": "avg"}, 32, 128),
        ("resnet12", {}, 84, 640),
        ("resnet12", {}, 32, 640),
        ("resnet12", {"pool": "none"}, 84, 16000),
        ("resnet12", {"pool": "none"}, 32, 2560),
        ("seresnet12", {"pool": "none"}, 84, 16000),
        ("seresnet12", {}, 32, 640),
        ("wrn28_10", {}, 84, 640),
        ("wrn28_10", {"pool": "none"}, 84, 640 * 21 * 21),
        ("wrn28_10", {"pool": "none"}, 80, 640 * 20 * 20),
        ("wrn28_10", {"pool": "none"}, 32, 640 * 8 * 8),
        ("resnet18", {}, 84, 512),
        ("resnet18", {"pool": "none"}, 84, 512 * 3 * 3),
        ("resnet18", {"pool": "none"}, 224, 512 * 7 * 7),
        ("resnet18", {"pool": "none", "stem": "small"}, 84, 512 * 11 * 11),
        ("resnet18", {"pool": "none", "stem": "small"}, 32, 512 * 4 * 4),
    ],
)
def test_out_dim(arch, kw, side, dim):
    with torch.device("meta"):  # shapes only: no compute
        model = create_backbone(arch, image_size=side, **kw)
        y = model(torch.empty(2, 3, side, side))
    assert model.out_dim == dim and tuple(y.shape) == (2, dim)
    own = {"conv4": "none"}.get(arch, None if arch.startswith("timm:") else "avg")
    assert model.pool == kw.get("pool", own)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_registered_arch_has_the_contract(name):
    with torch.device("meta"):
        model = BACKBONES.get(name)()  # builds bare (the checkpoint arch guesser does this)
        fmap = model.forward_features(torch.empty(1, 3, 84, 84))
    assert model.arch == name and model.pool in ("avg", "none") and fmap.ndim == 4
    assert model.out_dim == (fmap.shape[1] if model.pool == "avg" else fmap[0].numel())


def test_avg_pool_takes_any_side_none_refuses_other_sides():
    model = create_backbone("resnet12", channels=(4, 4, 4, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == model(torch.randn(1, 3, 48, 48)).shape == (1, 8)
    flat = create_backbone("resnet12", channels=(4, 4, 4, 8), pool="none", image_size=32)
    with pytest.raises(
        DataError, match=r"resnet12 was built for 32 px inputs \(out_dim 32\).*image_size=48 or pool='avg'"
    ):
        flat(torch.randn(1, 3, 48, 48))


def test_timm_pool_options():
    x = torch.randn(2, 3, 32, 32)
    own = create_backbone("timm:resnet18")
    flat = create_backbone("timm:resnet18", pool="none", image_size=32)
    flat.load_state_dict(own.state_dict(), strict=True)  # same keys: no wrapper
    assert own.pool is None and flat.pool == "none" and (own.out_dim, flat.out_dim) == (512, 512 * 1 * 1)
    # timm keeps some models' pooling in the head: "own" must not be mistaken for "none"
    convnext = create_backbone("timm:convnext_atto")
    assert convnext.pool is None and convnext(torch.randn(1, 3, 32, 32)).shape == (1, convnext.out_dim)
    with torch.no_grad():
        torch.testing.assert_close(flat.eval()(x), own.eval().forward_features(x).flatten(1))
        torch.testing.assert_close(own(x), own.forward_features(x).mean(dim=(2, 3)), **TOL)
    assert create_backbone("timm:resnet18", pool="none", image_size=84).out_dim == 512 * 3 * 3
    assert create_backbone("timm:resnet18", pool="avg").out_dim == 512


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "arch,kw,match",
    [
        (
            "resnet12",
            {"pool": "none"},
            r"'resnet12' with --pool none flattens .*pass --image-size .*or use --pool avg",
        ),
        ("seresnet12", {"pool": "none"}, r"'seresnet12' with --pool none"),
        ("wrn28_10", {"pool": "none"}, r"'wrn28_10' with --pool none"),
        ("resnet18", {"pool": "none"}, r"'resnet18' with --pool none"),
        ("timm:resnet18", {"pool": "none"}, r"'timm:resnet18' with --pool none"),
        ("resnet12", {"pool": "max"}, r"'resnet12': --pool must be one of avg, none, got 'max'"),
        ("conv4", {"pool": "mean"}, r"'conv4': --pool must be one of avg, none, got 'mean'"),
        ("conv4", {"image_size": 8}, r"'conv4' cannot take 8 px inputs \(--image-size\)"),
        ("conv4", {"image_size": "84"}, r"--image-size must be a positive integer, got '84'"),
        ("resnet12", {"pool": "none", "image_size": 0}, r"--image-size must be a positive integer, got 0"),
        ("conv4", {"hidden": 0}, r"'conv4': hidden must be a positive integer, got 0"),
        ("conv4", {"hidden": 32.5}, r"hidden must be a positive integer, got 32.5"),
        ("conv4", {"width": 3}, r"'conv4' does not take width; it takes image_size, hidden, in_chans, pool"),
        (
            "seresnet12",
            {"se": False},
            r"'seresnet12' does not take se; it takes image_size, pool, channels, in_chans",
        ),
        ("wrn28_10", {"depth": 16}, r"'wrn28_10' does not take depth; it takes image_size, pool, in_chans"),
        ("resnet18", {"stem": "big"}, r"'resnet18': stem must be one of imagenet, small, easyfsl-big, got 'big'"),
        ("resnet12", {"channels": (64, 160, 320)}, r"'resnet12' needs 4 block widths"),
    ],
)
def test_bad_kwargs_one_line_config_error(arch, kw, match):
    with pytest.raises(ConfigError, match=match) as exc:
        with torch.device("meta"):
            create_backbone(arch, **kw)
    assert "\n" not in str(exc.value)


def test_none_kwargs_are_dropped():
    with torch.device("meta"):
        m = create_backbone("resnet12", pool=None, image_size=None, channels=None)
        c = create_backbone("conv4", pool=None, image_size=None, hidden=None)
    assert (m.pool, m.out_dim, c.pool, c.out_dim) == ("avg", 640, "none", 1600)
