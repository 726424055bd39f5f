"""Feature extraction and the feature cache (keys, hits, corruption, atomicity, locking)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import types
import warnings

import numpy as np
import pytest
import torch

import fewshot_bench.features as F
from fewshot_bench import __version__
from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.errors import CacheError, CheckpointError, ConfigError, DataError
from fewshot_bench.features import extract_features, feature_cache_dir, feature_cache_key, get_features
from fewshot_bench.transforms import get_transform


def exact(text: str) -> str:
    """A pattern matching ``text`` and nothing else."""
    return "^" + re.escape(text) + "$"


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
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(F, "atomic_write_json", lambda *a: (_ for _ in ()).throw(full))
    entry = entry_dir(tmp_path, split)
    with pytest.raises(CacheError, match="^" + re.escape(f"{entry}: cannot write, the disk is full")):
        features(tmp_path, split)  # the entry's name, not its temporary's
    assert [p.name for p in root.iterdir()] == [".locks"]


def test_temporaries_of_a_killed_run_are_ignored_and_cleaned(tmp_path):
    split = make_split()
    key = entry_dir(tmp_path, split).name
    root = tmp_path / "features"
    half = root / f".{key}.999-deadbeef.tmp"  # atomic_dir's temporary: complete-looking, never renamed
    half.mkdir(parents=True)
    (half / "features.npy").write_bytes(b"half written")
    (half / "meta.json").write_text("{}")
    trash = root / f".{key}.trash-999-0badf00d.tmp"  # a discarded entry not yet deleted
    trash.mkdir()
    other = root / f".{'0' * 64}.999-cafe.tmp"  # another entry's build, maybe in progress: not ours
    other.mkdir()
    out = features(tmp_path, split)
    assert out.shape == (24, 32)
    assert not half.exists() and not trash.exists() and other.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([".locks", key, other.name])


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


# ------------------------------------------------------------------------------------ flags and inputs


@pytest.mark.parametrize(
    "amp, device, expected",
    [
        (None, "cpu", None),  # default: fp32 on CPU
        (None, "cuda", "cuda-default"),  # default: autocast on CUDA
        (False, "cuda", None),
        (True, "cpu", torch.bfloat16),
        (torch.float16, "cpu", torch.float16),
        ("bf16", "cpu", torch.bfloat16),
        ("BFloat16", "cpu", torch.bfloat16),
        ("fp16", "cpu", torch.float16),
        ("Float16", "cpu", torch.float16),
        ("fp32", "cuda", None),
        ("float32", "cuda", None),
        ("None", "cuda", None),
        ("off", "cuda", None),
    ],
)
def test_amp_flag_values(monkeypatch, amp, device, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # an fp16-only GPU
    want = torch.float16 if expected == "cuda-default" else expected
    assert F._resolve_amp(amp, torch.device(device)) is want


@pytest.mark.parametrize("amp", ["int8", 3, "bf17"])
def test_amp_flag_rejects_other_values(amp):
    with pytest.raises(ConfigError, match="^" + re.escape(f"--amp must be bf16, fp16 or off, got {amp!r}") + "$"):
        F._resolve_amp(amp, torch.device("cpu"))


def test_bf16_autocast_on_cpu_gives_float32_features_close_to_fp32():
    split = make_split(n=8)
    torch.manual_seed(0)
    model = create_backbone("conv4", image_size=32, hidden=8)
    fp32 = extract_features(model, split.images, "metaoptnet-cifar", progress=False, device="cpu")
    bf16 = extract_features(model, split.images, "metaoptnet-cifar", progress=False, device="cpu", amp="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)  # autocast really ran
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "--device 'gpu' is not a device; use cpu, cuda or cuda:N"),
        (3.5, "--device 3.5 is not a device; use cpu, cuda or cuda:N"),
        ("cuda:1", "--device cuda:1 asked for CUDA but none is available; use --device cpu"),
    ],
)
def test_device_flag_errors(tmp_path, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        features(tmp_path, make_split(), device=device)
    assert not entry_dir(tmp_path, make_split()).exists()


def test_default_device_without_cuda_is_cpu_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    split = make_split()
    features(tmp_path, split)
    meta = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert (meta["device"], meta["amp"]) == ("cpu", None)


def test_extract_features_refuses_bad_batch_size_and_bad_backbone_output():
    split = make_split(n=4)
    model = create_backbone("conv4", image_size=32, hidden=8)
    with pytest.raises(ConfigError, match=r"^--batch-size must be >= 1, got 0$"):
        extract_features(model, split.images, "metaoptnet-cifar", batch_size=0, progress=False)

    class Flat(torch.nn.Module):  # returns (B,) instead of (B, D)
        arch = "flat"

        def forward(self, x):
            return x.mean(dim=(1, 2, 3))

    with pytest.raises(ConfigError, match=r"^backbone flat returned \(4,\) for a batch of 4; a backbone must"):
        extract_features(Flat(), split.images, "metaoptnet-cifar", progress=False)


def test_extract_features_of_no_images():
    model = create_backbone("conv4", image_size=32, hidden=8)
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    out = extract_features(model, empty, "metaoptnet-cifar", progress=False)
    assert out.shape == (0, model.out_dim) and out.dtype == np.float32
    assert extract_features(torch.nn.Flatten(), empty, "unit", progress=False).shape == (0, 0)


def test_checkpoint_path_errors(tmp_path):
    split = make_split()
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+missing\.pt not found; check --checkpoint$"):
        features(tmp_path, split, checkpoint=tmp_path / "missing.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"^checkpoint \S+run is a directory; pass the \.pt/\.pth file inside"):
        feature_cache_key(tmp_path / "run", "conv4", split, "unit")


def test_split_must_look_like_a_split(tmp_path):
    split = make_split()
    del split.fingerprint
    with pytest.raises(ConfigError, match=r"^split object lacks \.fingerprint; pass a fewshot_bench\.data\.Split$"):
        features(tmp_path, split)


# ------------------------------------------------------------------------------------ cache entries


def _rewrite_meta(entry, **changes):
    meta = json.loads((entry / "meta.json").read_text())
    meta.update(changes)
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("other-key", "meta.json belongs to another key or format"),
        ("other-format", "meta.json belongs to another key or format"),
        ("fewer-rows", r"recorded shape \(23, 32\) does not fit 24 images"),
        ("no-shape", r"recorded shape \(\) does not fit 24 images"),
        ("float64", r"features.npy is float64 \(24, 32\), meta says float32 \(24, 32\)"),
        ("not-npy", "features.npy is unreadable"),
    ],
)
def test_entry_that_does_not_fit_is_rebuilt_with_the_reason(tmp_path, damage, reason):
    split = make_split()
    good = np.array(features(tmp_path, split))
    entry = entry_dir(tmp_path, split)
    npy = entry / "features.npy"
    if damage == "other-key":
        _rewrite_meta(entry, key="0" * 64)
    elif damage == "other-format":
        _rewrite_meta(entry, format=F.FEATURES_FORMAT + 1)
    elif damage == "fewer-rows":
        _rewrite_meta(entry, shape=[23, 32])
    elif damage == "no-shape":
        _rewrite_meta(entry, shape=None)
    else:  # a consistent checksum over the wrong content
        if damage == "float64":
            np.save(npy, good.astype(np.float64))
        else:
            npy.write_bytes(b"not an npy file at all")
        _rewrite_meta(entry, sha256=F.sha256_file(npy))
    with pytest.warns(RuntimeWarning, match=f"corrupt, rebuilding: {re.escape(str(entry))}: {reason}"):
        again = features(tmp_path, split)
    assert np.array_equal(good, np.asarray(again))
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "meta.json"]


def test_verify_false_skips_the_checksum(tmp_path):
    split = make_split()
    good = np.array(features(tmp_path, split))
    npy = entry_dir(tmp_path, split) / "features.npy"
    data = bytearray(npy.read_bytes())
    data[-4:] = np.float32(1234.5).tobytes()  # last value changed, size and header intact
    npy.write_bytes(bytes(data))
    trusted = features(tmp_path, split, verify=False)
    assert trusted[-1, -1] == 1234.5 and np.array_equal(trusted[:-1], good[:-1])
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        assert np.array_equal(features(tmp_path, split), good)


def test_allow_partial_gets_entries_of_its_own(tmp_path):
    split = make_split()
    torch.manual_seed(3)
    ck = save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4", image_size=32, hidden=8), {})
    strict = F._key_fields(ck, "conv4", split, F.get_transform("unit"), 0, ARCH_KW)
    partial = F._key_fields(ck, "conv4", split, F.get_transform("unit"), 0, ARCH_KW, allow_partial=True)
    assert partial == {**strict, "partial_load": True} and F._digest(partial) != F._digest(strict)
    # without a checkpoint there is nothing to load partially: the same entry
    assert F._key_fields(None, "conv4", split, F.get_transform("unit"), 0, ARCH_KW, allow_partial=True) == (
        F._key_fields(None, "conv4", split, F.get_transform("unit"), 0, ARCH_KW)
    )


# ------------------------------------------------------------------------------------ under torchrun
# A group of two ranks played one after the other in this process: the collectives of
# fewshot_bench.distributed are replaced by what they return on each rank (the real ones run in
# tests/test_distributed.py with two gloo processes).


def _as_rank(monkeypatch, rank, *, shards, rank0_found=False, agree=(True, True)):
    monkeypatch.setattr(F.D, "get_info", lambda: F.D.DistInfo(rank=rank, world_size=2, local_rank=rank))
    monkeypatch.setattr(F.D, "broadcast_flag", lambda value, src=0: value if rank == 0 else rank0_found)
    answers = iter(agree)
    monkeypatch.setattr(F.D, "agree", lambda ok: bool(ok) and next(answers))

    def gather(local, n, shard_of):
        assert (len(local), n) == (np.subtract(*shard_of(rank)[::-1]), 24)
        shards[rank] = np.array(local)
        return np.concatenate([shards[0], shards[1]]) if rank == 0 else None

    monkeypatch.setattr(F.D, "gather_rows_to_main", gather)


def test_sharded_extraction_writes_the_single_process_entry(tmp_path, monkeypatch):
    split = make_split()
    single = np.array(features(tmp_path / "single", split))
    shards = {}
    _as_rank(monkeypatch, 1, shards=shards)  # rank 1 embeds rows 10..24, then reads what rank 0 wrote ...
    with pytest.raises(CacheError, match=r"^rank 1 cannot read the feature cache entry rank 0 wrote \(.*meta\.json "
                       r"is missing\); --cache-dir must be on a file system every rank sees$"):
        features(tmp_path, split)  # ... which, played alone, it has not yet
    assert shards[1].shape == (14, 32)
    _as_rank(monkeypatch, 0, shards=shards)  # rank 0 embeds rows 0..10, gathers, writes
    out = features(tmp_path, split)
    assert np.array_equal(np.asarray(out), single)  # the very same bytes as one process
    meta = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["sha256"] == F.sha256_file(entry_dir(tmp_path / "single", split)
                                                                        / "features.npy")
    monkeypatch.setattr(F, "create_backbone", lambda *a, **k: pytest.fail("backbone built on a cache hit"))
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, shards=shards, rank0_found=True)
        assert np.array_equal(np.asarray(features(tmp_path, split)), single)


def test_sharded_extraction_rebuilds_a_corrupt_entry(tmp_path, monkeypatch):
    split = make_split()
    good = np.array(features(tmp_path, split))
    (entry_dir(tmp_path, split) / "features.npy").write_bytes(b"truncated")
    shards = {1: good[10:]}  # rank 1's part, as it would send it
    _as_rank(monkeypatch, 0, shards=shards)
    with pytest.warns(RuntimeWarning, match="corrupt, rebuilding"):
        assert np.array_equal(np.asarray(features(tmp_path, split)), good)


def test_sharded_failure_on_any_rank_stops_every_rank_and_writes_nothing(tmp_path, monkeypatch):
    split = make_split()
    root = tmp_path / "features"
    _as_rank(monkeypatch, 0, shards={}, agree=(False,))
    with pytest.raises(CacheError, match=r"^feature extraction of toy/test failed on another rank; its error is"):
        features(tmp_path, split)
    _as_rank(monkeypatch, 1, shards={}, agree=(True, False))
    with pytest.raises(CacheError, match=r"^rank 0 could not write the feature cache entry .+; its error is printed"):
        features(tmp_path, split)
    assert not entry_dir(tmp_path, split).exists()
    with monkeypatch.context() as m:  # this rank's own error is raised as itself
        m.setattr(F, "create_backbone", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no memory")))
        _as_rank(m, 0, shards={})
        with pytest.raises(RuntimeError, match="no memory"):
            features(tmp_path, split)
    assert sorted(p.name for p in root.iterdir()) == [".locks"]


def test_sharded_non_finite_features_are_refused_on_rank_0(tmp_path, monkeypatch):
    split = make_split()
    shards = {1: np.full((14, 32), np.nan, dtype=np.float32)}  # rank 1 diverged
    _as_rank(monkeypatch, 0, shards=shards)
    with pytest.raises(CheckpointError, match=r"gives NaN/Inf features for 14 of 24 toy/test images"):
        features(tmp_path, split)
    assert not entry_dir(tmp_path, split).exists()


# ==================================================================================== exactly (issue 15)
# ------------------------------------------------------------------------------------ keys
def test_key_fields_are_exactly_the_documented_inputs(tmp_path):
    split = make_split()
    t = get_transform("unit")
    fields = F._key_fields(None, " conv4 ", split, t, 7, {"hidden": 8, "b": None, "a": 1})
    assert fields == {"format": 1, "checkpoint": "random-init:7", "arch": "conv4", "arch_kwargs": {"a": 1, "hidden": 8},
                      "dataset": "toy", "split": "test", "data_fingerprint": "fp-0-24", "transform": t.key}
    assert list(fields["arch_kwargs"]) == ["a", "hidden"]
    assert F._key_fields(None, "conv4", split, t, 0, None)["arch_kwargs"] == {}
    assert F._digest(fields) == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    assert F._digest({"p": tmp_path}) == hashlib.sha256(json.dumps({"p": str(tmp_path)}).encode()).hexdigest()
    assert feature_cache_key(None, " conv4 ", split, "unit", seed=7, arch_kwargs={"hidden": 8, "b": None, "a": 1}) \
        == F._digest(fields)
    ck = tmp_path / "w.pt"
    ck.write_bytes(b"weights")
    fields = F._key_fields(str(ck), "conv4", split, t, 7, None, allow_partial=True)
    assert fields["checkpoint"] == "sha256:" + hashlib.sha256(b"weights").hexdigest() and fields["partial_load"] is True
    assert "partial_load" not in F._key_fields(ck, "conv4", split, t, 7, None)
    assert F.FEATURES_FORMAT == 1


def test_the_key_of_a_known_input_is_pinned():
    """A change of the key invalidates every user's cache: it must be deliberate (bump FEATURES_FORMAT)."""
    split = make_split()
    key = feature_cache_key(None, "conv4", split, get_transform("unit"), arch_kwargs={"hidden": 8})
    assert key == PINNED_KEY


PINNED_KEY = "60336cf3a10205009662532b897865b704fe8592c2164c6440adf26c3d803e99"


def test_each_split_attribute_is_required(tmp_path):
    for attr in ("dataset", "split", "images"):
        split = make_split()
        delattr(split, attr)
        with pytest.raises(ConfigError, match=exact(f"split object lacks .{attr}; pass a fewshot_bench.data.Split")):
            feature_cache_key(None, "conv4", split, "unit")


def test_checkpoint_hash_is_memoised_by_path_size_and_mtime(tmp_path, monkeypatch):
    ck = tmp_path / "w.pt"
    ck.write_bytes(b"one")
    calls = []
    real = F.sha256_file
    monkeypatch.setattr(F, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(F, "_CKPT_HASHES", {})
    first = F._checkpoint_sha256(ck)
    assert first == hashlib.sha256(b"one").hexdigest() and F._checkpoint_sha256(str(ck)) == first
    assert len(calls) == 1
    assert list(F._CKPT_HASHES) == [(str(ck.resolve()), 3, ck.stat().st_mtime_ns)]
    ck.write_bytes(b"two")  # same size, new mtime
    import os

    os.utime(ck, ns=(ck.stat().st_atime_ns, ck.stat().st_mtime_ns + 10**9))
    assert F._checkpoint_sha256(ck) == hashlib.sha256(b"two").hexdigest() and len(calls) == 2


def test_cache_dir_is_under_the_cache_root(tmp_path, monkeypatch):
    assert feature_cache_dir(tmp_path) == tmp_path / "features"
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "env"))
    assert feature_cache_dir() == tmp_path / "env" / "features"


# ------------------------------------------------------------------------------------ entries
def test_entry_meta_records_every_field(tmp_path):
    split = make_split()
    torch.manual_seed(3)
    ck = save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4", image_size=32, hidden=8), {})
    out = features(tmp_path, split, checkpoint=ck)
    entry = entry_dir(tmp_path, split, ck)
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "meta.json"]
    meta = json.loads((entry / "meta.json").read_text())
    fields = F._key_fields(ck, "conv4", split, get_transform("metaoptnet-cifar"), 0, ARCH_KW)
    created = meta.pop("created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", created)
    report = meta.pop("load_report")
    assert isinstance(report, str) and "loaded" in report
    assert meta == {**fields, "key": entry.name, "shape": [24, 32], "dtype": "float32",
                    "sha256": F.sha256_file(entry / "features.npy"), "checkpoint_path": str(ck),
                    "fewshot_bench_version": __version__, "device": "cpu", "amp": None}
    assert isinstance(out, np.memmap) and out.dtype == np.float32 and not out.flags.writeable
    features(tmp_path, split)  # random init
    random_init = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert random_init["checkpoint_path"] is None and "load_report" not in random_init


def test_amp_used_is_recorded(tmp_path):
    split = make_split(n=8)
    features(tmp_path, split, amp="bf16")
    meta = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert (meta["device"], meta["amp"]) == ("cpu", "bfloat16")


def _entry(tmp_path):
    split = make_split()
    features(tmp_path, split)
    entry = entry_dir(tmp_path, split)
    return entry, entry.name


def test_load_entry_messages(tmp_path):
    entry, key = _entry(tmp_path)
    assert F._load_entry(entry, key, 24).shape == (24, 32)
    with pytest.raises(CacheError, match=exact(f"{entry}: recorded shape (24, 32) does not fit 25 images")):
        F._load_entry(entry, key, 25)
    with pytest.raises(CacheError, match=exact(f"{entry}: meta.json belongs to another key or format")):
        F._load_entry(entry, "0" * 64, 24)
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "shape": [24, 32, 1]}))
    with pytest.raises(CacheError, match=exact(f"{entry}: recorded shape (24, 32, 1) does not fit 24 images")):
        F._load_entry(entry, key, 24)
    (entry / "meta.json").write_text(json.dumps({**meta, "shape": [24]}))
    with pytest.raises(CacheError, match=exact(f"{entry}: recorded shape (24,) does not fit 24 images")):
        F._load_entry(entry, key, 24)
    (entry / "meta.json").write_text(json.dumps({**meta, "shape": [24, 31]}))
    with pytest.raises(CacheError, match=exact(f"{entry}: features.npy is float32 (24, 32), meta says float32 "
                                               "(24, 31)")):
        F._load_entry(entry, key, 24)
    (entry / "meta.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(CacheError, match=exact(f"{entry}: features.npy checksum mismatch (corrupt or truncated)")):
        F._load_entry(entry, key, 24)
    assert F._load_entry(entry, key, 24, verify=False).shape == (24, 32)
    (entry / "features.npy").unlink()
    with pytest.raises(CacheError, match=exact(f"{entry}: features.npy is missing")):
        F._load_entry(entry, key, 24)
    with pytest.raises(CacheError, match="^" + re.escape(f"{entry}: features.npy is unreadable (")):
        F._load_entry(entry, key, 24, verify=False)
    (entry / "meta.json").write_text("{")
    with pytest.raises(CacheError, match="^" + re.escape(f"{entry}: meta.json is unreadable (")):
        F._load_entry(entry, key, 24)
    (entry / "meta.json").unlink()
    with pytest.raises(CacheError, match=exact(f"{entry}: meta.json is missing")):
        F._load_entry(entry, key, 24)


# Under mutmut every call goes through a trampoline (two extra frames per call), so where a warning
# points is checked outside mutmut only (test_a_corrupt_entry_warns_at_the_line_that_called_get_features).
_UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def test_a_corrupt_entry_is_reported_where_get_features_was_called(tmp_path):
    entry, _ = _entry(tmp_path)
    (entry / "features.npy").write_bytes(b"x")
    with pytest.warns(RuntimeWarning) as record:
        features(tmp_path, make_split())
    assert len(record) == 1 and (_UNDER_MUTMUT or record[0].filename == __file__)
    assert str(record[0].message) == (f"feature cache entry is corrupt, rebuilding: {entry}: features.npy checksum "
                                      "mismatch (corrupt or truncated)")


def test_a_hit_takes_no_lock_and_a_miss_returns_the_written_entry(tmp_path, monkeypatch):
    entry, _ = _entry(tmp_path)
    monkeypatch.setattr(F, "entry_lock", lambda e: pytest.fail("lock taken on a hit"))
    assert features(tmp_path, make_split()).shape == (24, 32)
    monkeypatch.undo()
    calls = []
    real = F._load_entry
    monkeypatch.setattr(F, "_load_entry", lambda *a, **k: calls.append(k) or real(*a, **k))
    other = make_split(seed=5)
    features(tmp_path, other)  # a miss: written, then read back without re-hashing
    assert calls == [{"verify": False}]
    features(tmp_path, other, verify=False)
    assert calls[-1] == {"verify": False}
    features(tmp_path, other)
    assert calls[-1] == {"verify": True}


# ------------------------------------------------------------------------------------ extraction
class Recorder(torch.nn.Module):
    """Mean colour per image; records batch sizes, training flags and grad mode."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled(), x.dtype))
        return x.mean(dim=(2, 3)) * self.w


@pytest.mark.parametrize("batch_size, sizes", [(10, [10, 10, 4]), (24, [24]), (23, [23, 1]), (1, [1] * 24)])
def test_batches_are_consecutive_rows_of_batch_size(batch_size, sizes):
    images = make_split().images
    model = Recorder().train()
    out = extract_features(model, images, "unit", batch_size=batch_size, progress=False)
    assert [c[0] for c in model.calls] == sizes
    assert all(not training and not grad for _, training, grad, _ in model.calls)
    assert model.training
    want = images.astype(np.float32).mean(axis=(1, 2)) / 255
    np.testing.assert_allclose(out, want, rtol=1e-6)
    model.eval()
    extract_features(model, images, "unit", batch_size=batch_size, progress=False)
    assert not model.training


def test_get_features_passes_the_batch_size(tmp_path, monkeypatch):
    model = Recorder()
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: model)
    get_features(None, "conv4", make_split(), "unit", cache_dir=tmp_path, batch_size=7, progress=False)
    assert [c[0] for c in model.calls] == [7, 7, 7, 3]


def test_string_batch_size_and_non_4d_images():
    images = make_split(n=4).images
    assert extract_features(Recorder(), images, "unit", batch_size="3", progress=False).shape == (4, 3)
    with pytest.raises(ConfigError, match=exact("--batch-size must be >= 1, got -1")):
        extract_features(Recorder(), images, "unit", batch_size=-1, progress=False)
    for bad, shown in ((images[0], "uint8 (32, 32, 3)"), (images[..., :2], "uint8 (4, 32, 32, 2)"),
                       (images.tolist(), "list ()")):
        with pytest.raises(DataError, match=exact(f"images must be a uint8 numpy array (N, H, W, 3), got {shown}")):
            extract_features(Recorder(), bad, "unit", progress=False)


def test_wrong_batch_dimension_of_the_backbone_is_refused():
    class Half(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[: len(x) // 2]

    with pytest.raises(ConfigError, match=exact("backbone Half returned (2, 3072) for a batch of 4; a backbone must "
                                              "return (B, D) features")):
        extract_features(Half(), make_split(n=4).images, "unit", progress=False)


def _shown(tmp_path, split, **kw):
    return get_features(None, "conv4", split, "metaoptnet-cifar", cache_dir=tmp_path, batch_size=10,
                        arch_kwargs=ARCH_KW, progress=True, **kw)


def test_progress_bar_is_shown_only_when_asked(tmp_path, capsys):
    split = make_split(n=8)
    _shown(tmp_path, split)
    err = capsys.readouterr().err
    assert "toy/test" in err and "img" in err and " 0/8 " in err
    assert err.endswith("\r") and "\n" not in err  # leave=False: the bar is cleared, no line left behind
    features(tmp_path / "b", split)  # progress=False
    assert capsys.readouterr().err == ""
    extract_features(Recorder(), split.images, "unit")
    assert "features" in capsys.readouterr().err


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    split = make_split(n=8)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = np.array(features(tmp_path / "a", split, seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)
    b = np.array(features(tmp_path / "b", split, seed=4))
    c = np.array(features(tmp_path / "c", split, seed=5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    torch.manual_seed(4)
    model = create_backbone("conv4", image_size=32, hidden=8)
    np.testing.assert_allclose(a, extract_features(model, split.images, "metaoptnet-cifar", progress=False),
                               rtol=1e-5, atol=1e-6)


def test_arch_kwargs_reach_the_backbone_and_may_set_its_image_size(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: seen.append((arch, kw)) or Recorder())
    features(tmp_path, make_split(n=4), arch_kwargs={"hidden": 8})
    features(tmp_path, make_split(n=4), arch_kwargs={"hidden": 8, "image_size": 84})
    assert seen == [("conv4", {"image_size": 32, "hidden": 8}), ("conv4", {"image_size": 84, "hidden": 8})]
    get_features(None, "conv4", make_split(n=4, size=16), "unit", cache_dir=tmp_path, progress=False)
    assert seen[-1] == ("conv4", {"image_size": 16})


def test_non_finite_rows_are_counted():
    split = make_split()
    feats = np.zeros((24, 3), dtype=np.float32)
    F._check_finite(feats, None, "conv4", split, 0)
    feats[3, 1] = np.inf
    feats[5] = np.nan
    with pytest.raises(CheckpointError, match=exact(
            "checkpoint random-init:2 (--arch conv4) gives NaN/Inf features for 2 of 24 toy/test images; the weights "
            "may have diverged, or the transform is wrong")):
        F._check_finite(feats, None, "conv4", split, 2)
    with pytest.raises(CheckpointError, match=r"^checkpoint w\.pt \(--arch x\) gives NaN/Inf features for 2 of 24"):
        F._check_finite(feats, "w.pt", "x", split, 2)


# ------------------------------------------------------------------------------------ under torchrun
def test_sharded_progress_only_on_rank_0_and_warning_at_the_caller(tmp_path, monkeypatch, capsys):
    split = make_split()
    good = np.array(features(tmp_path, split))
    entry = entry_dir(tmp_path, split)
    (entry / "features.npy").write_bytes(b"truncated")
    shards = {1: good[10:]}
    _as_rank(monkeypatch, 0, shards=shards)
    with pytest.warns(RuntimeWarning) as record:
        _shown(tmp_path, split)
    assert len(record) == 1 and (_UNDER_MUTMUT or record[0].filename == __file__)
    assert "toy/test" in capsys.readouterr().err
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["device"] == "cpu"
    _as_rank(monkeypatch, 1, shards={0: good[:10]})
    with pytest.raises(CacheError, match="^rank 1 cannot read"):  # played alone, rank 0 has written nothing
        _shown(tmp_path / "r1", split)
    assert "toy/test" not in capsys.readouterr().err


def test_sharded_hit_on_rank_0_takes_no_lock(tmp_path, monkeypatch):
    split = make_split()
    good = np.array(features(tmp_path, split))
    _as_rank(monkeypatch, 0, shards={})
    monkeypatch.setattr(F, "entry_lock", lambda e: pytest.fail("lock taken on a hit"))
    monkeypatch.setattr(F, "_compute", lambda *a, **k: pytest.fail("computed on a hit"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(features(tmp_path, split)), good)


@pytest.mark.parametrize("amp, bf16, expected", [(None, True, torch.bfloat16), (True, True, torch.bfloat16),
                                                 (True, False, torch.float16), (None, False, torch.float16)])
def test_autocast_on_cuda_prefers_bf16_where_the_gpu_has_it(monkeypatch, amp, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert F._resolve_amp(amp, torch.device("cuda")) is expected
    assert F._resolve_amp(True, torch.device("cpu")) is torch.bfloat16  # CPU autocast: bf16 only


def test_allow_partial_reaches_the_checkpoint_loader(tmp_path, monkeypatch):
    split = make_split()
    ck = save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4", image_size=32, hidden=8), {})
    good = np.array(features(tmp_path / "good", split, checkpoint=ck))
    seen = []
    real = F.load_checkpoint
    monkeypatch.setattr(F, "load_checkpoint", lambda c, model, allow_partial: seen.append(allow_partial) or real(
        c, model, allow_partial=allow_partial))
    features(tmp_path, split, checkpoint=ck)
    features(tmp_path, split, checkpoint=ck, allow_partial=True)
    assert seen == [False, True]
    _as_rank(monkeypatch, 0, shards={1: good[10:]})
    features(tmp_path / "sharded", split, checkpoint=ck, allow_partial=True)
    assert seen == [False, True, True]


# ==================================================================================== survivors of mutation testing
# Each test below fails on at least one mutant of features.py that the tests above let live.
class Probe(torch.nn.Module):
    """No parameters; records ``to()`` targets and, per batch, (rows, autocast on CPU, its dtype)."""

    def __init__(self, events=None):
        super().__init__()
        self.moved, self.calls = [], []
        self.events = [] if events is None else events

    def to(self, *args, **kwargs):
        self.moved.append(args)
        return super().to(*args, **kwargs)

    def forward(self, x):
        on = torch.is_autocast_enabled("cpu")
        self.calls.append((x.shape[0], on, torch.get_autocast_dtype("cpu") if on else None))
        self.events.append(("forward", x.dtype, tuple(x.shape)))
        return x.mean(dim=(2, 3))


def test_default_batch_size_is_256(tmp_path, monkeypatch):
    split = make_split(n=257, size=2)
    model = Recorder()
    extract_features(model, split.images, "unit", progress=False)
    assert [c[0] for c in model.calls] == [256, 1]
    model = Recorder()
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: model)
    get_features(None, "conv4", split, "unit", cache_dir=tmp_path, progress=False)
    assert [c[0] for c in model.calls] == [256, 1]


def test_progress_is_on_by_default_with_its_description_and_unit(tmp_path, capsys):
    split = make_split(n=8, size=16)
    extract_features(Recorder(), split.images, "unit")
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)features: +0%\|", err) and "| 0/8 [00:00<?, ?img/s]" in err
    get_features(None, "conv4", split, "unit", cache_dir=tmp_path, arch_kwargs=ARCH_KW)
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)toy/test: +0%\|", err) and "| 0/8 [00:00<?, ?img/s]" in err


def test_extract_features_uses_the_device_it_is_given(monkeypatch):
    images = make_split(n=4, size=2).images
    with pytest.raises(ConfigError, match=exact("--device 'gpu' is not a device; use cpu, cuda or cuda:N")):
        extract_features(Probe(), images, "unit", device="gpu", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA host: the default would be cuda
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("CUDA asked for on --device cpu"))
    model = Probe()
    out = extract_features(model, images, "unit", device="cpu", progress=False)
    assert model.moved == [(torch.device("cpu"),)] and out.shape == (4, 3)


def test_cuda_batches_are_pinned_then_copied_without_blocking_then_transformed(monkeypatch):
    """No GPU needed: torch's pin/copy are replaced by recorders (the model has no parameters to move)."""
    events = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            events.append(("to", args, kwargs))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: events.append(("pin", self.dtype)) or self)
    monkeypatch.setattr(torch.Tensor, "to", to)
    model = Probe(events)
    images = make_split(n=4, size=2).images
    out = extract_features(model, images, "unit", device="cuda:0", amp="off", batch_size=3, progress=False)
    cuda0 = torch.device("cuda", 0)
    per_batch = [("pin", torch.uint8), ("to", (cuda0,), {"non_blocking": True})]
    assert events == [*per_batch, ("forward", torch.float32, (3, 3, 2, 2)),
                      *per_batch, ("forward", torch.float32, (1, 3, 2, 2))]
    assert model.moved == [(cuda0,)]
    np.testing.assert_allclose(out, images.astype(np.float32).mean(axis=(1, 2)) / 255, rtol=1e-6)


@pytest.mark.parametrize("amp, want", [("fp16", (True, torch.float16)), ("bf16", (True, torch.bfloat16)),
                                       ("off", (False, None)), (None, (False, None))])
def test_autocast_runs_in_the_dtype_asked_for(amp, want):
    model = Probe()
    extract_features(model, make_split(n=4, size=2).images, "unit", device="cpu", amp=amp, progress=False)
    assert model.calls == [(4, *want)]


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("amp, want", [("fp16", (True, torch.float16)), ("off", (False, None))])
def test_get_features_extracts_with_the_amp_it_records(tmp_path, monkeypatch, world, amp, want):
    split = make_split()
    model = Probe()
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: model)
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: np.zeros((14, 3), dtype=np.float32)})
    features(tmp_path, split, amp=amp)
    assert model.calls == [(rows, *want) for rows in ([10, 10, 4] if world == 1 else [10])]
    meta = json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())
    assert meta["amp"] == (None if amp == "off" else "float16") and meta["device"] == "cpu"


@pytest.mark.parametrize("world", [1, 2])
def test_cpu_device_on_a_cuda_host_never_touches_cuda(tmp_path, monkeypatch, world):
    """--device cpu where CUDA (2 GPUs) is available: extraction, seeding and RNG forking stay on the CPU."""
    split = make_split()
    want = np.array(features(tmp_path / "plain", split))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("current_device", "get_rng_state", "set_rng_state", "init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: pytest.fail(f"torch.cuda.{_n} called"))
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: want[10:]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. fork_rng's "you have 2 available devices"
        out = features(tmp_path, split, device="cpu")
    assert np.array_equal(np.asarray(out), want)
    assert json.loads((entry_dir(tmp_path, split) / "meta.json").read_text())["device"] == "cpu"


def test_side_of_a_size_keeping_transform_is_the_image_height(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: seen.append(kw) or Recorder())
    split = make_split(n=4)
    split.images = np.zeros((4, 12, 20, 3), dtype=np.uint8)
    get_features(None, "conv4", split, "unit", cache_dir=tmp_path, progress=False)
    assert seen == [{"image_size": 12}]


def _tamper(entry, value=1234.5):
    """Change the last float of features.npy, keeping its size and header (only the checksum can tell)."""
    npy = entry / "features.npy"
    data = bytearray(npy.read_bytes())
    data[-4:] = np.float32(value).tobytes()
    npy.write_bytes(bytes(data))


def _no_build(monkeypatch):
    monkeypatch.setattr(F, "create_backbone", lambda *a, **k: pytest.fail("backbone built"))


@pytest.mark.parametrize("world", [1, 2])
def test_unverified_hit_reads_the_entry_as_is_without_lock_or_hash(tmp_path, monkeypatch, world):
    split = make_split()
    good = np.array(features(tmp_path, split))
    _tamper(entry_dir(tmp_path, split))
    if world == 2:
        _as_rank(monkeypatch, 0, shards={})
    _no_build(monkeypatch)
    monkeypatch.setattr(F, "entry_lock", lambda e: pytest.fail("lock taken on a hit"))
    monkeypatch.setattr(F, "sha256_file", lambda p: pytest.fail(f"{p} hashed with verify=False"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = np.asarray(features(tmp_path, split, verify=False))
    assert out[-1, -1] == 1234.5 and np.array_equal(out[:-1], good[:-1])


@pytest.mark.parametrize("world", [1, 2])
def test_verified_hit_with_a_wrong_checksum_is_rebuilt(tmp_path, monkeypatch, world):
    split = make_split()
    good = np.array(features(tmp_path, split))
    entry = entry_dir(tmp_path, split)
    _tamper(entry)
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: good[10:]})
    with pytest.warns(RuntimeWarning, match=exact(f"feature cache entry is corrupt, rebuilding: {entry}: features.npy "
                                                  "checksum mismatch (corrupt or truncated)")):
        out = features(tmp_path, split)
    assert np.array_equal(np.asarray(out), good)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("tampered, verify", [(False, True), (False, False), (True, True), (True, False)])
def test_entry_written_by_another_process_while_waiting_for_the_lock(tmp_path, monkeypatch, world, tampered, verify):
    """No entry at the first look; another process completes it before this one gets the lock."""
    split = make_split()
    good = np.array(features(tmp_path / "other", split))
    theirs = entry_dir(tmp_path / "other", split)
    if tampered:
        _tamper(theirs)
    real_lock = F.entry_lock

    @contextlib.contextmanager
    def lock_after_the_other_process(entry):
        shutil.copytree(theirs, entry)
        with real_lock(entry):
            yield

    monkeypatch.setattr(F, "entry_lock", lock_after_the_other_process)
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: good[10:]})
    if tampered and verify:  # its checksum is checked under the lock too: rebuilt
        with pytest.warns(RuntimeWarning, match="checksum mismatch"):
            out = np.asarray(features(tmp_path, split))
        assert np.array_equal(out, good)
        return
    _no_build(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = np.asarray(features(tmp_path, split, verify=verify))
    assert np.array_equal(out[:-1], good[:-1]) and out[-1, -1] == (1234.5 if tampered else good[-1, -1])


@pytest.mark.parametrize("world, rank", [(1, 0), (2, 0), (2, 1)])
def test_a_written_entry_is_read_back_without_hashing_it_again(tmp_path, monkeypatch, world, rank):
    split = make_split()
    good = np.array(features(tmp_path / "single", split))
    if rank == 1:  # the entry rank 0 wrote meanwhile
        shutil.copytree(entry_dir(tmp_path / "single", split), entry_dir(tmp_path, split))
    if world == 2:
        _as_rank(monkeypatch, rank, shards={1: good[10:]} if rank == 0 else {})
    hashed = []
    real = F.sha256_file
    monkeypatch.setattr(F, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    out = features(tmp_path, split)
    assert np.array_equal(np.asarray(out), good)
    assert hashed == ([] if rank == 1 else ["features.npy"])  # rank 0 / one process: once, for meta.json


class NaNs(torch.nn.Module):
    def forward(self, x):
        return torch.full((len(x), 2), float("nan"))


@pytest.mark.parametrize("world", [1, 2])
def test_non_finite_features_of_a_random_init_name_its_seed(tmp_path, monkeypatch, world):
    split = make_split()
    monkeypatch.setattr(F, "create_backbone", lambda arch, **kw: NaNs())
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: np.full((14, 2), np.nan, dtype=np.float32)})
    with pytest.raises(CheckpointError, match=exact(
            "checkpoint random-init:3 (--arch conv4) gives NaN/Inf features for 24 of 24 toy/test images; the weights "
            "may have diverged, or the transform is wrong")):
        features(tmp_path, split, seed=3)
    assert [p.name for p in (tmp_path / "features").iterdir()] == [".locks"]


def test_sharded_non_finite_features_name_the_checkpoint_and_arch(tmp_path, monkeypatch):
    split = make_split()
    ck = save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4", image_size=32, hidden=8), {})
    _as_rank(monkeypatch, 0, shards={1: np.full((14, 32), np.inf, dtype=np.float32)})
    with pytest.raises(CheckpointError, match=exact(
            f"checkpoint {ck} (--arch conv4) gives NaN/Inf features for 14 of 24 toy/test images; the weights "
            "may have diverged, or the transform is wrong")):
        features(tmp_path, split, checkpoint=ck)


def test_sharded_entry_has_the_single_process_meta_plus_world_size(tmp_path, monkeypatch):
    split = make_split()
    torch.manual_seed(3)
    ck = save_checkpoint(tmp_path / "c4.pt", create_backbone("conv4", image_size=32, hidden=8), {})
    good = np.array(features(tmp_path / "single", split, checkpoint=ck))
    single = json.loads((entry_dir(tmp_path / "single", split, ck) / "meta.json").read_text())
    _as_rank(monkeypatch, 0, shards={1: good[10:]})
    features(tmp_path, split, checkpoint=ck)
    meta = json.loads((entry_dir(tmp_path, split, ck) / "meta.json").read_text())
    del meta["created"], single["created"]
    assert meta == {**single, "world_size": 2} and meta["checkpoint_path"] == str(ck) and "loaded" in meta["load_report"]






@pytest.mark.parametrize("world", [1, 2])
def test_a_corrupt_entry_warns_at_the_line_that_called_get_features(tmp_path, monkeypatch, warning_sites, world):
    split = make_split()
    good = np.array(features(tmp_path, split))
    entry = entry_dir(tmp_path, split)
    (entry / "features.npy").write_bytes(b"x")
    if world == 2:
        _as_rank(monkeypatch, 0, shards={1: good[10:]})
    kw = {"cache_dir": tmp_path, "progress": False, "batch_size": 10, "arch_kwargs": ARCH_KW}
    with pytest.warns(RuntimeWarning) as record:
        line = sys._getframe().f_lineno + 1
        get_features(None, "conv4", split, "metaoptnet-cifar", **kw)
    message = f"feature cache entry is corrupt, rebuilding: {entry}: features.npy checksum mismatch (corrupt or truncated)"
    assert [s[0] for s in warning_sites if s[0].startswith("feature cache")] == [message]
    if not _UNDER_MUTMUT:
        assert [s for s in warning_sites if s[0].startswith("feature cache")] == [(message, __file__, line)]
        assert [(str(r.message), r.filename, r.lineno) for r in record] == [(message, __file__, line)]
