"""File helpers: atomic writes, content hashes, cache root, advisory file locks, JSON values.

Nothing is ever half-written: every writer goes to a temporary sibling and is
renamed into place (``os.replace`` is atomic on POSIX and Windows). A file goes
through :func:`atomic_write`; a folder (a cache entry of several files) is built in a
temporary sibling by :func:`atomic_dir` and renamed whole. Every cache builds its entries
under :func:`entry_lock`, which also sweeps up the temporaries a killed run left, and
removes a damaged entry with :func:`discard`. Temporaries are always named
``.<name>.<random>.tmp`` next to ``<name>``.

:func:`jsonable` is the one conversion of numpy/torch values (and paths) to JSON types.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CacheError

__all__ = [
    "atomic_dir",
    "atomic_save_npy",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "cache_root",
    "discard",
    "entry_lock",
    "file_lock",
    "jsonable",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp alone gives 0600
_DIR_MODE = 0o777 & ~_current_umask()  # what mkdir() would give; mkdtemp alone gives 0700


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$FEWSHOT_BENCH_CACHE``, else ``~/.cache/fewshot-bench``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("FEWSHOT_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fewshot-bench"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _temporary_name(path: Path) -> str:
    return f".{path.name}."


def _is_temporary_of(candidate: str, name: str) -> bool:
    """True if ``candidate`` is a temporary of ``name``: ``.<name>.<random, no dots>.tmp``."""
    return re.fullmatch(rf"\.{re.escape(name)}\.[^./]+\.tmp", candidate) is not None


def _write_error(path: Path, exc: BaseException) -> CacheError | None:
    """The one-line :class:`CacheError` for an ``OSError`` met while writing ``path`` (None: not one)."""
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError):
        return None
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CacheError(
            f"{path}: cannot write, the disk is full ({exc.strerror or exc}); free space there or choose "
            "another folder (--cache-dir for the cache, --out for results)"
        )
    return CacheError(f"{path}: could not write ({exc.strerror or exc}); free space or choose another folder")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched. An ``OSError``
    (disk full, permission denied) becomes a one-line :class:`~fewshot_bench.errors.CacheError`
    naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_name(path), suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        error = _write_error(path, exc)
        if error is not None:
            raise error from exc
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build the folder ``path`` complete or not at all.

    Yields an empty temporary sibling (``.<name>.<random>.tmp``) to fill. When the block ends
    normally an existing ``path`` is discarded (:func:`discard`) and the temporary is renamed
    onto ``path``; if it raises, the temporary is deleted and ``path`` is left as it was. A
    reader therefore sees the old folder, no folder, or the new one whole. Hold
    :func:`entry_lock` around it when several processes may build the same folder.
    Errors are those of :func:`atomic_write`, naming ``path`` (not the temporary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_name(path), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, _DIR_MODE)
        yield tmp
        discard(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, CacheError):  # from an atomic_write inside: name the folder, not the temporary
            raise CacheError(str(exc).replace(str(tmp), str(path))) from exc.__cause__
        error = _write_error(path, exc)
        if error is not None:
            raise error from exc
        raise


def discard(path: str | os.PathLike) -> None:
    """Delete the file or folder ``path`` (if it exists) without a reader ever seeing it half-deleted.

    It is first renamed aside to a temporary sibling (atomic), then deleted; a run killed in
    between leaves a temporary that the next :func:`entry_lock` removes.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    trash = path.parent / f"{_temporary_name(path)}trash-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        os.replace(path, trash)
    except FileNotFoundError:  # someone else discarded it first
        return
    _remove(trash)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def entry_lock(entry: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock for building the cache entry ``entry`` (a file or a folder).

    The lock file is ``<parent>/.locks/<name>.lock``. Once the lock is held, the temporaries of
    ``entry`` that a killed run left (``.<name>.<random>.tmp`` siblings: half-written files and
    folders, trash of :func:`discard`) are deleted: only a lock holder creates them, so any
    found then belong to a process that died. Other entries' temporaries are left alone.
    """
    entry = Path(entry)
    with file_lock(entry.parent / ".locks" / f"{entry.name}.lock"):
        for stale in entry.parent.iterdir():
            if _is_temporary_of(stale.name, entry.name):
                _remove(stale)
        yield


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``jsonable(obj)`` as indented, key-sorted JSON (stable bytes for stable input)."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temporary file."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


_JSON_KEY = (str, int, float, bool, type(None))


def jsonable(obj: Any, *, strict: bool = False) -> Any:
    """``obj`` with JSON types only, recursively; the one conversion used for every JSON we write.

    * mappings become dicts (keys: str, int, float, bool and None are kept, as ``json`` writes
      them; numpy scalars become their Python value; anything else its ``str``);
    * lists and tuples become lists;
    * numpy scalars and arrays, torch tensors and anything else with ``.tolist()`` become
      Python numbers / nested lists (``np.bool_`` to ``bool``, ``np.int64`` to ``int``);
    * paths (``os.PathLike``) become strings;
    * with ``strict=True``, NaN becomes ``None`` (``null``) and ±infinity the strings
      ``"inf"``/``"-inf"``, so the file is RFC 8259 JSON; by default they stay floats (Python's
      ``json`` writes ``NaN``/``Infinity``, which it reads back).

    Anything else is returned unchanged (``json.dumps`` then says what it cannot write).
    """
    if isinstance(obj, (str, bool, int, type(None))):
        return obj
    if isinstance(obj, float):
        if strict and not math.isfinite(obj):
            return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return float(obj)
    if isinstance(obj, Mapping):
        return {_json_key(k): jsonable(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, strict=strict) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return jsonable(obj.tolist(), strict=strict)
    return obj


def _json_key(key: Any) -> Any:
    if hasattr(key, "tolist") and not isinstance(key, _JSON_KEY):
        key = key.tolist()
    return key if isinstance(key, _JSON_KEY) else str(key)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed); blocks until held.

    Used so that two processes filling the same cache entry do not both compute it.
    On platforms without ``fcntl`` this is a no-op.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
