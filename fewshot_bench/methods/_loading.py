"""Finding a method by name: built-ins, ``fewshot_bench.methods`` entry points, ``file.py:Class``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError, UnknownNameError
from ..registry import close_matches
from .base import METHODS, FewShotMethod, implements_scores

__all__ = ["ENTRY_POINT_GROUP", "MethodInfo", "available", "create", "describe", "get_method_class"]

ENTRY_POINT_GROUP = "fewshot_bench.methods"
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<cls>[A-Za-z_]\w*)$")
_FILE_CACHE: dict[tuple[str, int], Any] = {}
_WARNED: set[str] = set()


class MethodInfo(NamedTuple):
    """One row of ``fewshot-bench methods``."""

    name: str
    description: str
    paper: str
    transductive: bool


def get_method_class(name: str | type[FewShotMethod]) -> type[FewShotMethod]:
    """The class registered as ``name``, from an entry point, or ``"path/to/file.py:ClassName"``."""
    if isinstance(name, type):
        return _checked(name, repr(name))
    match = _FILE_SPEC.match(name.strip())
    if match:
        return _load_from_file(name, Path(match["path"]), match["cls"])
    if name not in METHODS:
        _load_entry_points()
    return METHODS.get(name)


def create(name: str | type[FewShotMethod], **params: Any) -> FewShotMethod:
    """Build a method with its hyper-parameters; ``None`` values are dropped (keep the defaults)."""
    cls = get_method_class(name)
    params = {k: v for k, v in params.items() if v is not None}
    sig = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            accepted = ", ".join(cls._param_names()) or "none"
            raise ConfigError(
                f"method {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters: {accepted}"
            )
    method = cls(**params)
    method._check_params()
    return method


def available() -> list[str]:
    """Sorted names of every registered method, entry points included."""
    _load_entry_points()
    return METHODS.list()


def describe() -> list[MethodInfo]:
    """``(name, description, paper, transductive)`` of every method, for ``fewshot-bench methods``."""
    return [
        MethodInfo(n, c.description, c.paper, bool(c.transductive))
        for n, c in ((n, METHODS.get(n)) for n in available())
    ]


def _checked(obj: Any, where: str) -> type[FewShotMethod]:
    if not (isinstance(obj, type) and issubclass(obj, FewShotMethod)):
        raise ConfigError(
            f"{where} is not a FewShotMethod subclass; derive it from fewshot_bench.methods.FewShotMethod"
        )
    if not implements_scores(obj):
        raise ConfigError(f"{where} implements neither batch_scores nor episode_scores")
    return obj


def _load_from_file(spec: str, path: Path, cls_name: str) -> type[FewShotMethod]:
    if not path.is_file():
        raise ConfigError(f"--methods {spec!r}: file {path} does not exist; give path/to/file.py:ClassName "
                          "or a name from `fewshot-bench methods`")
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
            raise ConfigError(
                f"--methods {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        _FILE_CACHE[key] = module
    if not hasattr(module, cls_name):
        found = [
            k
            for k, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, FewShotMethod) and v is not FewShotMethod
        ]
        hint = close_matches(cls_name, found) or found
        raise UnknownNameError(
            f"--methods {spec!r}: {path} defines no class {cls_name!r}"
            + (f"; did you mean: {', '.join(hint)}?" if hint else "; it defines no FewShotMethod")
        )
    return _checked(getattr(module, cls_name), f"--methods {spec!r}: {cls_name} in {path}")


def _load_entry_points() -> None:
    """Register every ``fewshot_bench.methods`` entry point not registered yet (import on demand)."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in METHODS:
            continue
        try:
            cls = _checked(ep.load(), f"entry point {ep.name!r} ({ep.value})")
        except Exception as exc:  # a broken plug-in must not break the built-ins
            if ep.name not in _WARNED:
                _WARNED.add(ep.name)
                warnings.warn(f"skipping method plug-in {ep.name!r}: {exc}", RuntimeWarning, stacklevel=3)
            continue
        METHODS.register(ep.name, cls)
