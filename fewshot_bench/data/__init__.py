"""Datasets: one module per benchmark, layout detection under ``--data-root``, the array cache.

>>> split = load_split("cifar-fs", "test", "~/data")  # finds CIFAR_FS_test.pickle, CIFAR-FS/test.pickle, ...
>>> split.images.shape, split.class_names[:2]          # ((12000, 32, 32, 3), ('baby', 'bed'))

The first load decodes and validates the files and writes ``<cache>/data/<dataset>/<split>-<key>/``;
later loads memory-map it (see :mod:`fewshot_bench.data.base`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import cache_root
from ..errors import DataError
from . import cifar_fs, fc100, image_folder, miniimagenet, tieredimagenet  # noqa: F401  (register datasets)
from .base import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    Found,
    Layout,
    ReadOptions,
    Split,
    _validate,
    build_split,
    canonical_order,
    fingerprint,
    normalize_split,
)
from .cifar100 import prepare_cifar_benchmark

if importlib.util.find_spec(f"{__name__}.digits") is not None:  # the demo's digits (another author's module)
    importlib.import_module(f"{__name__}.digits")

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "Found",
    "Split",
    "SplitFiles",
    "class_structure",
    "describe_datasets",
    "find_layouts",
    "load_split",
    "prepare_cifar_benchmark",
    "split_files",
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
    """Text for ``fewshot-bench datasets``: per benchmark its splits and class counts, the files and
    layouts looked for, where (``data_root`` and its conventional subfolders) and what was found."""
    root = None if data_root is None else _existing_root(data_root)
    env = os.environ.get("FEWSHOT_BENCH_CACHE")
    lines = [
        f"data root: {root} (--data-root)" if root is not None else
        "data root: none given; pass --data-root DIR to see what is found there (every command that reads "
        "data takes --data-root)",
        f"cache: {cache_root()} ("
        + ("from $FEWSHOT_BENCH_CACHE" if env else "default; set $FEWSHOT_BENCH_CACHE or --cache-dir to move it")
        + "): decoded splits and features",
        "",
    ]
    for row in supported():
        if lines[-1]:
            lines.append("")  # a blank line between benchmarks
        info = DATASETS.get(row["name"])
        size = f"{row['image_size']} px" if row["image_size"] else "any size"
        lines.append(f"{row['name']} ({row['display']}): {size}, eval transform {row['eval_transform']}")
        lines.append(f"  splits: {_splits_line(info)}")
        subs = ", ".join(f"{n}/" for n in info.folders)
        lines.append("  layouts (the first found is read; {split} is train, val or test):")
        for lay in row["layouts"]:
            lines.append(f"    {lay['name']:<20} {' + '.join(lay['patterns'])}  ({lay['description']})")
        if root is None:
            lines.append("  looks in: DIR" + (f" and its subfolders {subs}" if subs else ""))
            continue
        dirs = _search_dirs(info, root)
        lines.append(f"  looked in: {', '.join(str(d) for d in dirs)}"
                     + (f" (subfolders named {subs} are searched too)" if subs else ""))
        found = find_layouts(row["name"], root)
        for f in found:
            first = f.paths[f.splits[0]][0]
            lines.append(f"  found: {f.layout} ({', '.join(f.splits)}) in {f.root}, e.g. {first}")
        have = {s for f in found for s in f.splits}
        wanted = [s for s in SPLITS if info.n_classes is None or info.n_classes.get(s)]
        missing = [s for s in wanted if s not in have]
        if not found:
            lines.append("  found: nothing; put the files above in the data root" + (f" or in {subs}" if subs else ""))
        elif missing:
            lines.append(f"  missing: {', '.join(missing)} split(s)")
    return "\n".join(lines)


def _splits_line(info: DatasetInfo) -> str:
    """``train 64 classes, val 16, test 20; 600 images per class`` for one benchmark."""
    if info.n_classes is None:
        return "train, val, test (or one folder for all); any classes, any number of images per class"
    parts = [f"{s} {info.n_classes[s]}" for s in SPLITS if info.n_classes.get(s)]
    absent = [s for s in SPLITS if not info.n_classes.get(s)]
    per = (f"{info.images_per_class} images per class" if info.images_per_class
           else "class sizes vary (known from the data)")
    return (", ".join(parts) + " classes" + (f" (no {', '.join(absent)} split)" if absent else "") + f"; {per}")


@dataclass(frozen=True)
class SplitFiles:
    """The image file behind every ``(class, position)`` of a split read from image files.

    ``names[c][p]`` is the path, relative to ``root`` (``--data-root``, ``/``-separated), of the
    image at position ``p`` of class ``c`` in the split's canonical order, i.e. what an episode
    file's ``(class, position)`` means. Built by :func:`split_files`.
    """

    split: Split
    root: Path
    names: tuple[tuple[str, ...], ...]

    def name_of(self, c: int, p: int) -> str:
        return self.names[c][p]

    @functools.cached_property
    def _suffixes(self) -> dict[str, list[tuple[int, int]]]:
        index: dict[str, list[tuple[int, int]]] = {}
        for c, files in enumerate(self.names):
            for p, name in enumerate(files):
                parts = name.split("/")
                for k in range(len(parts)):
                    index.setdefault("/".join(parts[k:]), []).append((c, p))
        return index

    def resolve(self, name: str) -> tuple[int, int]:
        """``(class id, position)`` of the image ``name``: its path under the data root, or any unique
        trailing part of it (the file name alone, ``class/file.png``, ...). Raises :class:`LookupError`."""
        text = str(name).strip().replace("\\", "/")
        if os.path.isabs(text):
            text = os.path.relpath(text, self.root).replace(os.sep, "/")
        key = posixpath.normpath(text).lstrip("/") if text else ""
        hits = self._suffixes.get(key, [])
        where = f"the {self.split.dataset} {self.split.split} split under {self.root}"
        if not hits:
            raise LookupError(f"no image named {name!r} in {where} ({sum(map(len, self.names))} images, e.g. "
                              f"{self.names[0][0]}); give its path under --data-root, and the --image-size "
                              "the split is read at")
        if len(hits) > 1:
            shown = ", ".join(self.names[c][p] for c, p in hits[:2])
            raise LookupError(f"{name!r} names {len(hits)} images in {where} ({shown}); give more of its path")
        return hits[0]


def split_files(
    dataset: str,
    split: str,
    data_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> SplitFiles:
    """Map the image files of a split to ``(class, position)``, for episode lists by file name.

    Loads the split as :func:`load_split` does (same arguments, so the same fingerprint and canonical
    order), then reads its layout's file list, decodes the files once more and orders them with the
    same :func:`~fewshot_bench.data.base.canonical_order`; the fingerprint of that order must equal
    the split's. Only layouts of image files (folders, CSV + images) have file names; pickles and
    arrays raise :class:`DataError`.
    """
    info = DATASETS.get(dataset)
    split_name = normalize_split(split)
    root = _existing_root(data_root)
    loaded = load_split(info.name, split_name, root, cache_dir=cache_dir, image_size=image_size, progress=progress)
    found = next(f for f in find_layouts(info.name, root) if split_name in f.paths)  # the one load_split read
    layout = next(lay for lay in info.layouts if lay.name == found.layout)
    paths = found.paths[split_name]
    if not layout.decodes_files:
        raise DataError(f"--data-root {root}: the {info.display} {split_name} split is read from {layout.name} "
                        f"({paths[0].name}), which holds no file names; use --by index")
    size = int(image_size or info.image_size or 84)  # as build_split decodes
    raw = layout.read(paths, split_name, ReadOptions(dataset=info, image_size=size, progress=progress))
    if raw.files is None:
        raise DataError(f"--data-root {root}: the {info.display} {split_name} split ({layout.name}) does not "
                        "list its image files; use --by index")
    images, labels, names = _validate(raw, info, split_name)
    order, digests = canonical_order(images, labels)
    labels = labels[order]
    if fingerprint(names, labels, digests, images.shape[1:]) != loaded.fingerprint:
        raise DataError(f"{paths[0]}: the images changed since the split was cached; run the command again")
    rel = [os.path.relpath(raw.files[i], root).replace(os.sep, "/") for i in order]
    bounds = [0, *(int(n) for n in labels.searchsorted(range(1, len(names)))), len(rel)]
    per_class = tuple(tuple(rel[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
    return SplitFiles(loaded, root, per_class)


def _norm(name: str) -> str:
    return re.sub(r"[-_ .]", "", name.lower())


def _existing_root(data_root: str | os.PathLike | None) -> Path:
    if data_root is None:
        raise DataError("no --data-root given; pass the folder that holds the dataset files "
                        "(`fewshot-bench datasets` lists the files each benchmark expects)")
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
