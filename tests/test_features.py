"""Feature extraction and the feature cache (keys, hits, corruption, atomicity, locking)."""

from __future__ import annotations

import json
import threading
import types
import warnings

import numpy as np
import pytest
import torch

import fewshot_bench.features as F
from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.errors import CheckpointError, DataError
from fewshot_bench.features import extract_features, feature_cache_key, get_features

ARCH_KW = {"hidden": 8}  # a tiny conv4 keeps every test well under a second


def make_split(n=24, size=32, seed=0, dataset="toy", split="test"):
    """A Split-like object with only the fields features.py may use."""
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(
        dataset=dataset,
        split=split,
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=np.repeat(np.arange(4), n // 4),
        class_names=("a", "b", "c", "d"),
        fingerprint=f"fp-{seed}-{n}",
        source="synthetic",
    )


def features(tmp_path, split, checkpoint=None, **kw):
    kw.setdefault("arch_kwargs", ARCH_KW)
    return get_features(
        checkpoint,
        "conv4",
        split,
        "metaoptnet-cifar",
        cache_dir=tmp_path,
        progress=False,
        batch_size=10,
        **kw,
    )


def entry_dir(tmp_path, split, checkpoint=None):
    return (
        tmp_path
        / "features"
        / feature_cache_key(checkpoint, "conv4", split, "metaoptnet-cifar", arch_kwargs=ARCH_KW)
    )


def test_extract_features_shape_and_determinism():
    split = make_split()
    torch.manual_seed(0)
    model = create_backbone("conv4", image_size=32, hidden=8).train()
    a = extract_features(model, split.images, "metaoptnet-cifar", batch_size=7, progress=False)
    b = extract_features(model, split.images, "metaoptnet-cifar", batch_size=24, progress=False)
    assert a.shape == (24, model.out_dim) == (24, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.array_equal(
        a, extract_features(model, split.images, "metaoptnet-cifar", batch_size=7, progress=False)
    )
    assert model.training  # mode restored
    with pytest.raises(DataError, match=r"uint8 numpy array \(N, H, W, 3\)"):
        extract_features(model, split.images.astype(np.float32), "metaoptnet-cifar")


def test_cache_hit_without_building_backbone(tmp_path, monkeypatch):
    split = make_split()
    first = features(tmp_path, split)
    assert isinstance(first, np.memmap) and not first.flags.writeable and first.shape == (24, 32)
    meta = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert meta["checkpoint"] == "random-init:0" and meta["dataset"] == "toy" and meta["shape"] == [24, 32]
    assert meta["data_fingerprint"] == split.fingerprint and meta["transform"].startswith("metaoptnet-cifar|")

    def boom(*a, **k):
        raise AssertionError("backbone built on a cache hit")

    monkeypatch.setattr(F, "create_backbone", boom)
    again = features(tmp_path, split)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    with pytest.raises(AssertionError, match="backbone built"):  # other seed: other entry
        features(tmp_path, split, seed=1)


def test_size_keeping_transform_builds_conv4_for_the_image_side(tmp_path):
    split = make_split(size=16)
    out = get_features(None, "conv4", split, "unit", cache_dir=tmp_path, progress=False, arch_kwargs=ARCH_KW)
    assert out.shape == (24, 8)  # 16 px -> 1x1 map of 8 channels


def test_keys_follow_every_input(tmp_path):
    split = make_split()

    def key(ck=None, arch="conv4", split=split, t="metaoptnet-cifar", **kw):
        return feature_cache_key(ck, arch, split, t, **kw)

    base = key()
    assert base == key() and len(base) == 64
    other_fp = make_split(seed=1)
    variants = [
        key(seed=1),
        key(arch="resnet12"),
        key(t="unit"),
        key(split=other_fp),
        key(arch_kwargs={"hidden": 4}),
        key(split=make_split(split="val")),
    ]
    assert len({base, *variants}) == len(variants) + 1
    model = create_backbone("conv4", image_size=32, hidden=8)
    ck = save_checkpoint(tmp_path / "a.pt", model, {"seed": 0})
    k1 = key(ck=ck)
    with torch.no_grad():
        getattr(model, "0")[0].weight.add_(1)
    save_checkpoint(ck, model, {"seed": 0})
    assert k1 != key(ck=ck) and base not in (k1, key(ck=ck))


def test_checkpoint_features_match_direct_extraction(tmp_path):
    split = make_split()
    torch.manual_seed(3)
    model = create_backbone("conv4", image_size=32, hidden=8)
    ck = save_checkpoint(tmp_path / "c4.pt", model, {"arch": "conv4"})
    got = features(tmp_path, split, checkpoint=ck)
    want = extract_features(model, split.images, "metaoptnet-cifar", progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    meta = json.loads((entry_dir(tmp_path, split, ck) / "meta.json").read_text())
    assert meta["checkpoint"].startswith("sha256:") and "loaded" in meta["load_report"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-meta", "no-npy", "bad-json"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, damage):
    split = make_split()
    good = np.array(features(tmp_path, split))
    entry = entry_dir(tmp_path, split)
    npy, meta = entry / "features.npy", entry / "meta.json"
    if damage == "flip":
        data = bytearray(npy.read_bytes())
        data[-5] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:200])
    elif damage == "no-meta":
        meta.unlink()
    elif damage == "no-npy":
        npy.unlink()
    else:
        meta.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="corrupt, rebuilding"):
        again = features(tmp_path, split)
    assert np.array_equal(good, np.asarray(again))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features(tmp_path, split)  # now clean


def test_failure_midway_leaves_no_entry(tmp_path, monkeypatch):
    split = make_split(n=40)
    real = F.create_backbone

    def failing(*a, **k):
        model = real(*a, **k)
        calls = {"n": 0}
        orig = model.forward

        def forward(x):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash")
            return orig(x)

        model.forward = forward
        return model

    monkeypatch.setattr(F, "create_backbone", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        features(tmp_path, split)
    root = tmp_path / "features"
    assert not entry_dir(tmp_path, split).exists()
    assert [p.name for p in root.iterdir()] == [".locks"]

    monkeypatch.setattr(F, "create_backbone", real)
    monkeypatch.setattr(F, "atomic_write_json", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        features(tmp_path, split)
    assert [p.name for p in root.iterdir()] == [".locks"]


def test_stale_temp_folder_from_killed_run_is_ignored_and_cleaned(tmp_path):
    split = make_split()
    key = entry_dir(tmp_path, split).name
    stale = tmp_path / "features" / f".tmp-{key}-999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "features.npy").write_bytes(b"half written")
    out = features(tmp_path, split)
    assert out.shape == (24, 32) and not stale.exists()


def test_concurrent_calls_compute_once(tmp_path, monkeypatch):
    split = make_split()
    real, built = F.create_backbone, []
    gate = threading.Event()

    def counting(*a, **k):
        built.append(1)
        gate.wait(2)  # hold the lock while the other caller arrives
        return real(*a, **k)

    monkeypatch.setattr(F, "create_backbone", counting)
    results = [None, None]

    def run(i):
        results[i] = np.array(features(tmp_path, split))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(30)
    assert len(built) == 1 and np.array_equal(results[0], results[1])


def test_non_finite_features_are_refused_and_not_cached(tmp_path):
    split = make_split()
    model = create_backbone("conv4", image_size=32, hidden=8)
    with torch.no_grad():
        getattr(model, "0")[1].weight.fill_(float("nan"))
    ck = save_checkpoint(tmp_path / "nan.pt", model, {})
    with pytest.raises(
        CheckpointError, match=r"nan\.pt \(--arch conv4\) gives NaN/Inf features for 24 of 24"
    ):
        features(tmp_path, split, checkpoint=ck)
    assert not entry_dir(tmp_path, split, ck).exists()


def test_read_only_memmap_images(tmp_path):
    split = make_split()
    np.save(tmp_path / "imgs.npy", split.images)
    mm = types.SimpleNamespace(**{**vars(split), "images": np.load(tmp_path / "imgs.npy", mmap_mode="r")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        out = features(tmp_path, mm)
    np.testing.assert_array_equal(out, features(tmp_path / "other", split))
