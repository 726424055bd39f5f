"""Fixed few-shot episodes: a vectorised seeded sampler, a byte-stable file format, lists in and out.

An episode set is drawn from the *class structure* of a split alone (class names and
class sizes), never from pixels, so the canonical sets of benchmarks whose structure
is known can be shipped without the data. A sample is addressed as
``(class, position)``: ``position`` indexes the class's rows in the split's canonical
order (see :mod:`fewshot_bench.data`), which does not depend on file order on disk.

File format (``*.episodes.zip``): a zip with fixed timestamps holding ``meta.json``
(spec, seed, dataset, split, class names and sizes, fingerprints) and three ``.npy``
members: ``classes`` (E, N), ``support`` (E, N, K), ``query`` (E, N, Q), all int32.
The same spec, seed and structure give byte-identical files.

**Identity.** A set belongs to one dataset: its name, split and either the data's content
fingerprint (a set drawn from, or imported for, a copy of the data) or, for a set drawn
from the class structure alone (the shipped canonical sets), the structure hash. File
names carry it (:func:`default_filename`)::

    <dataset>_<split>_data-<fingerprint[:12]>_<N>w<K>s<Q>q_<E>ep_seed<S>.episodes.zip
    <dataset>_<split>_classes-<structure[:12]>_<N>w<K>s<Q>q_<E>ep_seed<S>.episodes.zip

so two image folders, or two copies of a benchmark with different class sizes, never
share a file name. :meth:`EpisodeSet.save` refuses to replace a file that holds other
episodes unless ``force``.

**Shipped sets** live in the package (``fewshot_bench/episode_files/``, package data) and
are found through :mod:`importlib.resources` (:func:`shipped_folder`), so they work from
an installed wheel, whatever the working directory.

**Episode lists** (:func:`read_episode_list`, :func:`episodes_from_list`,
:func:`export_episode_list`) are the text form for exchanging sets with other code or
papers: a CSV with one row per sample (``episode,role,class,file`` or
``episode,role,class,position``) or a JSON with one object per episode
(``{"classes": [...], "support": [[...], ...], "query": [[...], ...]}``). Samples are
given by file name (resolved by a callback, see :func:`fewshot_bench.data.split_files`)
or by ``(class, position)`` index. Within an episode, classes take the episode labels
``0..N-1`` in order of first appearance.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._io import atomic_write_bytes, sha256_file
from .errors import EpisodeError

__all__ = [
    "EpisodeSet",
    "EpisodeSpec",
    "FORMAT_VERSION",
    "LIST_FORMAT",
    "ListEntry",
    "SHIPPED_FOLDER",
    "check_feasible",
    "data_identity",
    "default_filename",
    "episodes_from_list",
    "export_episode_list",
    "find_episode_file",
    "read_episode_list",
    "resolve_episode_set",
    "sample_episodes",
    "shipped_folder",
    "structure_hash",
    "structure_identity",
]

FORMAT_VERSION = 1
_FORMAT = "fewshot-bench-episodes"
LIST_FORMAT = "fewshot-bench-episode-list"
SHIPPED_FOLDER = "episode_files"  # package data folder of fewshot_bench holding the shipped sets
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_MAX_UNPACKED = 1 << 30  # bytes; 3,000 5-way 5-shot 15-query episodes take 1.2 MB
_CHUNK = 128  # episodes per sampling chunk; part of the sampling algorithm, do not change
_ID_CHARS = 12  # hex characters of a fingerprint / structure hash in file names


class SplitLike(Protocol):
    dataset: str
    split: str
    class_names: tuple[str, ...]
    fingerprint: str

    @property
    def class_sizes(self) -> np.ndarray: ...

    @property
    def class_index(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class EpisodeSpec:
    """N-way K-shot episodes with Q queries per class; ``n_episodes`` tasks from ``seed``."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    n_episodes: int = 3000
    seed: int = 0

    def __post_init__(self) -> None:
        for flag, value in (("--ways", self.ways), ("--shots", self.shots), ("--queries", self.queries),
                            ("--episodes", self.n_episodes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise EpisodeError(f"{flag} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise EpisodeError(f"--seed must be a non-negative integer, got {self.seed!r}")

    @property
    def tag(self) -> str:
        """Short name, e.g. ``5w1s15q_3000ep_seed0``."""
        return f"{self.ways}w{self.shots}s{self.queries}q_{self.n_episodes}ep_seed{self.seed}"


def check_feasible(spec: EpisodeSpec, class_sizes: np.ndarray, class_names=None, where: str = "the data") -> None:
    """Raise :class:`EpisodeError`, quoting the numbers, if ``spec`` cannot be drawn."""
    sizes = np.asarray(class_sizes)
    if spec.ways > len(sizes):
        raise EpisodeError(f"--ways {spec.ways} is more than the {len(sizes)} classes in {where}; "
                           f"use --ways {len(sizes)} or fewer")
    need = spec.shots + spec.queries
    smallest = int(sizes.min())
    if need > smallest:
        name = f" ({class_names[int(sizes.argmin())]!s})" if class_names is not None else ""
        raise EpisodeError(
            f"--shots {spec.shots} + --queries {spec.queries} = {need} images per class, but the smallest "
            f"class in {where}{name} has {smallest}; lower --shots/--queries to at most {smallest} in total")


def sample_episodes(spec: EpisodeSpec, class_sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``spec.n_episodes`` episodes from classes of the given sizes.

    Classes of an episode are distinct; its K support and Q query positions per class
    are distinct within the class. Vectorised: random keys are sorted, chunk by chunk.

    Returns
    -------
    classes : (E, N) int32 class ids in ``0..C-1``; episode label ``n`` is ``classes[:, n]``.
    support : (E, N, K) int32 positions within each class's canonical order.
    query : (E, N, Q) int32 positions, disjoint from the support ones.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    check_feasible(spec, sizes)
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    E, N, K, Q = spec.n_episodes, spec.ways, spec.shots, spec.queries
    C, S = len(sizes), int(sizes.max())
    classes = np.empty((E, N), dtype=np.int32)
    positions = np.empty((E, N, K + Q), dtype=np.int32)
    arange_s = np.arange(S)
    for start in range(0, E, _CHUNK):
        stop = min(start + _CHUNK, E)
        cls = np.argsort(rng.random((stop - start, C)), axis=1, kind="stable")[:, :N]
        keys = rng.random((stop - start, N, S))
        keys[arange_s >= sizes[cls][..., None]] = np.inf  # positions beyond the class size never win
        classes[start:stop] = cls
        positions[start:stop] = np.argsort(keys, axis=2, kind="stable")[..., : K + Q]
    return classes, np.ascontiguousarray(positions[..., :K]), np.ascontiguousarray(positions[..., K:])


def structure_hash(class_names, class_sizes) -> str:
    """SHA-256 of the class names and sizes: what an episode file needs to stay valid."""
    payload = json.dumps([list(map(str, class_names)), [int(s) for s in class_sizes]])
    return hashlib.sha256(payload.encode()).hexdigest()


def data_identity(fingerprint: str) -> str:
    """File-name identity of a set bound to data: ``data-<fingerprint[:12]>``."""
    return f"data-{fingerprint[:_ID_CHARS]}"


def structure_identity(class_names, class_sizes) -> str:
    """File-name identity of a set drawn from the class structure alone: ``classes-<structure[:12]>``."""
    return f"classes-{structure_hash(class_names, class_sizes)[:_ID_CHARS]}"


def default_filename(dataset: str, split: str, spec: EpisodeSpec, identity: str) -> str:
    """``<dataset>_<split>_<identity>_<N>w<K>s<Q>q_<E>ep_seed<S>.episodes.zip``.

    ``identity`` is :func:`data_identity` or :func:`structure_identity` (:attr:`EpisodeSet.identity`).
    """
    if not identity or "/" in identity or "_" in identity:
        raise EpisodeError(f"episode file identity {identity!r} must be data-<hex> or classes-<hex>")
    return f"{dataset}_{split}_{identity}_{spec.tag}.episodes.zip"


def shipped_folder():
    """The package folder of the shipped episode files (a :class:`importlib.resources` Traversable)."""
    return resources.files("fewshot_bench").joinpath(SHIPPED_FOLDER)


@dataclass(frozen=True, eq=False)
class EpisodeSet:
    """A fixed set of episodes over one split, as stored in an episode file.

    ``origin`` is ``None`` for a set drawn by :func:`sample_episodes`; an imported set records
    where it came from (``{"file", "sha256", "by"}``) and has no seed.
    """

    spec: EpisodeSpec
    dataset: str
    split: str
    class_names: tuple[str, ...]
    class_sizes: tuple[int, ...]
    classes: np.ndarray = field(repr=False)  # (E, N)
    support: np.ndarray = field(repr=False)  # (E, N, K)
    query: np.ndarray = field(repr=False)  # (E, N, Q)
    data_fingerprint: str | None = None
    path: Any = None  # Path, or an importlib.resources Traversable for a shipped file
    origin: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def draw(cls, spec: EpisodeSpec, *, dataset: str, split: str, class_names, class_sizes,
             data_fingerprint: str | None = None) -> EpisodeSet:
        """Sample a new set from a class structure (and record the data fingerprint, if any)."""
        names = tuple(map(str, class_names))
        sizes = tuple(int(s) for s in class_sizes)
        if len(names) != len(sizes):
            raise EpisodeError(f"{len(names)} class names but {len(sizes)} class sizes")
        check_feasible(spec, np.asarray(sizes), names, where=f"{dataset}/{split}")
        classes, support, query = sample_episodes(spec, sizes)
        return cls(spec, dataset, split, names, sizes, classes, support, query, data_fingerprint)

    @classmethod
    def from_split(cls, spec: EpisodeSpec, split: SplitLike) -> EpisodeSet:
        """Sample from a loaded split; the file will be bound to its content fingerprint."""
        return cls.draw(spec, dataset=split.dataset, split=split.split, class_names=split.class_names,
                        class_sizes=split.class_sizes, data_fingerprint=split.fingerprint)

    # ------------------------------------------------------------------ properties
    @property
    def structure(self) -> str:
        return structure_hash(self.class_names, self.class_sizes)

    @property
    def identity(self) -> str:
        """``data-<fingerprint[:12]>`` when bound to data, else ``classes-<structure[:12]>``."""
        if self.data_fingerprint is not None:
            return data_identity(self.data_fingerprint)
        return structure_identity(self.class_names, self.class_sizes)

    @property
    def filename(self) -> str:
        """:func:`default_filename` of this set (the name ``eval`` looks for)."""
        return default_filename(self.dataset, self.split, self.spec, self.identity)

    @property
    def support_labels(self) -> np.ndarray:
        """(N*K,) int64 episode labels of the support rows: ``0..0, 1..1, ...``."""
        return np.repeat(np.arange(self.spec.ways, dtype=np.int64), self.spec.shots)

    @property
    def query_labels(self) -> np.ndarray:
        """(N*Q,) int64 episode labels of the query rows."""
        return np.repeat(np.arange(self.spec.ways, dtype=np.int64), self.spec.queries)

    def meta(self) -> dict[str, Any]:
        meta = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "split": self.split,
            "ways": self.spec.ways,
            "shots": self.spec.shots,
            "queries": self.spec.queries,
            "n_episodes": self.spec.n_episodes,
            "seed": self.spec.seed,
            "sampler": "numpy PCG64; argsort of uniform keys; chunk 128",
            "class_names": list(self.class_names),
            "class_sizes": list(self.class_sizes),
            "structure_sha256": self.structure,
            "data_fingerprint": self.data_fingerprint,
            "addressing": "(class, position): position indexes the class's rows in the split's canonical "
                          "order (sorted by SHA-1 of image bytes); classes in sorted class-name order",
        }
        if self.origin is not None:  # drawn sets keep their exact bytes; imported ones say where from
            meta.update(seed=None, sampler="imported from an episode list", origin=dict(self.origin))
        return meta

    # ------------------------------------------------------------------ binding to data
    def _where(self) -> str:
        return f"episode file {self.path}" if self.path else "the episode set"

    def check_compatible(self, split: SplitLike) -> None:
        """Refuse a split that is not the data this set was drawn from."""
        where = self._where()
        hint = "; regenerate it with `fewshot-bench episodes --force` or pass the matching --data-root"
        if (split.dataset, split.split) != (self.dataset, self.split):
            raise EpisodeError(f"{where} is for {self.dataset}/{self.split}, not {split.dataset}/{split.split}{hint}")
        names = tuple(split.class_names)
        if names != self.class_names:
            diff = sorted(set(names) ^ set(self.class_names))[:3]
            raise EpisodeError(f"{where} was drawn from {len(self.class_names)} classes but the data has "
                               f"{len(names)} different ones (e.g. {', '.join(diff)}){hint}")
        sizes = tuple(int(s) for s in split.class_sizes)
        if sizes != self.class_sizes:
            bad = next(i for i, (a, b) in enumerate(zip(sizes, self.class_sizes)) if a != b)
            raise EpisodeError(f"{where} expects {self.class_sizes[bad]} images of class {names[bad]} "
                               f"but the data has {sizes[bad]}{hint}")
        if self.data_fingerprint is not None and self.data_fingerprint != split.fingerprint:
            raise EpisodeError(f"{where} was drawn from data with fingerprint {self.data_fingerprint[:12]} "
                               f"but {split.source} has {split.fingerprint[:12]}{hint}")

    def indices(self, split: SplitLike) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``split`` for every episode: support (E, N*K) and query (E, N*Q), int64."""
        self.check_compatible(split)
        index = split.class_index
        offsets = np.concatenate([[0], np.cumsum([len(ix) for ix in index])])
        order = np.concatenate(index).astype(np.int64)
        base = offsets[self.classes][..., None]  # (E, N, 1)
        E = self.spec.n_episodes
        return order[base + self.support].reshape(E, -1), order[base + self.query].reshape(E, -1)

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            members = {"meta.json": (json.dumps(self.meta(), indent=1, sort_keys=True) + "\n").encode()}
            for name in ("classes", "support", "query"):
                arr = io.BytesIO()
                np.lib.format.write_array(arr, np.ascontiguousarray(getattr(self, name), dtype="<i4"),
                                          allow_pickle=False)
                members[f"{name}.npy"] = arr.getvalue()
            for name, data in members.items():
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data, compresslevel=6)
        return buf.getvalue()

    def save(self, path: str | Path, *, force: bool = False, flag: str = "--force") -> Path:
        """Write the set atomically; returns the path.

        An existing file holding the same bytes is left as it is; one holding anything else is
        replaced only with ``force`` (else :class:`EpisodeError`, naming ``flag``).
        """
        path = Path(path)
        data = self.to_bytes()
        if path.exists() and not force:
            if path.is_file() and path.read_bytes() == data:
                return path
            what = "is a folder" if path.is_dir() else "already exists and holds other episodes"
            raise EpisodeError(f"{path} {what}; add {flag} to replace it, or choose another file name")
        atomic_write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: Any) -> EpisodeSet:
        """Read and validate an episode file (shapes, index ranges, format version).

        ``path`` is a path or an :mod:`importlib.resources` Traversable (a shipped file).
        """
        path = Path(path) if isinstance(path, str) else path
        if not path.is_file():
            raise EpisodeError(f"episode file {path} does not exist; create it with `fewshot-bench episodes`")
        try:
            source = path if isinstance(path, Path) else io.BytesIO(path.read_bytes())
            with zipfile.ZipFile(source) as zf:
                unpacked = sum(info.file_size for info in zf.infolist())
                if unpacked > _MAX_UNPACKED:  # a zip bomb, or no episode file of ours
                    raise ValueError(f"members unpack to {unpacked} bytes, over the {_MAX_UNPACKED} allowed")
                meta = json.loads(zf.read("meta.json"))
                arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(f"{n}.npy")), allow_pickle=False)
                          for n in ("classes", "support", "query")}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            raise EpisodeError(f"episode file {path} is damaged or not an episode file ({exc}); "
                               f"regenerate it with `fewshot-bench episodes`") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("format_version") != FORMAT_VERSION:
            got = meta if not isinstance(meta, dict) else meta.get("format")
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise EpisodeError(f"episode file {path} has format {got!r} version "
                               f"{version!r}, expected {_FORMAT} {FORMAT_VERSION}; regenerate it")
        origin = meta.get("origin")
        try:
            seed = 0 if origin is not None and meta["seed"] is None else meta["seed"]
            spec = EpisodeSpec(meta["ways"], meta["shots"], meta["queries"], meta["n_episodes"], seed)
            names, sizes = tuple(meta["class_names"]), tuple(int(s) for s in meta["class_sizes"])
            dataset, split = meta["dataset"], meta["split"]
        except KeyError as exc:
            raise EpisodeError(f"episode file {path} lacks {exc} in meta.json; regenerate it") from None
        except (TypeError, ValueError, EpisodeError) as exc:  # EpisodeSpec's own message names a flag, not the file
            raise EpisodeError(f"episode file {path} has an invalid meta.json ({exc}); regenerate it") from None
        eps = cls(spec, dataset, split, names, sizes, arrays["classes"].astype(np.int64),
                  arrays["support"].astype(np.int64), arrays["query"].astype(np.int64),
                  meta.get("data_fingerprint"), path, origin)
        eps._validate()
        return eps

    def _validate(self) -> None:
        E, N, K, Q = self.spec.n_episodes, self.spec.ways, self.spec.shots, self.spec.queries
        where = self._where()
        for name, shape in (("classes", (E, N)), ("support", (E, N, K)), ("query", (E, N, Q))):
            if getattr(self, name).shape != shape:
                raise EpisodeError(f"{where}: {name} has shape {getattr(self, name).shape}, expected {shape}; "
                                   "regenerate it")
        C = len(self.class_names)
        if self.classes.size and (self.classes.min() < 0 or self.classes.max() >= C):
            raise EpisodeError(f"{where}: class ids outside 0..{C - 1}; the file is corrupt, regenerate it")
        limit = np.asarray(self.class_sizes)[self.classes][..., None]
        for name in ("support", "query"):
            pos = getattr(self, name)
            if (pos < 0).any() or (pos >= limit).any():
                raise EpisodeError(f"{where}: {name} positions out of range for their class sizes; "
                                   "the file is corrupt, regenerate it")

    def sha256(self) -> str:
        """Hash of the file this set was loaded from, else of its serialised bytes."""
        if isinstance(self.path, Path) and self.path.is_file():
            return sha256_file(self.path)
        if self.path is not None and self.path.is_file():
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        return hashlib.sha256(self.to_bytes()).hexdigest()


def find_episode_file(spec: EpisodeSpec, split: SplitLike, directory: str | Path | None) -> Any:
    """The episode file ``eval`` uses for ``spec`` on ``split``, or ``None``.

    Looks for the structure-identity name (a set drawn from the class structure, such as the
    shipped canonical ones) and then the data-identity name, first in ``directory``, then among the
    shipped files of the package (:func:`shipped_folder`).
    """
    names = [default_filename(split.dataset, split.split, spec,
                              structure_identity(split.class_names, split.class_sizes)),
             default_filename(split.dataset, split.split, spec, data_identity(split.fingerprint))]
    folders = ([Path(directory)] if directory is not None else []) + [shipped_folder()]
    for folder in folders:
        for name in names:
            candidate = folder.joinpath(name)
            if candidate.is_file():
                return candidate
    return None


def resolve_episode_set(spec: EpisodeSpec, split: SplitLike, directory: str | Path, *,
                        create: bool = True) -> tuple[EpisodeSet, bool]:
    """The episode set for ``spec`` on ``split``, from ``directory`` or the shipped files, created on first use.

    Looks for a file with :func:`find_episode_file`. An existing file is validated against the
    split (refused if drawn from other data); otherwise the set is drawn from the split, bound to
    its fingerprint and saved in ``directory`` under its data-identity name. Returns ``(set, created)``.
    """
    found = find_episode_file(spec, split, directory)
    if found is not None:
        eps = EpisodeSet.load(found)
        eps.check_compatible(split)
        return eps, False
    eps = EpisodeSet.from_split(spec, split)
    if not create:
        return eps, True
    path = eps.save(Path(directory) / eps.filename)
    return EpisodeSet.load(path), True


# --------------------------------------------------------------------------- episode lists
_ROLES = ("support", "query")


@dataclass(frozen=True)
class ListEntry:
    """One sample of an episode list: ``ref`` is a file name (str) or a position (int) in class ``cls``."""

    where: str  # e.g. "runs.csv row 7", named in errors
    episode: str
    role: str  # "support" or "query"
    cls: str | None
    ref: str | int


def read_episode_list(path: str | Path) -> list[ListEntry]:
    """Parse a ``.csv`` or ``.json`` episode list into entries (no data needed; see the module docstring).

    CSV: a header with ``episode``, ``role`` (support/query), ``class`` (optional with ``file``) and
    exactly one of ``file`` / ``position``; one row per sample. JSON: ``{"episodes": [...]}`` (or the
    list itself), each episode ``{"classes": [C names], "support": [C lists], "query": [C lists]}``
    of file names or positions.
    """
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"episode list {path} does not exist; give a .csv or .json file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise EpisodeError(f"episode list {path}: unknown format {suffix or '(no extension)'}; "
                           "give a .csv or .json file (see `fewshot-bench episodes import --help`)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EpisodeError(f"episode list {path}: cannot read it ({exc}); save it as UTF-8 text") from None
    entries = _read_csv_list(path, text) if suffix == ".csv" else _read_json_list(path, text)
    if not entries:
        raise EpisodeError(f"episode list {path} holds no samples; add one row per support and query image")
    return entries


def _read_csv_list(path: Path, text: str) -> list[ListEntry]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    columns = [c.strip().lower() for c in header or []]
    expected = "a header episode,role,class,file (by file name) or episode,role,class,position (by index)"
    refs = [c for c in ("file", "position") if c in columns]
    if not header or "episode" not in columns or "role" not in columns or len(refs) != 1:
        raise EpisodeError(f"{path} row 1: header {','.join(columns) or '(empty)'} is not {expected}")
    ref_col = refs[0]
    if ref_col == "position" and "class" not in columns:
        raise EpisodeError(f"{path} row 1: a list by position needs a class column; {expected}")
    col = {c: columns.index(c) for c in ("episode", "role", "class", ref_col) if c in columns}
    entries = []
    for row in reader:
        where = f"{path} row {reader.line_num}"
        if not any(c.strip() for c in row):
            continue
        if len(row) < len(columns):
            raise EpisodeError(f"{where}: {len(row)} fields, the header has {len(columns)}; fill every column")
        value = {c: row[i].strip() for c, i in col.items()}
        ref: str | int = value[ref_col]
        if ref_col == "position":
            ref = _position(value["position"], where)
        elif not ref:
            raise EpisodeError(f"{where}: empty file name; give the image's path under --data-root")
        entries.append(ListEntry(where, value["episode"], _role(value["role"], where), value.get("class") or None,
                                 ref))
    return entries


def _role(text: str, where: str) -> str:
    role = text.strip().lower()
    if role not in _ROLES:
        raise EpisodeError(f"{where}: role {text!r} is neither support nor query")
    return role


def _position(value: Any, where: str) -> int:
    if isinstance(value, str):
        pos = int(value) if value.strip().isdecimal() else -1  # isdigit() would pass "²", which int() refuses
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pos = int(value)
    else:
        pos = -1
    if pos < 0:
        raise EpisodeError(f"{where}: position {value!r} is not a non-negative integer")
    return pos


def _read_json_list(path: Path, text: str) -> list[ListEntry]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EpisodeError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    episodes = doc.get("episodes") if isinstance(doc, dict) else doc
    if not isinstance(episodes, list):
        raise EpisodeError(f"{path}: expected {{\"episodes\": [...]}} or a list of episodes, each "
                           "{\"classes\": [...], \"support\": [[...], ...], \"query\": [[...], ...]}")
    entries = []
    for e, episode in enumerate(episodes):
        where = f"{path} episode {e}"
        if not isinstance(episode, dict) or not all(k in episode for k in ("classes", "support", "query")):
            raise EpisodeError(f"{where}: expected an object with classes, support and query")
        classes = episode["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise EpisodeError(f"{where}: classes must be a list of class names")
        for role in _ROLES:
            groups = episode[role]
            if not isinstance(groups, list) or len(groups) != len(classes) or not all(
                    isinstance(g, list) for g in groups):
                raise EpisodeError(f"{where}: {role} must be {len(classes)} lists, one per class in classes")
        for role in _ROLES:
            for n, (name, group) in enumerate(zip(classes, episode[role])):
                for i, item in enumerate(group):
                    at = f"{where} {role}[{n}][{i}]"
                    if isinstance(item, str):
                        ref: str | int = item.strip()
                        if not ref:
                            raise EpisodeError(f"{at}: empty file name; give the image's path under --data-root")
                    else:
                        ref = _position(item, at)
                    entries.append(ListEntry(at, str(e), role, name, ref))
    return entries


def episodes_from_list(
    entries: Sequence[ListEntry], *, dataset: str, split: str, class_names: Sequence[str],
    class_sizes: Sequence[int], data_fingerprint: str | None = None,
    resolve: Callable[[str], tuple[int, int]] | None = None, origin: Mapping[str, Any] | None = None,
    where: str = "the episode list",
) -> EpisodeSet:
    """Build an :class:`EpisodeSet` from parsed list entries, checking every sample.

    ``class_names`` (sorted) and ``class_sizes`` are the split's structure. Entries by position need
    their ``cls``; entries by file name need ``resolve(name) -> (class id, position)``, which raises
    :class:`LookupError` with a message for an unknown or ambiguous name. Refused, naming the row:
    mixed names and positions, unknown classes or names, out-of-range positions, a file of another
    class than the row says, an image twice in one episode (support and query must not share
    images), episodes with different numbers of classes, classes with other numbers of support or
    query images than the first episode's. The spec's seed is 0 (an imported set has none).
    """
    if not entries:
        raise EpisodeError(f"{where} holds no samples")
    names, sizes = tuple(map(str, class_names)), tuple(int(s) for s in class_sizes)
    by_name = isinstance(entries[0].ref, str)
    if by_name and resolve is None:
        raise EpisodeError(f"{entries[0].where}: the list gives file names; pass --data-root so they can be "
                           "found (or export the list --by index)")
    class_id = {n: i for i, n in enumerate(names)}
    # episode key -> {class id -> {"support": [...], "query": [...], "where": first row}}
    episodes: dict[str, dict[int, dict[str, Any]]] = {}
    seen: dict[str, dict[tuple[int, int], ListEntry]] = {}
    for entry in entries:
        if isinstance(entry.ref, str) != by_name:
            raise EpisodeError(f"{entry.where}: mixes {'a position' if by_name else 'a file name'} into a list "
                               f"by {'file name' if by_name else 'position'}; use one kind of reference throughout")
        c, p = _resolve_name(entry, resolve, names) if by_name else \
            _check_position(entry, class_id, names, sizes, f"{dataset}/{split}")
        first = seen.setdefault(entry.episode, {}).setdefault((c, p), entry)
        if first is not entry:
            what = "support and query must not share an image" if first.role != entry.role else \
                f"an image may appear once in the {entry.role}"
            raise EpisodeError(f"{entry.where}: {entry.ref} ({names[c]} position {p}) is already in episode "
                               f"{entry.episode} ({first.where}, {first.role}); {what}")
        slot = episodes.setdefault(entry.episode, {}).setdefault(c, {"support": [], "query": [], "where": entry.where})
        slot[entry.role].append(p)
    N, K, Q = _check_shapes(episodes, names)
    keys, E = list(episodes), len(episodes)
    classes = np.array([list(episodes[k]) for k in keys], dtype=np.int64).reshape(E, N)
    support = np.array([[episodes[k][c]["support"] for c in episodes[k]] for k in keys], dtype=np.int64)
    query = np.array([[episodes[k][c]["query"] for c in episodes[k]] for k in keys], dtype=np.int64)
    spec = EpisodeSpec(N, K, Q, E, 0)
    eps = EpisodeSet(spec, dataset, split, names, sizes, classes, support.reshape(E, N, K), query.reshape(E, N, Q),
                     data_fingerprint, None, dict(origin or {"file": where}, by="name" if by_name else "index"))
    eps._validate()
    return eps


def _resolve_name(entry: ListEntry, resolve: Callable[[str], tuple[int, int]], names: tuple[str, ...]) -> tuple[int, int]:
    """``(class id, position)`` of an entry given by file name, checked against the class it states."""
    try:
        c, p = resolve(entry.ref)
    except LookupError as exc:
        raise EpisodeError(f"{entry.where}: {exc.args[0] if exc.args else exc}") from None
    if entry.cls is not None and entry.cls != names[c]:
        raise EpisodeError(f"{entry.where}: {entry.ref} is an image of class {names[c]}, not {entry.cls}; "
                           "fix the class or the file name")
    return c, p


def _check_position(entry: ListEntry, class_id: Mapping[str, int], names: tuple[str, ...],
                    sizes: tuple[int, ...], where: str) -> tuple[int, int]:
    """``(class id, position)`` of an entry given by class and position, both checked."""
    if entry.cls not in class_id:
        raise EpisodeError(f"{entry.where}: class {entry.cls!r} is not one of the {len(names)} classes of "
                           f"{where} ({_few(names)})")
    c, p = class_id[entry.cls], int(entry.ref)
    if p >= sizes[c]:
        raise EpisodeError(f"{entry.where}: position {p} is outside class {names[c]}'s {sizes[c]} images "
                           f"(0..{sizes[c] - 1})")
    return c, p


def _check_shapes(episodes: Mapping[str, Mapping[int, Mapping[str, Any]]], names: tuple[str, ...]) -> tuple[int, int, int]:
    """``(N, K, Q)`` shared by every episode and class (those of the first episode), else the row that differs."""
    keys = list(episodes)
    for key in keys:
        for c, slot in episodes[key].items():
            for role in _ROLES:
                if not slot[role]:
                    raise EpisodeError(f"{slot['where']}: episode {key}, class {names[c]} has no {role} image; every "
                                       "class of an episode needs support and query images")
    first_ep = episodes[keys[0]]
    N = len(first_ep)
    first_class = next(iter(first_ep.values()))
    K, Q = len(first_class["support"]), len(first_class["query"])
    for key in keys:
        ep = episodes[key]
        if len(ep) != N:
            raise EpisodeError(f"{next(iter(ep.values()))['where']}: episode {key} has {len(ep)} classes, but "
                               f"episode {keys[0]} has {N}; every episode needs the same number of classes (ways)")
        for c, slot in ep.items():
            for role, want, what in (("support", K, "shots"), ("query", Q, "queries")):
                if len(slot[role]) != want:
                    raise EpisodeError(
                        f"{slot['where']}: episode {key}, class {names[c]} has {len(slot[role])} {role} images, "
                        f"but episode {keys[0]}'s classes have {want}; every class of every episode needs the same "
                        f"number ({what})")
    return N, K, Q


def _few(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def export_episode_list(eps: EpisodeSet, fmt: str = "csv", *, by: str = "index",
                        name_of: Callable[[int, int], str] | None = None) -> str:
    """The set as an episode list: ``fmt`` ``csv`` or ``json``, samples ``by`` ``index`` or ``name``.

    ``by="name"`` needs ``name_of(class id, position) -> file name`` (see
    :func:`fewshot_bench.data.split_files`). Rows: per episode the support samples class by class,
    then the query samples, so :func:`episodes_from_list` reads back the same arrays.
    """
    if fmt not in ("csv", "json"):
        raise EpisodeError(f"--format {fmt!r}: choose csv or json")
    if by not in ("index", "name"):
        raise EpisodeError(f"--by {by!r}: choose index or name")
    if by == "name" and name_of is None:
        raise EpisodeError("--by name needs the data to name the files; pass --data-root")

    def ref(c: int, p: int) -> str | int:
        return name_of(c, p) if by == "name" else p

    names = eps.class_names
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["episode", "role", "class", "file" if by == "name" else "position"])
        for e in range(eps.spec.n_episodes):
            for role, arr in (("support", eps.support), ("query", eps.query)):
                for n, c in enumerate(eps.classes[e]):
                    for p in arr[e, n]:
                        writer.writerow([e, role, names[c], ref(int(c), int(p))])
        return buf.getvalue()
    head = {"format": LIST_FORMAT, "format_version": 1, "dataset": eps.dataset, "split": eps.split, "by": by,
            "ways": eps.spec.ways, "shots": eps.spec.shots, "queries": eps.spec.queries,
            "n_episodes": eps.spec.n_episodes, "seed": None if eps.origin is not None else eps.spec.seed,
            "episode_file_sha256": eps.sha256(), "data_fingerprint": eps.data_fingerprint,
            "structure_sha256": eps.structure}
    lines = [json.dumps(head, sort_keys=False)[:-1] + ', "episodes": [']
    rows = []
    for e in range(eps.spec.n_episodes):
        cls = [int(c) for c in eps.classes[e]]
        rows.append(json.dumps({"classes": [names[c] for c in cls],
                                "support": [[ref(c, int(p)) for p in eps.support[e, n]] for n, c in enumerate(cls)],
                                "query": [[ref(c, int(p)) for p in eps.query[e, n]] for n, c in enumerate(cls)]}))
    lines.append(",\n".join(rows))
    lines.append("]}")
    return "\n".join(lines) + "\n"
