"""Feature extraction and the on-disk feature cache.

:func:`extract_features` runs a backbone over uint8 images in batches (no grad, eval mode,
CUDA + AMP when available). :func:`get_features` adds the cache: a second call with the
same checkpoint bytes, arch, data and transform memory-maps the stored array without
building the backbone.

Cache entry ``<cache_root>/features/<key>/`` holds ``features.npy`` (``(N, D)`` float32)
and ``meta.json`` (shape, dtype, sha256 of ``features.npy``, every input of the key, the
device/AMP used, the package version). Entries appear only by renaming a complete
temporary folder into place (:func:`fewshot_bench._io.atomic_dir`), under a per-key file lock
(:func:`fewshot_bench._io.entry_lock`), so an interrupted run (even
``kill -9``) leaves nothing that passes for complete, and two concurrent runs compute an
entry once (the second waits, then loads). On every load the shape and checksum are
verified; a corrupt or truncated entry is rebuilt with a warning.

Under ``torchrun`` (a default process group of several ranks) :func:`get_features` is a
collective: rank 0 checks the cache under the lock; on a miss every rank embeds its
contiguous run of whole batches (:func:`fewshot_bench.distributed.batch_shard`), the
shards are sent to rank 0, which checks and writes the entry exactly as one process would
(the same bytes: every batch is the one a single process would have fed the model); the
other ranks then memory-map it, so the cache folder must be visible to every rank (one node,
or a shared file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from . import distributed as D
from ._io import atomic_dir, atomic_save_npy, atomic_write_json, cache_root, discard, entry_lock, sha256_file
from .backbones import create_backbone, load_checkpoint
from .errors import CacheError, CheckpointError, ConfigError, DataError
from .transforms import EvalTransform, get_transform, to_uint8_tensor

__all__ = ["FEATURES_FORMAT", "extract_features", "feature_cache_key", "feature_cache_dir", "get_features"]

FEATURES_FORMAT = 1  # bump when the entry layout or extraction numerics change (part of the key)


# ------------------------------------------------------------------------------------ extraction


def _resolve_amp(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``None``: bf16 (or fp16) autocast on CUDA, none on CPU; ``False``: none; ``"bf16"``/``"fp16"``."""
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if isinstance(amp, torch.dtype):
        return amp
    if amp is True:
        if device.type != "cuda":
            return torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if isinstance(amp, str) and amp.lower() in table:
        return table[amp.lower()]
    if isinstance(amp, str) and amp.lower() in ("fp32", "float32", "none", "off"):
        return None
    raise ConfigError(f"--amp must be bf16, fp16 or off, got {amp!r}")


def extract_features(
    model: nn.Module,
    images: np.ndarray,
    transform: str | EvalTransform,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool | str | None = None,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Embed ``images`` with ``model``: uint8 ``(N, H, W, 3)`` → float32 ``(N, D)``.

    Batches of uint8 rows are sliced from ``images`` (a memmap is never loaded whole),
    moved to ``device`` (pinned, non-blocking on CUDA) and transformed there.
    ``device=None`` picks CUDA when available; ``amp=None`` autocasts to bf16 (fp16 on GPUs
    without bf16) on CUDA and runs fp32 on CPU. The model runs in eval mode under
    ``torch.inference_mode``; its training flag is restored afterwards.
    """
    transform = get_transform(transform)
    _check_images(images)
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    dev = D.resolve_device(device)
    amp_dtype = _resolve_amp(amp, dev)
    was_training = model.training
    model.eval().to(dev)
    try:
        out = _embed_all(model, images, transform, int(batch_size), dev, amp_dtype, progress, desc)
    finally:
        model.train(was_training)
    if out is None:  # no images: D from the model if it says
        out = np.empty((0, int(getattr(model, "out_dim", 0))), dtype=np.float32)
    return out


def _check_images(images: Any) -> None:
    """Raise :class:`DataError` unless ``images`` is a uint8 numpy array ``(N, H, W, 3)``."""
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        what = getattr(images, "dtype", type(images).__name__)
        shape = tuple(getattr(images, "shape", ()))
        raise DataError(f"images must be a uint8 numpy array (N, H, W, 3), got {what} {shape}")


def _embed_all(model: nn.Module, images: np.ndarray, transform: EvalTransform, batch_size: int,
               dev: torch.device, amp_dtype: torch.dtype | None, progress: bool, desc: str) -> np.ndarray | None:
    """``(N, D)`` float32 features of ``images``, batch by batch, with a progress bar (None if N = 0)."""
    from tqdm.auto import tqdm

    n, out = len(images), None
    with torch.inference_mode(), tqdm(total=n, unit="img", desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            y = _embed_batch(model, images[start : start + batch_size], transform, dev, amp_dtype)
            if out is None:
                out = np.empty((n, y.shape[1]), dtype=np.float32)
            out[start : start + len(y)] = y
            bar.update(len(y))
    return out


def _embed_batch(model: nn.Module, batch: np.ndarray, transform: EvalTransform, dev: torch.device,
                 amp_dtype: torch.dtype | None) -> np.ndarray:
    """Features ``(B, D)`` float32 of a uint8 batch ``(B, H, W, 3)`` (a memmap slice is read here)."""
    x = to_uint8_tensor(np.array(batch))
    if dev.type == "cuda":
        x = x.pin_memory().to(dev, non_blocking=True)
    x = transform(x)
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        y = model(x)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ConfigError(
            f"backbone {getattr(model, 'arch', type(model).__name__)} returned {tuple(y.shape)} "
            f"for a batch of {x.shape[0]}; a backbone must return (B, D) features"
        )
    return y.float().cpu().numpy()


# ------------------------------------------------------------------------------------ cache keys

_CKPT_HASHES: dict[tuple[str, int, int], str] = {}


def _checkpoint_sha256(checkpoint: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, memoised per (path, size, mtime) within the process."""
    p = Path(checkpoint)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} not found; check --checkpoint") from None
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; pass the .pt/.pth file inside it")
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _CKPT_HASHES:
        _CKPT_HASHES[memo] = sha256_file(p)
    return _CKPT_HASHES[memo]


def _key_fields(
    checkpoint: Any, arch: str, split: Any, transform: EvalTransform, seed: int, arch_kwargs: Mapping | None,
    allow_partial: bool = False,
) -> dict:
    for attr in ("dataset", "split", "fingerprint", "images"):
        if not hasattr(split, attr):
            raise ConfigError(f"split object lacks .{attr}; pass a fewshot_bench.data.Split")
    return {
        "format": FEATURES_FORMAT,
        "checkpoint": f"sha256:{_checkpoint_sha256(checkpoint)}"
        if checkpoint is not None
        else f"random-init:{int(seed)}",
        "arch": arch.strip(),
        "arch_kwargs": {k: v for k, v in sorted((arch_kwargs or {}).items()) if v is not None},
        "dataset": str(split.dataset),
        "split": str(split.split),
        "data_fingerprint": str(split.fingerprint),
        "transform": transform.key,
        # a partial load (--allow-partial) gets entries of its own: a strict run never reads them
        **({"partial_load": True} if allow_partial and checkpoint is not None else {}),
    }


def _digest(fields: Mapping) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def feature_cache_key(
    checkpoint: str | os.PathLike | None,
    arch: str,
    split: Any,
    transform: str | EvalTransform,
    *,
    seed: int = 0,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Hex sha256 naming the cache entry: checkpoint bytes (or ``random-init:<seed>``) × arch
    (× ``arch_kwargs``) × dataset × split × data fingerprint × ``transform.key``."""
    return _digest(_key_fields(checkpoint, arch, split, get_transform(transform), seed, arch_kwargs))


def feature_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_root>/features``."""
    return cache_root(cache_dir) / "features"


# ------------------------------------------------------------------------------------ the cache


def _load_entry(entry: Path, key: str, n_rows: int, *, verify: bool = True) -> np.ndarray:
    """Memory-map a complete entry; raise CacheError saying why it is unusable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except FileNotFoundError:
        raise CacheError(f"{entry}: meta.json is missing") from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{entry}: meta.json is unreadable ({exc})") from None
    npy = entry / "features.npy"
    if meta.get("key") != key or meta.get("format") != FEATURES_FORMAT:
        raise CacheError(f"{entry}: meta.json belongs to another key or format")
    shape = tuple(meta.get("shape") or ())
    if len(shape) != 2 or shape[0] != n_rows:
        raise CacheError(f"{entry}: recorded shape {shape} does not fit {n_rows} images")
    if verify:
        try:
            digest = sha256_file(npy)
        except FileNotFoundError:
            raise CacheError(f"{entry}: features.npy is missing") from None
        if digest != meta.get("sha256"):
            raise CacheError(f"{entry}: features.npy checksum mismatch (corrupt or truncated)")
    try:
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CacheError(f"{entry}: features.npy is unreadable ({exc})") from None
    if arr.shape != shape or arr.dtype != np.float32:
        raise CacheError(f"{entry}: features.npy is {arr.dtype} {arr.shape}, meta says float32 {shape}")
    return arr


def get_features(
    checkpoint: str | os.PathLike | None,
    arch: str,
    split: Any,
    transform: str | EvalTransform,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    progress: bool = True,
    seed: int = 0,
    amp: bool | str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    verify: bool = True,
    allow_partial: bool = False,
) -> np.ndarray:
    """Features ``(N, D)`` float32 of ``split.images``, from the cache when possible.

    Parameters
    ----------
    checkpoint: weights file, or ``None`` for a randomly initialised backbone (seeded by ``seed``).
    arch: ``conv4``, ``resnet12``, ``timm:<name>``; built with ``image_size`` = the transform's
        output side (the images' side for ``size=None`` transforms such as ``unit``) plus ``arch_kwargs``.
    split: a ``Split`` (uses ``dataset``, ``split``, ``images``, ``fingerprint`` only).
    transform: preset name or :class:`EvalTransform`.
    verify: check the sha256 of a cached array before use (reads the file once).
    allow_partial: load a checkpoint that does not fully fit ``arch`` (see
        :func:`~fewshot_bench.backbones.load_checkpoint`); by default such a checkpoint is refused.

    Returns a read-only memory-mapped array (rows in the split's order; labels are
    ``split.labels``). Raises :class:`CheckpointError` if the checkpoint does not fit
    ``arch`` or yields non-finite features (nothing is cached then).
    """
    transform = get_transform(transform)
    fields = _key_fields(checkpoint, arch, split, transform, seed, arch_kwargs, allow_partial)
    key = _digest(fields)
    root = feature_cache_dir(cache_dir)
    entry = root / key
    n_rows = len(split.images)
    if D.get_info().distributed:
        return _get_features_sharded(
            checkpoint, arch, split, transform, fields, key, entry, n_rows, seed=seed,
            arch_kwargs=arch_kwargs, device=device, amp=amp, batch_size=batch_size, progress=progress,
            verify=verify, allow_partial=allow_partial,
        )

    cached = _load_or_discard(entry, key, n_rows, verify, locked=False)  # fast path, no lock
    if cached is not None:
        return cached
    with entry_lock(entry):  # also removes the temporaries of a killed run
        cached = _load_or_discard(entry, key, n_rows, verify, locked=True)
        if cached is not None:
            return cached
        feats, run_info = _compute(
            checkpoint, arch, split, transform, seed, arch_kwargs, device, amp, batch_size, progress,
            allow_partial=allow_partial,
        )
        _check_finite(feats, checkpoint, arch, split, seed)
        _write_entry(key, entry, feats, fields, checkpoint, run_info)
        return _load_entry(entry, key, n_rows, verify=False)


def _load_or_discard(entry: Path, key: str, n_rows: int, verify: bool, *, locked: bool,
                     stacklevel: int = 3) -> np.ndarray | None:
    """The cached array of ``entry``, or None. Without the lock (``locked=False``) only a complete
    entry is read and any problem is left for the locked retry (another process may be replacing
    it); with it, a corrupt entry is removed with a warning (``stacklevel``: at get_features' caller)."""
    if not (entry / "meta.json" if not locked else entry).exists():
        return None
    try:
        return _load_entry(entry, key, n_rows, verify=verify)
    except CacheError as exc:
        if locked:
            warnings.warn(f"feature cache entry is corrupt, rebuilding: {exc}", RuntimeWarning, stacklevel=stacklevel)
            discard(entry)
        return None


def _write_entry(key: str, entry: Path, feats: np.ndarray, fields: Mapping, checkpoint, run_info: Mapping) -> None:
    """Write ``feats`` and ``meta.json`` into ``entry``, complete or not at all (caller holds the lock)."""
    with atomic_dir(entry) as tmp:
        atomic_save_npy(tmp / "features.npy", feats)
        meta = {
            **fields,
            "key": key,
            "shape": list(feats.shape),
            "dtype": "float32",
            "sha256": sha256_file(tmp / "features.npy"),
            "checkpoint_path": None if checkpoint is None else str(checkpoint),
            "fewshot_bench_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **run_info,
        }
        atomic_write_json(tmp / "meta.json", meta)


def _compute(
    checkpoint, arch, split, transform, seed, arch_kwargs, device, amp, batch_size, progress, *,
    allow_partial: bool, rows: tuple[int, int] | None = None,
):
    """Build the backbone (seeded; checkpoint loaded strictly), extract rows ``[lo, hi)`` (all by default).

    Finiteness is checked by the caller on the whole array (:func:`_check_finite`).
    """
    side = transform.size or int(split.images.shape[1])  # size=None transforms keep the input side
    kw = {"image_size": side, **dict(arch_kwargs or {})}
    with torch.random.fork_rng(devices=[]):  # random init from `seed`, global RNG untouched
        torch.manual_seed(int(seed))
        model = create_backbone(arch, **kw)
    report = load_checkpoint(checkpoint, model, allow_partial=allow_partial) if checkpoint is not None else None
    dev = D.resolve_device(device)
    amp_dtype = _resolve_amp(amp, dev)
    images = np.asarray(split.images)
    if rows is not None:
        images = images[rows[0] : rows[1]]  # a view: a memmap is not read here
    feats = extract_features(
        model,
        images,
        transform,
        batch_size=batch_size,
        device=dev,
        amp=amp_dtype or False,
        progress=progress,
        desc=f"{split.dataset}/{split.split}",
    )
    info = {"device": str(dev), "amp": None if amp_dtype is None else str(amp_dtype).replace("torch.", "")}
    if report is not None:
        info["load_report"] = report.summary()
    return feats, info


def _check_finite(feats: np.ndarray, checkpoint, arch: str, split: Any, seed: int) -> None:
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        src = checkpoint if checkpoint is not None else f"random-init:{seed}"
        raise CheckpointError(
            f"checkpoint {src} (--arch {arch}) gives NaN/Inf features for {int(bad.sum())} of {len(feats)} "
            f"{split.dataset}/{split.split} images; the weights may have diverged, or the transform is wrong"
        )


def _get_features_sharded(checkpoint, arch, split, transform, fields, key, entry, n_rows, *, seed,
                          arch_kwargs, device, amp, batch_size, progress, verify,
                          allow_partial: bool) -> np.ndarray:
    """:func:`get_features` as a collective over the default process group (see the module doc)."""
    info = D.get_info()
    rank, world = info.rank, info.world_size
    found: np.ndarray | None = None
    with contextlib.ExitStack() as locked:
        if rank == 0:
            found = _load_or_discard(entry, key, n_rows, verify, locked=False)
            if found is None:
                locked.enter_context(entry_lock(entry))
                found = _load_or_discard(entry, key, n_rows, verify, locked=True, stacklevel=4)
        if not D.broadcast_flag(found is not None):
            shard = lambda r: D.batch_shard(n_rows, int(batch_size), r, world)  # noqa: E731
            error: BaseException | None = None
            local, run_info = None, {}
            try:
                local, run_info = _compute(
                    checkpoint, arch, split, transform, seed, arch_kwargs, device, amp, batch_size,
                    progress and rank == 0, rows=shard(rank), allow_partial=allow_partial,
                )
            except Exception as exc:  # every rank must learn of it, or the others wait forever
                error = exc
            if not D.agree(error is None):
                raise error or CacheError(f"feature extraction of {split.dataset}/{split.split} failed on "
                                          "another rank; its error is printed above")
            feats = D.gather_rows_to_main(local, n_rows, shard)
            del local
            if rank == 0:
                try:
                    _check_finite(feats, checkpoint, arch, split, seed)
                    run_info = {**run_info, "world_size": world}
                    _write_entry(key, entry, feats, fields, checkpoint, run_info)
                except Exception as exc:
                    error = exc
                del feats
            if not D.agree(error is None):
                raise error or CacheError(f"rank 0 could not write the feature cache entry {entry}; "
                                          "its error is printed above")
    if found is not None:
        return found
    try:
        return _load_entry(entry, key, n_rows, verify=False)
    except CacheError as exc:
        raise CacheError(f"rank {rank} cannot read the feature cache entry rank 0 wrote ({exc}); "
                         "--cache-dir must be on a file system every rank sees") from None
