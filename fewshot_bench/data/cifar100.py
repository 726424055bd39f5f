"""CIFAR-100 names, the raw ``cifar-100-python/`` reader, the fine-id pickle reader, and ``prepare``.

CIFAR-FS and FC100 are both 100 CIFAR-100 fine classes with the 50k train and
10k test images merged (600 per class); they differ only in the class split.
Label ids are the standard alphabetical fine ids (0 = apple … 99 = worm).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .._io import atomic_write
from ..errors import ConfigError, DataError
from ..safe_pickle import safe_load
from .base import DATASETS, SPLITS, Layout, RawSplit, ReadOptions, files_locator, pick, read_table

__all__ = [
    "COARSE_NAMES",
    "FINE_NAMES",
    "FINE_TO_COARSE",
    "fine_id_layouts",
    "prepare_cifar_benchmark",
    "read_cifar100_raw",
]

FINE_NAMES: tuple[str, ...] = tuple(r["fine_name"] for r in read_table("cifar100.csv"))
"""The 100 fine class names; index = CIFAR-100 fine label id."""
FINE_TO_COARSE: tuple[int, ...] = tuple(int(r["coarse_id"]) for r in read_table("cifar100.csv"))
COARSE_NAMES: tuple[str, ...] = tuple(
    dict(sorted({int(r["coarse_id"]): r["coarse_name"] for r in read_table("cifar100.csv")}.items())).values()
)
"""The 20 superclass names; index = CIFAR-100 coarse label id."""

_RAW_FILES = ("cifar-100-python/train", "cifar-100-python/test")
_PICKLE_KEYS = "a dict with 'data' (N, 32, 32, 3) uint8 and 'labels' (CIFAR-100 fine ids)"


def read_cifar100_raw(cifar100_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the official python files (train then test) → images (60000, 32, 32, 3) uint8, fine ids (60000,).

    ``cifar100_dir`` is the ``cifar-100-python`` folder or its parent.
    """
    root = Path(cifar100_dir)
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    images, labels = [], []
    for part in ("train", "test"):
        path = root / part
        if not path.is_file():
            raise DataError(
                f"{path}: missing; pass the extracted 'cifar-100-python' folder of cifar-100-python.tar.gz"
            )
        d = safe_load(path)
        data = np.asarray(pick(d, "data", file=path, expected="the CIFAR-100 python 'data' array"))
        fine = np.asarray(pick(d, "fine_labels", file=path, expected="CIFAR-100 'fine_labels'"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(
                f"{path}: 'data' has shape {data.shape} and dtype {data.dtype}; expected uint8 (N, 3072) "
                "— use the python version of CIFAR-100"
            )
        if len(fine) != len(data):
            raise DataError(
                f"{path}: {len(fine)} fine labels for {len(data)} images; download the file again"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(fine.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _benchmark_fine_ids(name: str, split: str) -> list[int]:
    info = DATASETS.get(name)
    wanted = set(info.expected_classes(split) or ())
    return [i for i, n in enumerate(FINE_NAMES) if n in wanted]


def prepare_cifar_benchmark(
    name: str, cifar100_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> list[Path]:
    """Build ``CIFAR_FS_{split}.pickle`` or ``FC100_{split}.pickle`` (MetaOptNet format) from raw CIFAR-100.

    ``name`` is ``"cifar-fs"`` or ``"fc100"``. Train and test are merged (600 images per class);
    each pickle holds ``{'data': (N, 32, 32, 3) uint8, 'labels': list of fine ids}``. Returns the paths.
    """
    prefixes = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}
    if name not in prefixes:
        raise ConfigError(f"prepare: unknown benchmark {name!r}; choose cifar-fs or fc100")
    images, fine = read_cifar100_raw(cifar100_dir)
    out = Path(out_dir)
    written = []
    for split in SPLITS:
        rows = np.flatnonzero(np.isin(fine, _benchmark_fine_ids(name, split)))
        path = out / f"{prefixes[name]}_{split}.pickle"
        with atomic_write(path) as f:
            pickle.dump({"data": images[rows], "labels": fine[rows].tolist()}, f, protocol=4)
        written.append(path)
    return written


def _read_fine_id_pickle(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    """MetaOptNet/RFS pickle: {'data': (N,32,32,3) uint8, 'labels': global fine ids}."""
    d = safe_load(paths[0])
    data = pick(d, "data", file=paths[0], expected=_PICKLE_KEYS)
    labels = pick(d, "labels", file=paths[0], expected=_PICKLE_KEYS)
    return RawSplit(images=data, labels=labels, class_names=FINE_NAMES, file=paths[0])


def _read_raw(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    """The official ``cifar-100-python`` files, restricted to the split's classes."""
    images, fine = read_cifar100_raw(paths[0].parent)
    rows = np.flatnonzero(np.isin(fine, _benchmark_fine_ids(options.dataset.name, split)))
    return RawSplit(images=images[rows], labels=fine[rows], class_names=FINE_NAMES, file=paths[0].parent)


def fine_id_layouts(prefix: str) -> tuple[Layout, Layout, Layout]:
    """Shared by CIFAR-FS and FC100: ``<prefix>_{split}.pickle``, RFS ``{split}.pickle``, raw CIFAR-100."""
    return (
        Layout(
            "metaoptnet-pickle",
            "MetaOptNet pickle",
            (f"{prefix}_{{split}}.pickle",),
            files_locator(f"{prefix}_{{split}}.pickle"),
            _read_fine_id_pickle,
        ),
        Layout(
            "rfs-pickle",
            "RFS pickle",
            ("{split}.pickle",),
            files_locator("{split}.pickle"),
            _read_fine_id_pickle,
        ),
        Layout(
            "cifar100-python",
            "raw CIFAR-100 (train+test merged)",
            _RAW_FILES,
            files_locator(*_RAW_FILES),
            _read_raw,
        ),
    )
