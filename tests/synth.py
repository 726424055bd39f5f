"""Tiny synthetic dataset files in every layout the loaders read (deterministic, a few images per class).

All CIFAR writers cut their pixels from one table, :func:`cifar_pixels`, so a split written in any
CIFAR layout holds identical pixels (and gives an identical fingerprint). ImageNet-style writers
use small images (``MINI_SIZE`` px); load them with ``image_size=MINI_SIZE`` where files are decoded.
Pickles are written like Python-2 files (protocol 2, ``numpy.core`` module names, array bytes as
latin-1 text) unless ``py2=False``.
"""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_bench.data import cifar_fs, fc100, miniimagenet, tieredimagenet
from fewshot_bench.data.base import read_table
from fewshot_bench.data.cifar100 import FINE_NAMES, FINE_TO_COARSE

MINI_SIZE = 8
CIFAR_PER_CLASS = 3
_SPLIT_MODULES = {"cifar-fs": cifar_fs, "fc100": fc100}


# ------------------------------------------------------------------------------------------ helpers
class _Py2Array:
    """Pickles like a numpy array written by Python 2 (raw bytes as a latin-1 string)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = np.ascontiguousarray(a)

    def __reduce__(self):
        a = self.a
        return (
            a.__reduce__()[0],
            (np.ndarray, (0,), b"b"),
            (1, a.shape, a.dtype, False, a.tobytes().decode("latin1")),
        )


def _py2ify(obj):
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return _Py2Array(obj)
    if isinstance(obj, dict):
        return {k: _py2ify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2ify(v) for v in obj]
    return obj


def write_pickle(path: Path, obj, *, py2: bool = True) -> Path:
    """Pickle ``obj`` to ``path``; ``py2`` mimics a Python-2 numpy pickle (loadable only with latin1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if py2:
        data = pickle.dumps(_py2ify(obj), protocol=2).replace(
            b"numpy._core.multiarray", b"numpy.core.multiarray"
        )
    else:
        data = pickle.dumps(obj, protocol=4)
    path.write_bytes(data)
    return path


def rng_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 random images."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _shuffled(n: int, seed: int | None) -> np.ndarray:
    return np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)


# -------------------------------------------------------------------------------------------- CIFAR
def cifar_pixels(per_class: int = CIFAR_PER_CLASS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All 100 classes: images (100*per_class, 32, 32, 3) uint8, fine ids (100*per_class,), class-grouped."""
    return rng_images(100 * per_class, 32, seed), np.repeat(np.arange(100), per_class)


def cifar_split(benchmark: str, split: str, *, shuffle: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of "cifar-fs" or "fc100": images, global fine ids; rows permuted by ``shuffle``."""
    images, fine = cifar_pixels()
    wanted = set(_SPLIT_MODULES[benchmark].classes(split))
    rows = np.flatnonzero([FINE_NAMES[f] in wanted for f in fine])
    rows = rows[_shuffled(len(rows), shuffle)]
    return images[rows], fine[rows]


def write_cifar_pickle(
    root: Path,
    benchmark: str = "cifar-fs",
    splits: Sequence[str] = ("test",),
    *,
    rfs: bool = False,
    shuffle: int | None = None,
    py2: bool = True,
) -> list[Path]:
    """``CIFAR_FS_{split}.pickle`` / ``FC100_{split}.pickle``, or with ``rfs`` ``<DIR>/{split}.pickle``."""
    out = []
    for split in splits:
        images, fine = cifar_split(benchmark, split, shuffle=shuffle)
        if rfs:
            path = root / {"cifar-fs": "CIFAR-FS", "fc100": "FC100"}[benchmark] / f"{split}.pickle"
        else:
            path = root / f"{ {'cifar-fs': 'CIFAR_FS', 'fc100': 'FC100'}[benchmark] }_{split}.pickle"
        out.append(write_pickle(path, {"data": images, "labels": fine.tolist()}, py2=py2))
    return out


def write_fc100_npz(root: Path, splits: Sequence[str] = ("test",)) -> list[Path]:
    """TADAM ``few-shot-{split}.npz`` with ``features`` and ``targets`` (global fine ids)."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split in splits:
        images, fine = cifar_split("fc100", split, shuffle=1)
        np.savez(root / f"few-shot-{split}.npz", features=images, targets=fine)
        out.append(root / f"few-shot-{split}.npz")
    return out


def write_cifarfs_folders(root: Path, style: str = "bertinetto", splits: Sequence[str] = ("test",)) -> Path:
    """``cifar100/data/<class>/*.png`` + ``cifar100/splits/bertinetto/*.txt`` (all 100 classes), or with
    ``style="learn2learn"`` ``cifarfs/processed/{split}/<class>/*.png``. Returns the folder written."""
    images, fine = cifar_pixels()
    if style == "bertinetto":
        base = root / "cifar100"
        for i, (img, f) in enumerate(zip(images, fine)):
            _save_image(base / "data" / FINE_NAMES[f] / f"img_{i:05d}.png", img)
        for split in ("train", "val", "test"):
            txt = base / "splits" / "bertinetto" / f"{split}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("".join(f"{c}\n" for c in cifar_fs.classes(split)[::-1]))
        return base
    base = root / "cifarfs" / "processed"
    for split in splits:
        imgs, fs = cifar_split("cifar-fs", split)
        for i, (img, f) in enumerate(zip(imgs, fs)):
            _save_image(base / split / FINE_NAMES[f] / f"{i:05d}.png", img)
    return base


def write_cifar100_raw(root: Path) -> Path:
    """``cifar-100-python/{train,test,meta}`` (Python-2 style); each class's first image is in test."""
    images, fine = cifar_pixels()
    base = root / "cifar-100-python"
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    is_test = np.tile(np.arange(CIFAR_PER_CLASS) == 0, 100)
    for part, rows in (("train", ~is_test), ("test", is_test)):
        write_pickle(
            base / part,
            {
                b"data": flat[rows],
                b"fine_labels": fine[rows].tolist(),
                b"coarse_labels": [FINE_TO_COARSE[f] for f in fine[rows]],
                b"filenames": [f"f{i}.png".encode() for i in np.flatnonzero(rows)],
            },
        )
    write_pickle(base / "meta", {b"fine_label_names": [n.encode() for n in FINE_NAMES]})
    return base


# ------------------------------------------------------------------------------------- miniImageNet
def mini_split(split: str, per_class: int = 2, seed: int = 10) -> tuple[np.ndarray, list[str]]:
    """(C*per_class, MINI_SIZE, MINI_SIZE, 3) images and their wnids for ``split``."""
    wnids = miniimagenet.classes(split)
    return rng_images(len(wnids) * per_class, MINI_SIZE, seed), [w for w in wnids for _ in range(per_class)]


def write_mini_cache(
    root: Path,
    split: str = "test",
    *,
    file_split: str | None = None,
    bytes_keys: bool = False,
    shuffle: int | None = None,
) -> Path:
    """learn2learn ``mini-imagenet-cache-{split}.pkl``: ``image_data`` + ``class_dict`` {wnid: rows}."""
    images, wnids = mini_split(split)
    order = _shuffled(len(wnids), shuffle)
    images, wnids = images[order], [wnids[i] for i in order]
    class_dict: dict = {}
    for i, w in enumerate(wnids):
        class_dict.setdefault(w.encode() if bytes_keys else w, []).append(i)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    path = root / f"mini-imagenet-cache-{file_split or split}.pkl"
    return write_pickle(path, {key("image_data"): images, key("class_dict"): class_dict})


def write_mini_metaoptnet(root: Path, split: str = "test", offset: int = 80) -> Path:
    """MetaOptNet ``miniImageNet_category_split_{...}.pickle`` with labels offset by ``offset``."""
    images, wnids = mini_split(split)
    cat = {w: offset + i for i, w in enumerate(miniimagenet.classes(split))}
    name = "train_phase_train" if split == "train" else split
    return write_pickle(
        root / f"miniImageNet_category_split_{name}.pickle",
        {"data": images, "labels": [cat[w] for w in wnids], "catname2label": cat},
    )


def write_mini_csv_images(root: Path, split: str = "test") -> Path:
    """``images/<wnid><8 digits>.jpg`` (PNG bytes named .png) + Ravi ``{split}.csv``; returns the CSV."""
    images, wnids = mini_split(split)
    rows = []
    for i, (img, w) in enumerate(zip(images, wnids)):
        name = f"{w}{i:08d}.png"
        _save_image(root / "images" / name, img)
        rows.append((name, w))
    with open(root / f"{split}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label"), *rows[::-1]])
    return root / f"{split}.csv"


def write_wnid_folders(root: Path, split: str = "test") -> Path:
    """``root/{split}/<wnid>/*.png``."""
    images, wnids = mini_split(split)
    for i, (img, w) in enumerate(zip(images, wnids)):
        _save_image(root / split / w / f"{i:04d}.png", img)
    return root / split


# ----------------------------------------------------------------------------------- tieredImageNet
def tiered_split(split: str, per_class: int = 1, seed: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Images and per-split labels 0..C-1 in a listdir-like (not CSV) class order."""
    n = len(tieredimagenet.classes(split))
    labels = np.repeat(np.random.default_rng(seed).permutation(n), per_class)
    return rng_images(len(labels), MINI_SIZE, seed), labels


def tiered_label_names(split: str, seed: int = 20) -> list[str]:
    """``label_specific_str``: WordNet names in the label order of :func:`tiered_split`."""
    rows = {r["wnid"]: r["name"] for r in read_table("tieredimagenet.csv") if r["split"] == split}
    wnids = tieredimagenet.classes(split)
    perm = np.random.default_rng(seed).permutation(len(wnids))
    names = [""] * len(wnids)
    for pos, label in enumerate(perm):
        names[label] = rows[wnids[pos]]
    return names


def write_tiered_png(root: Path, split: str = "test", *, names: bool = True) -> list[Path]:
    """renmengye ``tiered-imagenet/{split}_images_png.pkl`` + ``{split}_labels.pkl``."""
    images, labels = tiered_split(split)
    base = root / "tiered-imagenet"
    encoded = [np.frombuffer(png_bytes(img), dtype=np.uint8) for img in images]
    lab = {"label_specific": labels.astype(np.int32), "label_general": np.zeros(len(labels), np.int32)}
    if names:
        lab["label_specific_str"] = tiered_label_names(split)
        lab["label_general_str"] = ["category"]
    return [
        write_pickle(base / f"{split}_images_png.pkl", encoded),
        write_pickle(base / f"{split}_labels.pkl", lab),
    ]


def write_tiered_npz(root: Path, split: str = "test", offset: int = 448) -> list[Path]:
    """MetaOptNet ``{split}_images.npz`` (``images``) + ``{split}_labels.pkl`` (``labels``, offset)."""
    images, labels = tiered_split(split)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{split}_images.npz", images=images)
    return [
        root / f"{split}_images.npz",
        write_pickle(root / f"{split}_labels.pkl", {"labels": (labels + offset).tolist()}),
    ]


# ------------------------------------------------------------------------------------- image folders
FOLDER_CLASSES = ("cat", "dog", "emu")


def write_image_folder(root: Path, style: str = "split-folders", per_class: int = 3, size: int = 12) -> Path:
    """A user dataset: ``split-folders`` (``{train,val,test}/<class>/*``), ``csv`` (``{split}.csv`` +
    ``images/``) or ``class-folders`` (``<class>/*``). Mixed sizes and modes (RGB, L, RGBA)."""
    rng = np.random.default_rng(30)
    rows: dict[str, list[tuple[str, str]]] = {}
    for split in ("train", "val", "test") if style != "class-folders" else ("all",):
        for c in FOLDER_CLASSES:
            for k in range(per_class):
                img = rng.integers(0, 256, size=(size + k, size, 3), dtype=np.uint8)
                pil = Image.fromarray(img)
                pil = pil.convert(("RGB", "L", "RGBA")[k % 3])
                name = f"{c}_{split}_{k}.png"
                if style == "split-folders":
                    path = root / split / c / name
                elif style == "csv":
                    path = root / "images" / name
                    rows.setdefault(split, []).append((name, c))
                else:
                    path = root / c / name
                path.parent.mkdir(parents=True, exist_ok=True)
                pil.save(path)
    for split, r in rows.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *r])
    return root
