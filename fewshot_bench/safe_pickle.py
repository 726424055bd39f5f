"""Load dataset pickles without running code from them.

Dataset pickles (MetaOptNet, learn2learn, renmengye, raw CIFAR-100) hold only
dicts, lists, strings, ints and numpy arrays. :func:`safe_load` unpickles with an
allow-list of globals, so a pickle that would call ``os.system`` (or anything
else) is refused before any of it runs. Python-2 pickles load with
``encoding="latin1"`` (numpy arrays included).

>>> d = safe_load("CIFAR_FS_test.pickle")      # {'data': (N,32,32,3) uint8, 'labels': [...]}
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

from .errors import DataError

__all__ = ["ALLOWED_GLOBALS", "safe_load"]

#: (module, name) pairs a dataset pickle may reference. Python-2 names
#: (``__builtin__``, ``copy_reg``) are mapped to Python-3 names before the check.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [
        ("builtins", n)
        for n in (
            "set",
            "frozenset",
            "bytearray",
            "bytes",
            "complex",
            "slice",
            "range",
            "list",
            "dict",
            "tuple",
            "int",
            "float",
            "str",
            "bool",
        )
    ]
    + [("collections", "OrderedDict"), ("collections", "defaultdict")]
    + [("_codecs", "encode")]  # bytes in protocol-2 pickles written by Python 3
)

_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_HTML_PREFIXES = (b"<!doctype", b"<html", b"<head", b"<?xml")


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only resolves :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: IO[bytes], *, encoding: str, where: str) -> None:
        super().__init__(file, encoding=encoding)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        canonical = _PY2_MODULES.get(module, module)
        if (canonical, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"{self._where}: refuses to load global {module}.{name}; "
                "the file may be malicious or not a dataset pickle"
            )
        return super().find_class(module, name)


def safe_load(path_or_file: str | os.PathLike | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Unpickle a dataset file, allowing only containers, builtins and numpy arrays.

    Raises :class:`DataError` (one line, naming the file) for a forbidden global,
    an empty or truncated file, an HTML page saved under a pickle name, or bytes
    that are not a pickle at all.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        where = str(path_or_file)
        try:
            data = Path(path_or_file).read_bytes()
        except FileNotFoundError:
            raise DataError(f"{where}: file does not exist; check the path") from None
        except OSError as exc:
            raise DataError(f"{where}: cannot read ({exc.strerror or exc}); check its permissions") from None
    else:
        where = str(getattr(path_or_file, "name", "<stream>"))
        data = path_or_file.read()
    return _loads(data, where=where, encoding=encoding)


def _loads(data: bytes, *, where: str, encoding: str) -> Any:
    if not data:
        raise DataError(f"{where}: file is empty (0 bytes); download it again")
    head = data[:512].lstrip().lower()
    if head.startswith(_HTML_PREFIXES):
        raise DataError(f"{where}: looks like an HTML page (a failed download?); download it again")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding, where=where).load()
    except DataError:
        raise
    except EOFError:
        raise DataError(
            f"{where}: pickle is truncated ({len(data)} bytes); "
            "the download or copy was interrupted, download it again"
        ) from None
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise DataError(
                f"{where}: pickle is truncated ({len(data)} bytes); the download or copy was interrupted, "
                "download it again"
            ) from None
        raise DataError(
            f"{where}: not a valid pickle ({_one_line(exc)}); expected a dataset pickle, download it again"
        ) from None
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        MemoryError,
    ) as exc:
        raise DataError(
            f"{where}: not a valid pickle ({type(exc).__name__}: {_one_line(exc)}); "
            "expected a dataset pickle, download it again"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]
