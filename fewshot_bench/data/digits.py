"""scikit-learn's handwritten digits (UCI optdigits test set): the demo's real, bundled data.

1,797 grayscale 8x8 images (values 0..16) of the digits 0-9, about 180 per class, shipped
inside scikit-learn, so the whole flow runs on a fresh machine with no download.
Split for few-shot use: **train** = base digits 0-4, **test** = novel digits 5-9 (no val).
Images are scaled to 0..255 and upsampled 2x (nearest) to 16x16 RGB uint8.
``--data-root`` is ignored: the file is found inside the installed scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DATASETS, DatasetInfo, Layout, RawSplit, ReadOptions

__all__ = ["BASE_DIGITS", "INFO", "NOVEL_DIGITS", "digits_file", "load_digits_split"]

BASE_DIGITS = (0, 1, 2, 3, 4)
NOVEL_DIGITS = (5, 6, 7, 8, 9)
_SPLITS = {"train": BASE_DIGITS, "test": NOVEL_DIGITS}
UPSAMPLE = 2


def digits_file() -> Path:
    """The ``digits.csv.gz`` bundled with scikit-learn."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def _locate(base: Path, split: str) -> tuple[Path, ...] | None:
    path = digits_file()
    return (path,) if split in _SPLITS and path.is_file() else None


def _read(paths: tuple[Path, ...], split: str, options: ReadOptions) -> RawSplit:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = np.isin(bunch.target, _SPLITS[split])
    x = np.round(bunch.images[keep] * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    x = x.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    images = np.repeat(x[..., None], 3, axis=3)  # (N, 16, 16, 3)
    names = [f"digit{d}" for d in range(10)]
    return RawSplit(images=images, labels=bunch.target[keep], class_names=names, file=paths[0], check=None)


INFO = DATASETS.register(
    "digits",
    DatasetInfo(
        name="digits",
        display="Digits",
        n_classes={"train": len(BASE_DIGITS), "test": len(NOVEL_DIGITS)},
        image_size=8 * UPSAMPLE,
        eval_transform="unit",
        layouts=(Layout("sklearn-digits", "scikit-learn's bundled digits", ("sklearn/datasets/data/digits.csv.gz",),
                        _locate, _read),),
        classes=lambda split: tuple(f"digit{d}" for d in _SPLITS.get(split, ())),
    ),
)


def load_digits_split(split: str, *, cache_dir=None, progress: bool = False):
    """The digits ``Split`` for ``split`` ("train" = base digits, "test" = novel digits)."""
    from .base import build_split, normalize_split

    split = normalize_split(split)
    paths = _locate(Path("."), split)
    if paths is None:
        from ..errors import DataError

        raise DataError(f"digits has no {split} split (train = digits 0-4, test = digits 5-9)")
    return build_split(INFO, split, INFO.layouts[0], paths, cache_dir=cache_dir, progress=progress)
