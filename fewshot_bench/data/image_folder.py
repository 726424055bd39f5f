"""User datasets as image folders (dataset name ``image-folder``).

Layouts, in order of preference (``root`` is ``--data-root``):

* ``root/{train,val,test}/<class>/*.{png,jpg,jpeg}`` (``validation/`` also accepted);
* ``root/{split}.csv`` with ``filename,label`` rows, images under ``root/images/`` or ``root/``;
* ``root/<class>/*`` with no split information: every split is the whole folder (for evaluating on
  a folder of novel classes).

Images are resized to ``image_size`` (default 84) with PIL, no crop, and converted to RGB.
Class names are the folder names or CSV labels, sorted; no class table is checked.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    DATASETS,
    IMAGE_EXTENSIONS,
    DatasetInfo,
    Layout,
    RawSplit,
    ReadOptions,
    read_class_folders,
    read_csv_images,
)

__all__ = ["INFO"]


def _has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` has a subfolder holding at least one image file."""
    if not folder.is_dir():
        return False
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir()):
                return True
    return False


def _locate_split_folders(base: Path, split: str) -> tuple[Path, ...] | None:
    for name in (split, "validation") if split == "val" else (split,):
        if _has_class_folders(base / name):
            return (base / name,)
    return None


def _locate_csv(base: Path, split: str) -> tuple[Path, ...] | None:
    return (base / f"{split}.csv",) if (base / f"{split}.csv").is_file() else None


def _locate_class_folders(base: Path, split: str) -> tuple[Path, ...] | None:
    if any((base / s).is_dir() for s in ("train", "val", "validation", "test")):
        return None  # a split layout that lacks this split; do not silently use everything
    return (base,) if _has_class_folders(base) else None


def _read_folders(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    return read_class_folders(paths[0], options)


def _read_csv(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    return read_csv_images(paths[0], [paths[0].parent / "images", paths[0].parent], options)


INFO = DATASETS.register(
    "image-folder",
    DatasetInfo(
        name="image-folder",
        display="image folder",
        n_classes=None,
        image_size=84,
        eval_transform="imagenet-84",
        layouts=(
            Layout(
                "split-folders",
                "per-split class folders",
                ("{split}/<class>/*.jpg",),
                _locate_split_folders,
                _read_folders,
                decodes_files=True,
            ),
            Layout(
                "split-csv",
                "split CSV (filename,label)",
                ("{split}.csv", "images/*.jpg"),
                _locate_csv,
                _read_csv,
                decodes_files=True,
            ),
            Layout(
                "class-folders",
                "class folders (whole folder = every split)",
                ("<class>/*.jpg",),
                _locate_class_folders,
                _read_folders,
                decodes_files=True,
            ),
        ),
    ),
)
