"""tieredImageNet (Ren et al., ICLR 2018): 351 / 97 / 160 ImageNet classes from 20 / 6 / 8
categories, all ILSVRC train images of each class (about 1,300), 84x84.

Layouts:

* renmengye / learn2learn ``{split}_images_png.pkl`` (list of PNG-encoded uint8 arrays, decoded once
  with PIL in a thread pool) + ``{split}_labels.pkl`` (``label_specific`` per-split ids,
  ``label_specific_str`` class names);
* MetaOptNet ``{split}_images.npz`` (key ``images`` (N,84,84,3) uint8) + ``{split}_labels.pkl``
  (key ``labels``; values disjoint across splits).

Class names: a ``label_specific_str`` name is mapped to its wnid through our split table when it
matches one class of the split (full WordNet name, or its first synonym), else kept as is; files
with no names (MetaOptNet) get ``class_<label>`` (zero-padded to 3 digits, so sorting keeps label
order), and then only the number of classes is checked.

Colour: the ``*_images.npz`` arrays were decompressed with cv2 and are BGR (MetaOptNet, RFS and
FEAT train on them unflipped; Meta-Baseline flips). ``load_split(..., channel_order="bgr")`` flips
them to RGB; ``"rgb"`` keeps them as stored and silences the warning.
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
    decode_images,
    files_locator,
    pick,
    read_npz,
    read_table,
)

__all__ = ["INFO", "categories", "classes", "wnid_for_name"]

BGR_WARNING = (
    "tieredImageNet *_images.npz arrays are usually BGR (decompressed with cv2); they are used as stored, "
    "pass channel_order='bgr' to flip them to RGB or 'rgb' to silence this warning"
)


def classes(split: str) -> tuple[str, ...]:
    """Sorted wnids of ``split`` (package table ``splits/tieredimagenet.csv``)."""
    return tuple(sorted(r["wnid"] for r in read_table("tieredimagenet.csv") if r["split"] == split))


def categories(split: str) -> tuple[str, ...]:
    """Sorted category wnids of ``split``."""
    return tuple(
        sorted({r["category_wnid"] for r in read_table("tieredimagenet.csv") if r["split"] == split})
    )


def wnid_for_name(split: str, name: str) -> str | None:
    """The wnid of the ``split`` class whose WordNet name (or first synonym) is ``name``, if exactly one."""
    rows = [r for r in read_table("tieredimagenet.csv") if r["split"] == split]
    for key in (lambda r: r["name"], lambda r: r["name"].split(",")[0].strip()):
        hits = [r["wnid"] for r in rows if key(r) == name.strip()]
        if len(hits) == 1:
            return hits[0]
    return None


def _labels(path: Path, split: str) -> tuple[np.ndarray, list[str], str]:
    """A labels pickle → ((N,) labels indexing names, names, check mode)."""
    expected = "'label_specific' (renmengye) or 'labels' (MetaOptNet)"
    d = safe_load(path)
    raw = np.asarray(pick(d, "label_specific", "labels", file=path, expected=expected))
    strs = d.get("label_specific_str", d.get(b"label_specific_str")) if isinstance(d, dict) else None
    if raw.ndim != 1 or raw.dtype.kind not in "iu":
        return raw, [], "names"  # rejected with the shape and dtype by the shared validation
    if strs is not None:
        names = [s.decode("latin1") if isinstance(s, bytes) else str(s) for s in strs]
        wnids = [wnid_for_name(split, n) for n in names]
        if all(wnids) and len(set(wnids)) == len(wnids):
            return raw, list(wnids), "names"
        return raw, names, "count"
    values = np.unique(raw)
    return np.searchsorted(values, raw), [f"class_{int(v):03d}" for v in values], "count"


def _read_png_pkl(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    images_path, labels_path = paths
    encoded = safe_load(images_path)
    if isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8 and encoded.ndim == 4:
        images = encoded  # already decoded
    elif isinstance(encoded, (list, tuple)) or (isinstance(encoded, np.ndarray) and encoded.dtype == object):
        images = decode_images(
            list(encoded),
            options.image_size,
            where=images_path,
            progress=options.progress,
            desc=f"tieredimagenet {split} PNGs",
        )
    else:
        raise DataError(
            f"{images_path}: holds a {type(encoded).__name__}; expected a list of PNG-encoded "
            "uint8 arrays (renmengye's *_images_png.pkl)"
        )
    labels, names, check = _labels(labels_path, split)
    return RawSplit(
        images=images,
        labels=labels,
        class_names=names,
        file=images_path,
        check=check,
        labels_file=labels_path,
    )


def _read_npz(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    images_path, labels_path = paths
    (images,) = read_npz(images_path, "images", expected="MetaOptNet's 'images' (N, 84, 84, 3) uint8")
    labels, names, check = _labels(labels_path, split)
    return RawSplit(
        images=images,
        labels=labels,
        class_names=names,
        file=images_path,
        check=check,
        labels_file=labels_path,
    )


INFO = DATASETS.register(
    "tieredimagenet",
    DatasetInfo(
        name="tieredimagenet",
        display="tieredImageNet",
        n_classes={"train": 351, "val": 97, "test": 160},
        image_size=84,
        eval_transform="metaoptnet-mini",
        folders=("tiered-imagenet", "tieredImageNet"),
        classes=classes,
        layouts=(
            Layout(
                "renmengye-png-pkl",
                "renmengye/learn2learn PNG pickles",
                ("{split}_images_png.pkl", "{split}_labels.pkl"),
                files_locator("{split}_images_png.pkl", "{split}_labels.pkl"),
                _read_png_pkl,
                decodes_files=True,
            ),
            Layout(
                "metaoptnet-npz",
                "MetaOptNet npz",
                ("{split}_images.npz", "{split}_labels.pkl"),
                files_locator("{split}_images.npz", "{split}_labels.pkl"),
                _read_npz,
                warning=BGR_WARNING,
            ),
        ),
    ),
)
