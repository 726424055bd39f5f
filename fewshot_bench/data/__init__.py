"""Datasets: one module per benchmark, layout detection under ``--data-root``, the array cache.

>>> split = load_split("cifar-fs", "test", "~/data")  # finds CIFAR_FS_test.pickle, CIFAR-FS/test.pickle, ...
>>> split.images.shape, split.class_names[:2]          # ((12000, 32, 32, 3), ('baby', 'bed'))

The first load decodes and validates the files and writes ``<cache>/data/<dataset>/<split>-<key>/``;
later loads memory-map it (see :mod:`fewshot_bench.data.base`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from . import cifar_fs, fc100, image_folder, miniimagenet, tieredimagenet  # noqa: F401  (register datasets)
from .base import DATASETS, SPLITS, DatasetInfo, Found, Layout, Split, build_split, normalize_split
from .cifar100 import prepare_cifar_benchmark

if importlib.util.find_spec(f"{__name__}.digits") is not None:  # the demo's digits (another author's module)
    importlib.import_module(f"{__name__}.digits")

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "Found",
    "Split",
    "class_structure",
    "describe_datasets",
    "find_layouts",
    "load_split",
    "prepare_cifar_benchmark",
    "supported",
]


def load_split(
    dataset: str,
    split: str,
    data_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    progress: bool = True,
    channel_order: str | None = None,
) -> Split:
    """Load one split of ``dataset`` from the first layout found under ``data_root`` (cached).

    ``split`` is train, val (or validation) or test. ``data_root`` may hold the files or a conventional
    subfolder (``CIFAR-FS/``, ``FC100/``, ``miniImageNet/``, ``tiered-imagenet/``, …). ``image_size``
    applies to layouts of encoded images (default: the dataset's native size). ``channel_order="bgr"``
    flips stored arrays from BGR to RGB (tieredImageNet ``*_images.npz``).
    """
    info = DATASETS.get(dataset)
    split = normalize_split(split)
    root = _existing_root(data_root)
    founds = find_layouts(info.name, root)
    for found in founds:
        if split in found.paths:
            layout = next(lay for lay in info.layouts if lay.name == found.layout)
            return build_split(
                info,
                split,
                layout,
                found.paths[split],
                cache_dir=cache_dir,
                image_size=image_size,
                progress=progress,
                channel_order=channel_order,
            )
    raise DataError(_nothing_found(info, split, root, founds))


def find_layouts(dataset: str, data_root: str | os.PathLike) -> list[Found]:
    """Every layout of ``dataset`` under ``data_root`` or its conventional subfolders, preferred first."""
    info = DATASETS.get(dataset)
    root = _existing_root(data_root)
    found = []
    for layout in info.layouts:
        for base in _search_dirs(info, root):
            paths = {s: p for s in SPLITS if (p := layout.locate(base, s)) is not None}
            if paths:
                found.append(
                    Found(layout=layout.name, paths=paths, root=base, description=layout.description)
                )
    return found


def supported() -> list[dict[str, Any]]:
    """One JSON-serialisable row per registered dataset, for ``fewshot-bench datasets``.

    Keys: ``name``, ``display``, ``n_classes`` ({split: C} or None), ``image_size``, ``eval_transform``,
    ``folders`` (subfolder names searched under the data root) and ``layouts``
    (list of {``name``, ``description``, ``patterns``}).
    """
    return [
        {
            "name": info.name,
            "display": info.display,
            "n_classes": info.n_classes,
            "image_size": info.image_size,
            "eval_transform": info.eval_transform,
            "folders": list(info.folders),
            "layouts": [
                {"name": lay.name, "description": lay.description, "patterns": list(lay.patterns)}
                for lay in info.layouts
            ],
        }
        for _, info in DATASETS.items()
    ]


def class_structure(dataset: str, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted class names, (C,) int64 class sizes) of a benchmark split, known without the data.

    Only for benchmarks with a fixed number of images per class (CIFAR-FS, FC100, miniImageNet);
    otherwise a :class:`DataError` asks for ``--data-root``.
    """
    info = DATASETS.get(dataset)
    split = normalize_split(split)
    names = info.expected_classes(split)
    if names is None or info.images_per_class is None:
        raise DataError(f"--dataset {info.name}: class sizes are only known from the data; pass --data-root")
    return names, np.full(len(names), info.images_per_class, dtype=np.int64)


def describe_datasets(data_root: str | os.PathLike | None = None) -> str:
    """Text for ``fewshot-bench datasets``: datasets, their layouts, what is found under ``data_root``."""
    lines = []
    for row in supported():
        n = row["n_classes"]
        classes = "/".join(str(n.get(s, 0)) for s in SPLITS) + " classes" if n else "any classes"
        size = f"{row['image_size']} px" if row["image_size"] else ""
        lines.append(
            f"{row['name']:<15} {row['display']:<15} {classes:<20} {size:<7} eval {row['eval_transform']}"
        )
        for lay in row["layouts"]:
            lines.append(f"    {lay['name']:<20} {' + '.join(lay['patterns'])}")
        if data_root is not None:
            try:
                found = find_layouts(row["name"], data_root)
            except DataError as exc:
                return f"{exc}"  # the root itself is missing or unreadable
            for f in found:
                lines.append(f"    found: {f.layout} ({', '.join(f.splits)}) in {f.root}")
            if not found:
                lines.append(f"    found: nothing under {data_root}")
    return "\n".join(lines)


def _norm(name: str) -> str:
    return re.sub(r"[-_ .]", "", name.lower())


def _existing_root(data_root: str | os.PathLike) -> Path:
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(f"--data-root {root} does not exist; pass the folder that holds the dataset files")
    if not root.is_dir():
        raise DataError(f"--data-root {root} is a file, not a folder; pass the folder that holds it")
    return root


def _search_dirs(info: DatasetInfo, root: Path) -> list[Path]:
    """``root`` and its subfolders named like the dataset (case, '-', '_' ignored)."""
    keys = {_norm(n) for n in (info.name, info.display, *info.folders)}
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and _norm(p.name) in keys)
    except OSError as exc:
        raise DataError(
            f"--data-root {root}: cannot list folder ({exc.strerror or exc}); check its permissions"
        ) from None
    return [root, *subs]


def _nothing_found(info: DatasetInfo, split: str, root: Path, founds: list[Found]) -> str:
    def patterns(layout: Layout) -> str:
        return " + ".join(p.format(split=split) for p in layout.patterns)

    looked = "; ".join(patterns(lay) for lay in info.layouts)
    where = "that folder" + (
        f" and its subfolders {', '.join(f'{n}/' for n in info.folders)}" if info.folders else ""
    )
    other = "".join(
        f"; found only the {', '.join(f.splits)} split(s) as {f.layout} in {f.root}" for f in founds
    )
    return (
        f"--data-root {root}: no {info.display} {split} split found; looked in {where} for: {looked}{other}; "
        "see 'fewshot-bench datasets' for the supported layouts"
    )
