"""Backbone shapes, the arch registry, and checkpoint loading/saving."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from fewshot_bench import __version__
from fewshot_bench.backbones import (
    BACKBONES,
    create_backbone,
    list_architectures,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from fewshot_bench.errors import CheckpointError, ConfigError, DataError, UnknownNameError


@pytest.mark.parametrize(
    "arch,size,dim",
    [
        ("conv4", 32, 256),
        ("conv4", 84, 1600),
        ("resnet12", 84, 640),
        ("resnet12", 32, 640),
        ("timm:resnet18", 32, 512),
    ],
)
def test_shapes_and_out_dim(arch, size, dim):
    model = create_backbone(arch, image_size=size).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert model.out_dim == dim and y.shape == (2, dim)
    assert model.arch == arch


def test_registry_and_kwargs():
    assert list_architectures() == ["conv4", "resnet12", "resnet18", "seresnet12", "wrn28_10"] == list(BACKBONES)
    assert "timm:resnet18" in list_architectures("resnet1*", timm_models=True)
    # None kwargs are dropped so CLI defaults do not override model defaults
    assert create_backbone("conv4", image_size=None, hidden=None).out_dim == 1600
    assert create_backbone("conv4", image_size=32, hidden=8).out_dim == 32
    with pytest.raises(ConfigError, match="'conv4' does not take width"):
        create_backbone("conv4", width=3)
    with pytest.raises(DataError, match="built for 84 px.*image_size=32"):
        create_backbone("conv4")(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    "name,hint",
    [
        ("resnet-12", "did you mean: resnet12"),
        ("resnet34", "did you mean: timm:resnet34"),
        ("timm:resnt18", "timm:resnet18"),
    ],
)
def test_unknown_arch_close_matches(name, hint):
    with pytest.raises(UnknownNameError, match=hint):
        create_backbone(name)


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def resnet12():
    torch.manual_seed(0)
    return create_backbone("resnet12")


def _fresh(arch="resnet12", **kw):
    torch.manual_seed(1)
    return create_backbone(arch, **kw)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_round_trip_with_meta(tmp_path, resnet12):
    path = save_checkpoint(
        tmp_path / "ck" / "r12.pt",
        resnet12,
        {"loss": "ce", "dataset": "cifar-fs", "epochs": 3, "seed": 5, "lr": (0.1, 0.01)},
    )
    meta = read_checkpoint_meta(path)
    assert meta["arch"] == "resnet12" and meta["loss"] == "ce" and meta["epochs"] == 3
    assert meta["data_fingerprint"] is None and meta["fewshot_bench_version"] == __version__
    assert meta["lr"] == [0.1, 0.01]
    assert not [p for p in path.parent.iterdir() if p.name != "r12.pt"]  # no temp files left
    model = _fresh()
    report = load_checkpoint(path, model)
    assert _same_weights(model, resnet12)
    assert report.missing == report.unexpected == report.mismatched == []
    assert report.meta["dataset"] == "cifar-fs" and report.nesting == "state_dict"
    with pytest.raises(ConfigError, match="meta.bad is a object"):
        save_checkpoint(tmp_path / "x.pt", resnet12, {"bad": object()})


@pytest.mark.parametrize(
    "wrap,nesting,stripped,dropped",
    [
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "", ["module."], {}),
        (lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict", [], {"training-metadata": ["epoch"]}),
        (
            lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {}},
            "model",
            ["_orig_mod."],
            {"optimizer-state": ["optimizer"]},
        ),
        (
            lambda sd: {"model_ema": {f"module.backbone.{k}": v for k, v in sd.items()}, "epoch": 9},
            "model_ema",
            ["module.", "backbone."],
            {"training-metadata": ["epoch"]},
        ),
        (
            lambda sd: {
                "model": {
                    **{f"encoder.{k}": v for k, v in sd.items()},
                    "classifier.weight": torch.zeros(64, 640),
                }
            },
            "model",
            ["encoder."],
            {"classifier-head": ["classifier.weight"]},
        ),
    ],
)
def test_load_nested_and_prefixed(tmp_path, resnet12, wrap, nesting, stripped, dropped):
    torch.save(wrap(resnet12.state_dict()), tmp_path / "c.pth")
    model = _fresh()
    report = load_checkpoint(tmp_path / "c.pth", model)
    assert _same_weights(model, resnet12)
    assert report.nesting == nesting and report.stripped == stripped and report.dropped == dropped
    assert report.missing == report.unexpected == [] and report.meta == {}
    assert read_checkpoint_meta(tmp_path / "c.pth") == {}


def test_ema_preferred_on_request(tmp_path, resnet12):
    other = _fresh()
    torch.save({"model": other.state_dict(), "model_ema": resnet12.state_dict()}, tmp_path / "c.pt")
    m = _fresh("resnet12")
    assert load_checkpoint(tmp_path / "c.pt", m, use_ema=True).dropped == {"non-ema-copy": ["model"]}
    assert _same_weights(m, resnet12)
    report = load_checkpoint(tmp_path / "c.pt", m)
    assert report.nesting == "model" and report.dropped == {"ema-copy": ["model_ema"]}


def test_timm_head_keys_ignored(tmp_path):
    import timm

    full = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    model = create_backbone("timm:resnet18")
    report = load_checkpoint(tmp_path / "r18.pth", model)
    assert report.dropped == {"classifier-head": ["fc.weight", "fc.bias"]} and report.missing == []
    assert report.format == "timm-state-dict" and report.ok
    assert torch.equal(model.conv1.weight, full.conv1.weight)


def test_wrong_arch_error_names_the_likely_arch(tmp_path):
    save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4"), {})
    with pytest.raises(
        CheckpointError,
        match=r"c4\.pt \(fewshot-bench format\) does not fit --arch resnet12: no tensor in common .*"
        r"\d+ missing keys \(e\.g\. layer1\.0\.conv1\.weight, .*; use --arch conv4, which consumes every key$",
    ):
        load_checkpoint(tmp_path / "c4.pt", _fresh())
    # no metadata: the arch is found from the keys (the BACKBONES registry)
    torch.save(create_backbone("conv4").state_dict(), tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="use --arch conv4, which consumes every key"):
        load_checkpoint(tmp_path / "foreign.pt", _fresh())
    # same arch, other widths: shape mismatches
    torch.save(create_backbone("conv4", hidden=32).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(
        CheckpointError,
        match=r"does not fit --arch conv4: \d+ shape mismatches "
        r"\(e\.g\. 0\.0\.weight: \[32, 3, 3, 3\] in checkpoint, \[64, 3, 3, 3\] in model\); "
        r"the widths differ: use --arch conv4 --arch-kw hidden=32$",
    ):
        load_checkpoint(tmp_path / "narrow.pt", create_backbone("conv4"))
    with pytest.raises(CheckpointError, match=r"24 shape mismatches .*hidden=32$"):  # BN counters alone load nothing
        load_checkpoint(tmp_path / "narrow.pt", create_backbone("conv4"), allow_partial=True)
    assert load_checkpoint(tmp_path / "narrow.pt", create_backbone("conv4", hidden=32)).ok


@pytest.mark.parametrize(
    "content,match",
    [
        (b"<html><body>404 Not Found</body></html>", "is not a PyTorch checkpoint"),
        (b"", "is empty"),
        (b"PK\x03\x04truncated zip", "is not a PyTorch checkpoint or is truncated"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as exc:
        load_checkpoint(tmp_path / "bad.pt", create_backbone("conv4"))
    assert "\n" not in str(exc.value) and "bad.pt" in str(exc.value)


def test_missing_and_stateless_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt not found; check --checkpoint"):
        load_checkpoint(tmp_path / "nope.pt", create_backbone("conv4"))
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match=r"holds no state dict \(keys: epoch, optimizer\)"):
        load_checkpoint(tmp_path / "opt.pt", create_backbone("conv4"))
    torch.save(create_backbone("conv4").state_dict(), tmp_path / "c4.pt")
    with pytest.raises(CheckpointError, match="no tensor in common"):
        load_checkpoint(tmp_path / "c4.pt", create_backbone("timm:resnet18"), allow_partial=True)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['FSB_PWNED']}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, writer):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FSB_PWNED", str(marker))
    obj = {"state_dict": {"w": torch.zeros(2)}, "extra": _Payload()}
    if writer == "torch":
        torch.save(obj, tmp_path / "evil.pt")
    else:
        (tmp_path / "evil.pt").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match="evil.pt") as exc:
        load_checkpoint(tmp_path / "evil.pt", create_backbone("conv4"))
    if writer == "torch":
        assert "refused for safety" in str(exc.value) and "system" in str(exc.value)
    with pytest.raises(CheckpointError):
        read_checkpoint_meta(tmp_path / "evil.pt")
    assert not marker.exists()
