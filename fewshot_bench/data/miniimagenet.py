"""miniImageNet, Ravi & Larochelle split: 64 / 16 / 20 ImageNet classes, 600 images each, 84x84.

Layouts, in order of preference:

* learn2learn / renmengye ``mini-imagenet-cache-{train,val|validation,test}.pkl``:
  ``image_data`` (N,84,84,3) uint8 RGB and ``class_dict`` {wnid: row indices};
* MetaOptNet / Gidaris ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``:
  ``data``, ``labels``, ``catname2label`` {wnid: label};
* raw JPEGs ``images/*.jpg`` + Ravi CSVs ``{split}.csv`` (``filename,label``), resized to 84x84;
* class folders ``{split}/<wnid>/*.jpg``, ``data/<wnid>/*.jpg`` or ``<wnid>/*.jpg`` (r2d2, ImageNet).

Class names are wnids (``n01532829``); :func:`wordnet_names` gives the readable names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..safe_pickle import safe_load
from .base import (
    DATASETS,
    DatasetInfo,
    Layout,
    RawSplit,
    ReadOptions,
    files_locator,
    pick,
    read_class_folders,
    read_csv_images,
    read_table,
)

__all__ = ["INFO", "classes", "wordnet_names"]


def classes(split: str) -> tuple[str, ...]:
    """Sorted wnids of ``split`` (package table ``splits/miniimagenet.csv``)."""
    return tuple(sorted(r["wnid"] for r in read_table("miniimagenet.csv") if r["split"] == split))


def wordnet_names() -> dict[str, str]:
    """{wnid: WordNet name} for all 100 classes."""
    return {r["wnid"]: r["name"] for r in read_table("miniimagenet.csv")}


def _text(key: object) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _read_cache_pkl(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    """``image_data`` (N,84,84,3) + ``class_dict`` {wnid: rows} → per-row labels."""
    path, expected = paths[0], "learn2learn's 'image_data' and 'class_dict'"
    d = safe_load(path)
    images = pick(d, "image_data", file=path, expected=expected)
    class_dict = pick(d, "class_dict", file=path, expected=expected)
    if not isinstance(class_dict, dict):
        raise DataError(
            f"{path}: 'class_dict' is a {type(class_dict).__name__}, not {{wnid: rows}}; download it again"
        )
    n = len(images) if hasattr(images, "__len__") else 0
    labels = np.full(n, -1, dtype=np.int64)
    names = sorted(_text(k) for k in class_dict)
    for key, rows in class_dict.items():
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise DataError(
                f"{path}: 'class_dict' lists row {int(rows.max())} but 'image_data' has {n} images; "
                "the file is corrupt — download it again"
            )
        labels[rows] = names.index(_text(key))
    if n and (unlisted := int((labels < 0).sum())):
        raise DataError(
            f"{path}: {unlisted} of {n} images belong to no class in 'class_dict'; download it again"
        )
    return RawSplit(images=images, labels=labels, class_names=names, file=path)


def _read_category_pickle(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    """MetaOptNet pickle: ``data``, int ``labels`` (disjoint), ``catname2label`` {wnid: int}."""
    path, expected = paths[0], "MetaOptNet's 'data', 'labels' and 'catname2label'"
    d = safe_load(path)
    images = pick(d, "data", file=path, expected=expected)
    raw = np.asarray(pick(d, "labels", file=path, expected=expected))
    cat = pick(d, "catname2label", file=path, expected=expected)
    by_label = {int(v): _text(k) for k, v in dict(cat).items()}
    values = np.unique(raw) if raw.ndim == 1 and raw.dtype.kind in "iu" else np.array([], dtype=np.int64)
    unknown = [int(v) for v in values if int(v) not in by_label]
    if unknown:
        raise DataError(f"{path}: label {unknown[0]} has no wnid in 'catname2label'; download the file again")
    labels = np.searchsorted(values, raw) if values.size else raw
    return RawSplit(images=images, labels=labels, class_names=[by_label[int(v)] for v in values], file=path)


def _locate_csv(base: Path, split: str) -> tuple[Path, ...] | None:
    csv, images = base / f"{split}.csv", base / "images"
    return (csv, images) if csv.is_file() and images.is_dir() else None


def _read_csv(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    return read_csv_images(paths[0], [paths[1]], options)


def _locate_wnid_folders(base: Path, split: str) -> tuple[Path, ...] | None:
    wnids = classes(split)
    for folder in (base / split, base / "data", base):
        if folder.is_dir() and any((folder / w).is_dir() for w in wnids):
            return (folder,)
    return None


def _read_wnid_folders(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    return read_class_folders(paths[0], options, classes=classes(split))


INFO = DATASETS.register(
    "miniimagenet",
    DatasetInfo(
        name="miniimagenet",
        display="miniImageNet",
        n_classes={"train": 64, "val": 16, "test": 20},
        image_size=84,
        eval_transform="metaoptnet-mini",
        folders=("miniImageNet", "mini-imagenet"),
        classes=classes,
        images_per_class=600,
        layouts=(
            Layout(
                "learn2learn-cache",
                "learn2learn/renmengye cache pickle",
                ("mini-imagenet-cache-{split}.pkl",),
                files_locator("mini-imagenet-cache-{split}.pkl", split_names={"val": ("validation", "val")}),
                _read_cache_pkl,
            ),
            Layout(
                "metaoptnet-pickle",
                "MetaOptNet pickle",
                ("miniImageNet_category_split_{split}.pickle (train: train_phase_train)",),
                files_locator(
                    "miniImageNet_category_split_{split}.pickle",
                    split_names={"train": ("train_phase_train",)},
                ),
                _read_category_pickle,
            ),
            Layout(
                "ravi-csv",
                "JPEG images + Ravi split CSV",
                ("{split}.csv", "images/*.jpg"),
                _locate_csv,
                _read_csv,
                decodes_files=True,
            ),
            Layout(
                "wnid-folders",
                "class folders named by wnid",
                ("{split}/<wnid>/*.jpg or data/<wnid>/*.jpg or <wnid>/*.jpg",),
                _locate_wnid_folders,
                _read_wnid_folders,
                decodes_files=True,
            ),
        ),
    ),
)
