"""Finding a method by name: built-ins, ``fewshot_bench.methods`` entry points, ``file.py:Class``."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import ConfigError
from ..preprocess import parse_preprocessing
from ..registry import check_params_known, load_class_from_file, load_entry_points, split_file_spec
from .base import METHODS, FewShotMethod, implements_scores

__all__ = ["ENTRY_POINT_GROUP", "MethodInfo", "available", "create", "describe", "get_method_class"]

ENTRY_POINT_GROUP = "fewshot_bench.methods"
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
    if split_file_spec(name):
        return load_class_from_file(
            name, flag="--methods", base=FewShotMethod, check=_checked, names_from="`fewshot-bench methods`"
        )
    if name not in METHODS:
        _load_entry_points()
    return METHODS.get(name)


def create(name: str | type[FewShotMethod], *, preprocess: str | None = None, base_mean: Any = None,
           **params: Any) -> FewShotMethod:
    """Build a method with its hyper-parameters; ``None`` values are dropped (keep the defaults).

    ``preprocess`` replaces the method's declared feature preprocessing chain (e.g. ``"l2n"``,
    ``"power:0.5+cl2n"``, ``"none"``; see :mod:`fewshot_bench.preprocess`); ``base_mean (D,)`` is the
    train split's mean feature, needed by chains with ``center``/``cl2n``.
    """
    cls = get_method_class(name)
    params = {k: v for k, v in params.items() if v is not None}
    check_params_known("method", name, cls, params)
    method = cls(**params)
    if preprocess is not None:
        method.preprocess = parse_preprocessing(preprocess).spec  # bad chains fail here, not mid-run
    if base_mean is not None:
        method.base_mean = base_mean
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


def _load_entry_points() -> None:
    """Register every ``fewshot_bench.methods`` entry point not registered yet (import on demand)."""
    load_entry_points(METHODS, ENTRY_POINT_GROUP, _checked, _WARNED)
