"""CIFAR-FS (Bertinetto et al., ICLR 2019): 64 / 16 / 20 CIFAR-100 fine classes, 600 images each, 32x32.

Layouts, in order of preference:

* MetaOptNet ``CIFAR_FS_{split}.pickle`` / RFS ``CIFAR-FS/{split}.pickle``: labels are global fine ids;
* learn2learn ``cifarfs/processed/{split}/<class>/*.png``;
* Bertinetto / r2d2 ``cifar100/data/<class>/*.png`` + ``cifar100/splits/bertinetto/{split}.txt``;
* raw ``cifar-100-python/{train,test}`` (see :func:`~fewshot_bench.data.cifar100.prepare_cifar_benchmark`).

Class names are CIFAR-100 fine names (``apple``, ``aquarium_fish``, …).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import DATASETS, DatasetInfo, Layout, RawSplit, ReadOptions, read_class_folders, read_table
from .cifar100 import fine_id_layouts

__all__ = ["INFO", "classes"]


def classes(split: str) -> tuple[str, ...]:
    """Sorted fine class names of ``split`` (package table ``splits/cifar_fs.csv``)."""
    return tuple(sorted(r["class_name"] for r in read_table("cifar_fs.csv") if r["split"] == split))


def _locate_processed(base: Path, split: str) -> tuple[Path, ...] | None:
    folder = base / "processed" / split
    return (folder,) if folder.is_dir() else None


def _read_processed(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    return read_class_folders(paths[0], options)


def _locate_bertinetto(base: Path, split: str) -> tuple[Path, ...] | None:
    data, txt = base / "cifar100" / "data", base / "cifar100" / "splits" / "bertinetto" / f"{split}.txt"
    return (data, txt) if data.is_dir() and txt.is_file() else None


def _read_bertinetto(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    data, txt = paths
    wanted = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
    if not wanted:
        raise DataError(f"{txt}: class list is empty; download cifar100.zip again")
    return read_class_folders(data, options, classes=wanted, listed_in=txt)


_pickle, _rfs, _raw = fine_id_layouts("CIFAR_FS")

INFO = DATASETS.register(
    "cifar-fs",
    DatasetInfo(
        name="cifar-fs",
        display="CIFAR-FS",
        n_classes={"train": 64, "val": 16, "test": 20},
        image_size=32,
        eval_transform="metaoptnet-cifar",
        folders=("CIFAR-FS", "cifarfs"),
        classes=classes,
        images_per_class=600,
        layouts=(
            _pickle,
            _rfs,
            Layout(
                "learn2learn-folders",
                "learn2learn processed PNG folders",
                ("processed/{split}/<class>/*.png",),
                _locate_processed,
                _read_processed,
                decodes_files=True,
            ),
            Layout(
                "bertinetto-folders",
                "Bertinetto cifar100.zip PNG folders",
                ("cifar100/data/<class>/*.png", "cifar100/splits/bertinetto/{split}.txt"),
                _locate_bertinetto,
                _read_bertinetto,
                decodes_files=True,
            ),
            _raw,
        ),
    ),
)
