"""The :class:`Split` type, dataset/layout descriptions, validation, canonical order, the array cache.

Every reader returns a :class:`RawSplit` (images, labels, class names as found on
disk). :func:`build_split` validates it in one place, puts the rows in canonical
order (label, SHA-1 of the image bytes, original position), fingerprints it, and
stores it once under ``<cache>/data/<dataset>/<split>-<key>/``; later loads
memory-map ``images.npy``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_dir, atomic_save_npy, atomic_write, atomic_write_json, cache_root, entry_lock
from ..errors import ConfigError, DataError
from ..registry import Registry

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetInfo",
    "Found",
    "Layout",
    "RawSplit",
    "ReadOptions",
    "Split",
    "build_split",
    "canonical_order",
    "decode_images",
    "files_locator",
    "fingerprint",
    "labels_from_names",
    "normalize_split",
    "pick",
    "read_class_folders",
    "read_csv_images",
    "read_npz",
    "read_table",
    "scan_class_folders",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_CACHE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------- types
@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset, rows in canonical order.

    ``images`` (N, H, W, 3) uint8 RGB, usually a read-only ``np.memmap``;
    ``labels`` (N,) int64 in 0..C-1 indexing the sorted ``class_names``.
    """

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    source: str

    @functools.cached_property
    def class_sizes(self) -> np.ndarray:
        """(C,) int64: images per class."""
        return np.bincount(np.asarray(self.labels), minlength=len(self.class_names)).astype(np.int64)

    @functools.cached_property
    def class_index(self) -> list[np.ndarray]:
        """C int64 arrays: the rows of class c in canonical order (position p = ``class_index[c][p]``)."""
        order = np.argsort(np.asarray(self.labels), kind="stable").astype(np.int64)
        return np.split(order, np.cumsum(self.class_sizes)[:-1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape))
        return (
            f"Split({self.dataset!r}, {self.split!r}, images={shape}, classes={len(self.class_names)}, "
            f"fingerprint={self.fingerprint[:12]}…)"
        )


@dataclass
class RawSplit:
    """What a reader found on disk, before validation and canonical ordering.

    ``images`` (N, H, W, 3) uint8; ``labels`` (N,) ints indexing ``class_names``
    (names may include classes with no image); ``file`` is named in error messages (``labels_file``
    in label errors, when set).
    ``check`` is ``"names"`` to compare the class names with the dataset's split
    table, ``"count"`` to compare only the number of classes (names unknown), or
    ``None`` (user datasets).
    """

    images: Any
    labels: Any
    class_names: Sequence[str]
    file: Path
    check: str | None = "names"
    labels_file: Path | None = None  # named in label errors when labels live in another file
    files: Sequence[Path] | None = None  # the image file of each row, for layouts of image files


@dataclass(frozen=True)
class ReadOptions:
    """Options a reader may use: ``image_size`` for decoded image files, ``progress`` bars."""

    dataset: DatasetInfo
    image_size: int
    progress: bool = True


Locator = Callable[[Path, str], "tuple[Path, ...] | None"]
Reader = Callable[["tuple[Path, ...]", str, ReadOptions], RawSplit]


@dataclass
class Layout:
    """One on-disk format of a dataset.

    ``locate(base, split)`` returns the paths of ``split`` under ``base`` or ``None``;
    ``read(paths, split, options)`` returns a :class:`RawSplit`. ``patterns`` (with
    ``{split}``) are quoted when nothing is found; ``decodes_files`` marks layouts
    whose images are decoded and resized to ``image_size`` (so it enters the cache
    key); ``warning`` is emitted on load unless ``channel_order`` is given.
    """

    name: str
    description: str
    patterns: tuple[str, ...]
    locate: Locator
    read: Reader
    decodes_files: bool = False
    warning: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its split table, native size, eval transform and layouts."""

    name: str
    display: str
    n_classes: dict[str, int] | None
    image_size: int | None
    eval_transform: str
    layouts: tuple[Layout, ...]
    folders: tuple[str, ...] = ()  # conventional subfolder names under --data-root
    images_per_class: int | None = None  # when fixed by the benchmark (600), else None
    classes: Callable[[str], tuple[str, ...]] | None = field(default=None, repr=False)

    def expected_classes(self, split: str) -> tuple[str, ...] | None:
        """Sorted class names of ``split`` from our package table, or ``None`` for user datasets."""
        return tuple(sorted(self.classes(split))) if self.classes else None


@dataclass(frozen=True)
class Found:
    """A layout found under a data root: ``paths`` maps each available split to its files."""

    layout: str
    paths: dict[str, tuple[Path, ...]]
    root: Path
    description: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self.paths)


DATASETS: Registry[DatasetInfo] = Registry("dataset", flag="--dataset")


def normalize_split(split: str) -> str:
    """``"validation"`` → ``"val"``; unknown names raise :class:`ConfigError`."""
    try:
        return _SPLIT_ALIASES[str(split).lower()]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; choose train, val or test") from None


# ------------------------------------------------------------------------------------- package data
@functools.cache
def read_table(name: str) -> tuple[dict[str, str], ...]:
    """Rows of the package CSV ``fewshot_bench/data/splits/<name>``."""
    text = resources.files(__package__).joinpath("splits", name).read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------------------------ reader helpers
def files_locator(*templates: str, split_names: dict[str, tuple[str, ...]] | None = None) -> Locator:
    """A locator that needs every ``template`` (``{split}`` filled with a file-side split name) as a file."""

    def locate(base: Path, split: str) -> tuple[Path, ...] | None:
        for name in (split_names or {}).get(split, (split,)):
            paths = tuple(base / t.format(split=name) for t in templates)
            if all(p.is_file() for p in paths):
                return paths
        return None

    return locate


def pick(d: Any, *names: str, file: Path, expected: str) -> Any:
    """``d[name]`` for the first of ``names`` present as str or bytes key; clear DataError otherwise."""
    if not isinstance(d, dict):
        raise DataError(f"{file}: holds a {type(d).__name__}, not a dict; expected {expected}")
    for name in names:
        for key in (name, name.encode()):
            if key in d:
                return d[key]
    found = (
        ", ".join(sorted(repr(k.decode("latin1") if isinstance(k, bytes) else k) for k in d)[:8]) or "none"
    )
    raise DataError(
        f"{file}: has no key {' or '.join(map(repr, names))} (keys: {found}); expected {expected}"
    )


def read_npz(path: Path, *keys: str, expected: str) -> list[np.ndarray]:
    """Arrays ``keys`` of an ``.npz`` (no pickles allowed); clear DataError for missing keys or bad files."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise DataError(f"{path}: is a .npy array, not an .npz archive; expected {expected}")
            for k in keys:
                if k not in z.files:
                    raise DataError(
                        f"{path}: has no key {k!r} (keys: {', '.join(z.files) or 'none'}); "
                        f"expected {expected}"
                    )
            return [z[k] for k in keys]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable .npz ({' '.join(str(exc).split())[:200]}); download it again"
        ) from None


def labels_from_names(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Per-image class names → ((N,) int64 labels, sorted unique names)."""
    uniq, inv = np.unique(np.asarray(list(names), dtype=object).astype(str), return_inverse=True)
    return inv.astype(np.int64).reshape(-1), [str(u) for u in uniq]


def scan_class_folders(folder: Path, classes: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """``folder/<class>/*.{png,jpg,...}`` → {class: sorted image paths}; only ``classes`` if given."""
    wanted = set(classes) if classes is not None else None
    out: dict[str, list[Path]] = {}
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(
            f"{folder}: cannot list folder ({exc.strerror or exc}); check its permissions"
        ) from None
    for sub in subdirs:
        if wanted is not None and sub.name not in wanted:
            continue
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if files:
            out[sub.name] = files
    return out


def read_class_folders(
    folder: Path, options: ReadOptions, *, classes: Sequence[str] | None = None, listed_in: Path | None = None
) -> RawSplit:
    """Decode ``folder/<class>/*.{png,jpg,...}`` → RawSplit named by folder; only ``classes`` when given.

    With ``classes``, every listed class must have a non-empty folder (``listed_in`` is quoted).
    """
    found = scan_class_folders(folder, classes)
    if not found:
        raise DataError(
            f"{folder}: no '<class>/*.png|jpg' image folders found; put one folder per class there"
        )
    if classes is not None and (missing := sorted(set(classes) - set(found))):
        raise DataError(
            f"{folder}: no images for {len(missing)} classes listed in {listed_in or 'the split table'} "
            f"(first: {missing[0]}); add their folders or extract the archive completely"
        )
    names = sorted(found)
    files = [f for c in names for f in found[c]]
    labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(found[c]) for c in names])
    images = decode_images(
        files,
        options.image_size,
        where=folder,
        progress=options.progress,
        desc=f"{options.dataset.name} images",
    )
    return RawSplit(images=images, labels=labels, class_names=names, file=folder, files=files)


def read_csv_images(csv_path: Path, image_dirs: Sequence[Path], options: ReadOptions) -> RawSplit:
    """Decode the images a ``filename,label`` CSV lists (under the first of ``image_dirs`` holding them)."""
    paths, names = _read_csv_listing(csv_path, image_dirs)
    labels, classes = labels_from_names(names)
    images = decode_images(
        paths,
        options.image_size,
        where=csv_path,
        progress=options.progress,
        desc=f"{options.dataset.name} images",
    )
    return RawSplit(images=images, labels=labels, class_names=classes, file=csv_path, files=paths)


def _read_csv_listing(csv_path: Path, image_dirs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """A ``filename,label`` CSV → (image paths, per-image labels), images under the first dir holding them."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{csv_path}: cannot read the split CSV ({exc}); expected 'filename,label' rows"
        ) from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["filename", "label"]:
        rows = rows[1:]
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows or any(len(r) < 2 for r in rows):
        raise DataError(
            f"{csv_path}: expected a header 'filename,label' and one 'image.jpg,class' row per image"
        )
    names = [r[0].strip() for r in rows]
    base = next((d for d in image_dirs if (d / names[0]).is_file()), image_dirs[0])
    paths = [base / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} of {len(paths)} listed images are missing (first: {missing[0]}); "
            f"put the images in {base}"
        )
    return paths, [r[1].strip() for r in rows]


def decode_images(
    items: Sequence[Path | bytes | np.ndarray],
    size: int,
    *,
    where: Path | str,
    progress: bool = True,
    desc: str = "decoding",
) -> np.ndarray:
    """Decode image files or encoded bytes into (N, size, size, 3) uint8 RGB, in a thread pool.

    Images not already ``size`` x ``size`` are resized with PIL (bilinear, antialiased, no crop);
    L/RGBA/P images are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError  # level 3 dependency, imported where needed

    out = np.empty((len(items), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        item = items[i]
        name = item if isinstance(item, Path) else f"{where}[{i}]"
        try:
            src = (
                item
                if isinstance(item, Path)
                else io.BytesIO(
                    np.asarray(item, dtype=np.uint8).tobytes() if not isinstance(item, bytes) else item
                )
            )
            with warnings.catch_warnings():  # the size check below replaces PIL's bomb warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(src)  # lazy: only the header is read here
            with im:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and im.width * im.height > limit:  # PIL only warns below 2x its limit
                    raise Image.DecompressionBombError(
                        f"{im.width}x{im.height} pixels is more than the {limit} allowed, a possible "
                        "decompression bomb"
                    )
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
                SyntaxError) as exc:
            raise DataError(
                f"{name}: cannot decode image ({' '.join(str(exc).split())}); replace or delete the file"
            ) from None

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in _progress(pool.map(work, range(len(items))), len(items), desc, progress):
            pass
    return out


def _progress(it: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled or total == 0:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False)


# ------------------------------------------------------------------- validation, order, fingerprint
def _validate(raw: RawSplit, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Check a reader's output; return (images, labels into sorted present names, sorted names)."""
    images = _check_images(raw, info, split)
    labels = _check_labels(raw, info, split, len(images))
    file = raw.labels_file or raw.file
    names = list(raw.class_names)
    present = np.unique(labels)
    present_names = [str(names[i]) for i in present]
    if len(set(present_names)) != len(present_names):
        raise DataError(f"{file}: two labels share one class name; check the file's class names")
    sorted_names = tuple(sorted(present_names))
    _check_classes(raw, info, split, sorted_names)
    rank = {n: i for i, n in enumerate(sorted_names)}
    lut = np.full(len(names), -1, dtype=np.int64)
    for i in present:
        lut[i] = rank[str(names[i])]
    return images, lut[labels], sorted_names


def _check_images(raw: RawSplit, info: DatasetInfo, split: str) -> np.ndarray:
    images = raw.images
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
    ):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DataError(
            f"{raw.file}: images have shape {shape} and dtype {dtype}; expected uint8 (N, H, W, 3) RGB "
            f"— check this is a {info.display} {split} file"
        )
    return images


def _check_labels(raw: RawSplit, info: DatasetInfo, split: str, n_images: int) -> np.ndarray:
    """``raw.labels`` as a 1-D integer array, one per image, each a class of ``raw.class_names``."""
    file = raw.labels_file or raw.file
    try:
        labels = np.asarray(raw.labels)
    except (ValueError, TypeError):
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(
            f"{file}: labels have shape {labels.shape} and dtype {labels.dtype}; expected one integer "
            f"per image — check this is a {info.display} {split} file"
        )
    if len(labels) != n_images:
        raise DataError(
            f"{file}: {len(labels)} labels for {n_images} images; the file is corrupt or "
            "incomplete — download it again"
        )
    if n_images == 0:
        raise DataError(f"{file}: holds no images; download it again")
    n_names = len(raw.class_names)
    bad = labels[(labels < 0) | (labels >= n_names)]
    if bad.size:
        raise DataError(
            f"{file}: label value {int(bad[0])} is not one of the {n_names} known classes "
            f"(0..{n_names - 1}); check this is a {info.display} {split} file"
        )
    return labels


def _check_classes(raw: RawSplit, info: DatasetInfo, split: str, sorted_names: tuple[str, ...]) -> None:
    """Compare the classes found with the split table: their names (``raw.check == "names"``) or number."""
    expected = info.expected_classes(split) if raw.check else None
    file = raw.labels_file or raw.file
    if expected is not None and raw.check == "names" and sorted_names != expected:
        extra = sorted(set(sorted_names) - set(expected))
        missing = sorted(set(expected) - set(sorted_names))
        raise DataError(
            f"{file}: classes do not match the {info.display} {split} split ({len(sorted_names)} found, "
            f"{len(expected)} expected; unexpected: {_few(extra)}; missing: {_few(missing)}); "
            f"check that this is the {split} file of {info.display}"
        )
    if expected is not None and raw.check == "count" and len(sorted_names) != len(expected):
        raise DataError(
            f"{file}: {len(sorted_names)} classes, but the {info.display} {split} split has "
            f"{len(expected)}; check that this is the {split} file of {info.display}"
        )


def _few(items: Sequence[str], n: int = 5) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def canonical_order(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (label, SHA-1 of the image bytes, position) → (order (N,) int64, digests (N,) S20)."""
    digests = np.array([hashlib.sha1(images[i].tobytes()).digest() for i in range(len(images))], dtype="S20")
    order = np.lexsort((np.arange(len(labels)), digests, labels)).astype(np.int64)
    return order, digests[order]


def fingerprint(
    class_names: Sequence[str], labels: np.ndarray, digests: np.ndarray, image_shape: Sequence[int]
) -> str:
    """sha256 over the image shape, the sorted class names and each class's sorted image SHA-1 digests.

    ``labels`` (N,) and ``digests`` (N,) must be in canonical order.
    """
    h = hashlib.sha256(b"fewshot-bench split v1\n")
    h.update(("x".join(map(str, image_shape)) + "\n").encode())
    counts = np.bincount(labels, minlength=len(class_names))
    start = 0
    for name, n in zip(class_names, counts):
        h.update(f"{name}\n{int(n)}\n".encode())
        h.update(np.sort(digests[start : start + n]).tobytes())
        start += n
    return h.hexdigest()


# ------------------------------------------------------------------------------------ array cache
def _stat_digest(paths: Sequence[Path]) -> list[Any]:
    """Resolved path, size and mtime of each file; a folder is summarised by a digest over its image files
    (hidden entries skipped, so a cache kept inside the data root does not change the key)."""
    out: list[Any] = []
    for p in paths:
        p = p.resolve()
        if p.is_dir():
            h = hashlib.sha256()
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)):
                    st = os.stat(os.path.join(dirpath, fn))
                    rel = os.path.relpath(os.path.join(dirpath, fn), p)
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            out.append([str(p), "dir", h.hexdigest()])
        else:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(
    info: DatasetInfo, split: str, layout: Layout, paths: Sequence[Path], options: dict[str, Any]
) -> str:
    """Hex key of a cache entry: dataset, split, layout, resolved paths with sizes and mtimes, options."""
    blob = json.dumps(
        {
            "v": _CACHE_FORMAT_VERSION,
            "dataset": info.name,
            "split": split,
            "layout": layout.name,
            "files": _stat_digest(paths),
            "options": options,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def build_split(
    info: DatasetInfo,
    split: str,
    layout: Layout,
    paths: tuple[Path, ...],
    *,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    progress: bool = True,
    channel_order: str | None = None,
) -> Split:
    """Load ``split`` from the cache, or read it with ``layout``, validate, order and cache it."""
    if channel_order not in (None, "rgb", "bgr"):
        raise ConfigError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
    if layout.warning and channel_order is None:
        warnings.warn(layout.warning, stacklevel=3)
    size = int(image_size or info.image_size or 84)
    if size <= 0:
        raise ConfigError(f"--image-size must be positive, not {size}")
    options: dict[str, Any] = {"channel_order": channel_order or "rgb"}
    if layout.decodes_files:
        options["image_size"] = size
    key = cache_key(info, split, layout, paths, options)
    entry = cache_root(cache_dir) / "data" / info.name / f"{split}-{key[:16]}"
    if (hit := _load_entry(entry)) is not None:
        return hit
    with entry_lock(entry):  # also removes the temporaries of a killed run
        if (hit := _load_entry(entry)) is not None:  # another process filled it meanwhile
            return hit
        raw = layout.read(paths, split, ReadOptions(dataset=info, image_size=size, progress=progress))
        images, labels, names = _validate(raw, info, split)
        if channel_order == "bgr":
            images = images[..., ::-1]
        order, digests = canonical_order(images, labels)
        labels = labels[order]
        meta = {
            "format": "fewshot-bench-split-cache",
            "format_version": _CACHE_FORMAT_VERSION,
            "dataset": info.name,
            "split": split,
            "layout": layout.name,
            "source": f"{layout.description}: {', '.join(str(p) for p in paths)}",
            "class_names": list(names),
            "n_images": int(len(labels)),
            "image_shape": list(images.shape[1:]),
            "fingerprint": fingerprint(names, labels, digests, images.shape[1:]),
            "options": options,
        }
        with atomic_dir(entry) as tmp:  # renamed into place complete; on any error nothing is left
            _write_images(tmp / "images.npy", images, order)
            atomic_save_npy(tmp / "labels.npy", labels.astype(np.int64))
            meta["images_bytes"] = (tmp / "images.npy").stat().st_size
            atomic_write_json(tmp / "meta.json", meta)
    hit = _load_entry(entry)
    if hit is None:  # pragma: no cover - only if the disk lies
        raise DataError(f"{entry}: the cache entry just written cannot be read back; check the disk")
    return hit


def _write_images(path: Path, images: np.ndarray, order: np.ndarray, chunk: int = 4096) -> None:
    """Save ``images[order]`` as .npy chunk by chunk (no second full copy in memory), atomically."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(order), *images.shape[1:]),
    }
    with atomic_write(path) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, len(order), chunk):
            f.write(np.ascontiguousarray(images[order[s : s + chunk]]).tobytes())


def _load_entry(entry: Path) -> Split | None:
    """The cached split in ``entry`` (images memory-mapped), or ``None`` if absent or damaged."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if (entry / "images.npy").stat().st_size != meta["images_bytes"]:
            raise ValueError("images.npy has the wrong size")
        images = np.load(entry / "images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(entry / "labels.npy", mmap_mode="r", allow_pickle=False)
        if images.shape != (meta["n_images"], *meta["image_shape"]) or labels.shape != (meta["n_images"],):
            raise ValueError("array shapes differ from meta.json")
        return Split(
            dataset=meta["dataset"],
            split=meta["split"],
            images=images,
            labels=labels,
            class_names=tuple(meta["class_names"]),
            fingerprint=meta["fingerprint"],
            source=meta["source"],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"{entry}: damaged cache entry ({exc}); rebuilding it", stacklevel=3)
        meta_path.unlink(missing_ok=True)
        return None
