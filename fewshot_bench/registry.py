"""A registry is a dict plus a decorator; unknown names answer with close matches.

Plug-ins: :func:`load_class_from_file` imports ``"path/to/file.py:ClassName"`` (once per file
version) and :func:`load_entry_points` registers a package's entry points on demand; methods and
training losses both find user classes through these two functions.

>>> BACKBONES = Registry("architecture")
>>> @BACKBONES.register("conv4")
... def conv4(**kw): ...
>>> BACKBONES.get("conv-4")   # raises UnknownNameError: ... Did you mean: conv4?
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from .errors import ConfigError, UnknownNameError

__all__ = [
    "Registry",
    "check_params_known",
    "close_matches",
    "init_param_names",
    "load_class_from_file",
    "load_entry_points",
    "split_file_spec",
]

T = TypeVar("T")


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (case-insensitive)."""
    lower = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)
    prefix = [c for c in candidates if c.lower().startswith(name.lower()[:3])] if len(name) >= 3 else []
    out: list[str] = []
    for c in [lower[h] for h in hits] + prefix:
        if c not in out:
            out.append(c)
    return out[:n]


class Registry(Generic[T]):
    """Name → object mapping with a ``register`` decorator and helpful lookups.

    Parameters
    ----------
    kind:
        What the registry holds ("method", "dataset", "architecture"); used in messages.
    flag:
        The CLI flag that takes these names, quoted in error messages (e.g. ``--methods``).
    """

    def __init__(self, kind: str, flag: str | None = None) -> None:
        self.kind = kind
        self.flag = flag
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def deco(o: T) -> T:
            key = name.lower()
            if key in self._items and not overwrite and self._items[key] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = o
            return o

        return deco if obj is None else deco(obj)

    def get(self, name: str) -> T:
        """Look ``name`` up; raise :class:`UnknownNameError` with close matches if absent."""
        try:
            return self._items[name.lower()]
        except KeyError:
            pass
        hint = close_matches(name, list(self._items))
        where = f" ({self.flag})" if self.flag else ""
        msg = f"unknown {self.kind} {name!r}{where}"
        msg += f"; did you mean: {', '.join(hint)}?" if hint else f"; choose from: {', '.join(sorted(self._items))}"
        raise UnknownNameError(msg)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern`` (like ``timm.list_models``)."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern.lower()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


# -- hyper-parameters of registered classes (scikit-learn style: ``__init__`` keywords) -----------
def init_param_names(cls: type) -> list[str]:
    """Names of the keyword parameters of ``cls.__init__`` (its hyper-parameters), in order."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.kind in kinds]


def check_params_known(kind: str, name: object, cls: type, params: dict[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` if ``params`` holds a key ``cls.__init__`` does not take."""
    sig = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return
    accepted = init_param_names(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(accepted) or 'none'}"
        )


# -- plug-ins: classes from files and entry points ----------------------------------------------
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<cls>[A-Za-z_]\w*)$")
_FILE_CACHE: dict[tuple[str, int], ModuleType] = {}


def split_file_spec(spec: str) -> tuple[Path, str] | None:
    """``"path/to/file.py:ClassName"`` -> ``(Path, "ClassName")``; ``None`` for anything else."""
    match = _FILE_SPEC.match(spec.strip())
    return (Path(match["path"]), match["cls"]) if match else None


def load_class_from_file(
    spec: str, *, flag: str, base: type, check: Callable[[Any, str], type], names_from: str
) -> type:
    """Import the file of ``spec`` (``"path.py:ClassName"``) and return ``check(cls, where)``.

    The file is imported once per (path, modification time) under a private module name and
    never registered. ``flag`` (``--methods``) and ``names_from`` (where the built-in names are
    listed) go into the one-line errors; ``base`` names the class users should derive from;
    ``check`` raises :class:`ConfigError` for an object that is not a usable subclass.
    """
    parts = split_file_spec(spec)
    if parts is None:
        raise ConfigError(f"{flag} {spec!r} is not of the form path/to/file.py:ClassName")
    path, cls_name = parts
    if not path.is_file():
        raise ConfigError(f"{flag} {spec!r}: file {path} does not exist; give path/to/file.py:ClassName "
                          f"or a name from {names_from}")
    resolved = path.resolve()
    key = (str(resolved), resolved.stat().st_mtime_ns)
    module = _FILE_CACHE.get(key)
    if module is None:
        mod_name = f"fewshot_bench_user_{resolved.stem}_{hashlib.sha1(key[0].encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(mod_name, resolved)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            del sys.modules[mod_name]
            raise ConfigError(f"{flag} {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        _FILE_CACHE[key] = module
    if not hasattr(module, cls_name):
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, base) and v is not base]
        hint = close_matches(cls_name, found) or found
        raise UnknownNameError(
            f"{flag} {spec!r}: {path} defines no class {cls_name!r}"
            + (f"; did you mean: {', '.join(hint)}?" if hint else f"; it defines no {base.__name__}")
        )
    return check(getattr(module, cls_name), f"{flag} {spec!r}: {cls_name} in {path}")


def load_entry_points(
    registry: Registry[Any], group: str, check: Callable[[Any, str], Any], warned: set[str]
) -> None:
    """Register every entry point of ``group`` not in ``registry`` yet, as ``check`` returns it.

    A plug-in that fails to import or is not a usable class is skipped with one
    ``RuntimeWarning`` per name (remembered in ``warned``): a broken plug-in must not break the
    built-ins.
    """
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in registry:
            continue
        try:
            obj = check(ep.load(), f"entry point {ep.name!r} ({ep.value})")
        except Exception as exc:
            if ep.name not in warned:
                warned.add(ep.name)
                warnings.warn(f"skipping {registry.kind} plug-in {ep.name!r}: {exc}", RuntimeWarning, stacklevel=4)
            continue
        registry.register(ep.name, obj)
