"""Fixed few-shot episodes: a vectorised seeded sampler and a byte-stable file format.

An episode set is drawn from the *class structure* of a split alone (class names and
class sizes), never from pixels, so the canonical sets of benchmarks whose structure
is known can be shipped without the data. A sample is addressed as
``(class, position)``: ``position`` indexes the class's rows in the split's canonical
order (see :mod:`fewshot_bench.data`), which does not depend on file order on disk.

File format (``*.episodes.zip``): a zip with fixed timestamps holding ``meta.json``
(spec, seed, dataset, split, class names and sizes, fingerprints) and three ``.npy``
members: ``classes`` (E, N), ``support`` (E, N, K), ``query`` (E, N, Q), all int32.
The same spec, seed and structure give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._io import atomic_write_bytes, sha256_file
from .errors import EpisodeError

__all__ = [
    "EpisodeSet",
    "EpisodeSpec",
    "FORMAT_VERSION",
    "check_feasible",
    "default_filename",
    "resolve_episode_set",
    "sample_episodes",
    "structure_hash",
]

FORMAT_VERSION = 1
_FORMAT = "fewshot-bench-episodes"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_MAX_UNPACKED = 1 << 30  # bytes; 3,000 5-way 5-shot 15-query episodes take 1.2 MB
_CHUNK = 128  # episodes per sampling chunk; part of the sampling algorithm, do not change


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


def default_filename(dataset: str, split: str, spec: EpisodeSpec) -> str:
    """``<dataset>_<split>_<ways>w<shots>s<queries>q_<E>ep_seed<S>.episodes.zip``."""
    return f"{dataset}_{split}_{spec.tag}.episodes.zip"


@dataclass(frozen=True, eq=False)
class EpisodeSet:
    """A fixed set of episodes over one split, as stored in an episode file."""

    spec: EpisodeSpec
    dataset: str
    split: str
    class_names: tuple[str, ...]
    class_sizes: tuple[int, ...]
    classes: np.ndarray = field(repr=False)  # (E, N)
    support: np.ndarray = field(repr=False)  # (E, N, K)
    query: np.ndarray = field(repr=False)  # (E, N, Q)
    data_fingerprint: str | None = None
    path: Path | None = None

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
    def support_labels(self) -> np.ndarray:
        """(N*K,) int64 episode labels of the support rows: ``0..0, 1..1, ...``."""
        return np.repeat(np.arange(self.spec.ways, dtype=np.int64), self.spec.shots)

    @property
    def query_labels(self) -> np.ndarray:
        """(N*Q,) int64 episode labels of the query rows."""
        return np.repeat(np.arange(self.spec.ways, dtype=np.int64), self.spec.queries)

    def meta(self) -> dict[str, Any]:
        return {
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

    # ------------------------------------------------------------------ binding to data
    def check_compatible(self, split: SplitLike) -> None:
        """Refuse a split that is not the data this set was drawn from."""
        where = f"episode file {self.path}" if self.path else "the episode set"
        hint = "; regenerate it with `fewshot-bench episodes` or pass the matching --data-root"
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

    def save(self, path: str | Path) -> Path:
        """Write the set atomically; returns the path."""
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> EpisodeSet:
        """Read and validate an episode file (shapes, index ranges, format version)."""
        path = Path(path)
        if not path.is_file():
            raise EpisodeError(f"episode file {path} does not exist; create it with `fewshot-bench episodes`")
        try:
            with zipfile.ZipFile(path) as zf:
                unpacked = sum(info.file_size for info in zf.infolist())
                if unpacked > _MAX_UNPACKED:  # a zip bomb, or no episode file of ours
                    raise ValueError(f"members unpack to {unpacked} bytes, over the {_MAX_UNPACKED} allowed")
                meta = json.loads(zf.read("meta.json"))
                arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(f"{n}.npy")), allow_pickle=False)
                          for n in ("classes", "support", "query")}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            raise EpisodeError(f"episode file {path} is damaged or not an episode file ({exc}); "
                               f"regenerate it with `fewshot-bench episodes`") from None
        if meta.get("format") != _FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise EpisodeError(f"episode file {path} has format {meta.get('format')!r} version "
                               f"{meta.get('format_version')!r}, expected {_FORMAT} {FORMAT_VERSION}; regenerate it")
        try:
            spec = EpisodeSpec(meta["ways"], meta["shots"], meta["queries"], meta["n_episodes"], meta["seed"])
            names, sizes = tuple(meta["class_names"]), tuple(int(s) for s in meta["class_sizes"])
        except KeyError as exc:
            raise EpisodeError(f"episode file {path} lacks {exc} in meta.json; regenerate it") from None
        eps = cls(spec, meta["dataset"], meta["split"], names, sizes, arrays["classes"].astype(np.int64),
                  arrays["support"].astype(np.int64), arrays["query"].astype(np.int64),
                  meta.get("data_fingerprint"), path)
        eps._validate()
        return eps

    def _validate(self) -> None:
        E, N, K, Q = self.spec.n_episodes, self.spec.ways, self.spec.shots, self.spec.queries
        where = f"episode file {self.path}"
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
        if self.path is not None and self.path.is_file():
            return sha256_file(self.path)
        return hashlib.sha256(self.to_bytes()).hexdigest()


def resolve_episode_set(spec: EpisodeSpec, split: SplitLike, directory: str | Path, *,
                        create: bool = True) -> tuple[EpisodeSet, bool]:
    """The episode set for ``spec`` on ``split`` from ``directory``, created on first use.

    Looks for :func:`default_filename` in ``directory``. An existing file is validated
    against the split (refused if drawn from other data); otherwise the set is drawn
    from the split, bound to its fingerprint and saved there. Returns ``(set, created)``.
    """
    path = Path(directory) / default_filename(split.dataset, split.split, spec)
    if path.is_file():
        eps = EpisodeSet.load(path)
        eps.check_compatible(split)
        return eps, False
    eps = EpisodeSet.from_split(spec, split)
    if not create:
        return eps, True
    eps.save(path)
    return EpisodeSet.load(path), True
