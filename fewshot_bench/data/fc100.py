"""FC100 (Oreshkin et al., NeurIPS 2018): CIFAR-100 split by superclass, 60 / 20 / 20 fine classes
from 12 / 4 / 4 superclasses, 600 images each, 32x32.

Layouts: MetaOptNet ``FC100_{split}.pickle``, RFS ``FC100/{split}.pickle``, TADAM
``few-shot-{split}.npz`` (``features`` (N,32,32,3) uint8, ``targets`` global fine ids) and raw
``cifar-100-python/``. Class names are CIFAR-100 fine names.
"""

from __future__ import annotations

from pathlib import Path

from .base import DATASETS, DatasetInfo, Layout, RawSplit, ReadOptions, files_locator, read_npz, read_table
from .cifar100 import FINE_NAMES, fine_id_layouts

__all__ = ["INFO", "classes", "superclasses"]


def classes(split: str) -> tuple[str, ...]:
    """Sorted fine class names of ``split`` (package table ``splits/fc100.csv``)."""
    return tuple(sorted(r["class_name"] for r in read_table("fc100.csv") if r["split"] == split))


def superclasses(split: str) -> tuple[str, ...]:
    """Sorted CIFAR-100 superclass names of ``split``."""
    return tuple(sorted({r["superclass"] for r in read_table("fc100.csv") if r["split"] == split}))


def _read_tadam_npz(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    """TADAM ``few-shot-{split}.npz``: ``features`` (N,32,32,3) uint8, ``targets`` global fine ids."""
    images, labels = read_npz(paths[0], "features", "targets", expected="TADAM's 'features' and 'targets'")
    return RawSplit(images=images, labels=labels, class_names=FINE_NAMES, file=paths[0])


_pickle, _rfs, _raw = fine_id_layouts("FC100")

INFO = DATASETS.register(
    "fc100",
    DatasetInfo(
        name="fc100",
        display="FC100",
        n_classes={"train": 60, "val": 20, "test": 20},
        image_size=32,
        eval_transform="metaoptnet-cifar",
        folders=("FC100", "FC-100"),
        classes=classes,
        images_per_class=600,
        layouts=(
            _pickle,
            _rfs,
            Layout(
                "tadam-npz",
                "TADAM npz",
                ("few-shot-{split}.npz",),
                files_locator("few-shot-{split}.npz"),
                _read_tadam_npz,
            ),
            _raw,
        ),
    ),
)
