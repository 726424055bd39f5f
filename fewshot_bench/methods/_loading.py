"""Finding a method by name: built-ins, ``fewshot_bench.methods`` entry points, ``file.py:Class``.

``"name:preset"`` (e.g. ``"ridge:r2d2"``) picks one of the method's ``presets``: a subclass whose
``__init__`` defaults are the preset's values (explicit parameters still override them) and whose
``name`` is ``"name:preset"``, so results record which preset ran.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

from ..errors import ConfigError, UnknownNameError
from ..preprocess import parse_preprocessing
from ..registry import check_params_known, load_class_from_file, load_entry_points, split_file_spec
from .base import METHODS, FewShotMethod, implements_scores

__all__ = ["ENTRY_POINT_GROUP", "MethodInfo", "available", "create", "describe", "get_method_class"]

ENTRY_POINT_GROUP = "fewshot_bench.methods"
_WARNED: set[str] = set()
_PRESET_CLASSES: dict[tuple[type, str], type] = {}
_PRESET_CLASS_ATTRIBUTES = ("preprocessing",)  # what a preset may set besides __init__ parameters


class MethodInfo(NamedTuple):
    """One row of ``fewshot-bench methods``."""

    name: str
    description: str
    paper: str
    transductive: bool
    preprocessing: str  # the declared feature preprocessing chain, canonical (``"cl2n"``, ``"none"``)


def get_method_class(name: str | type[FewShotMethod]) -> type[FewShotMethod]:
    """The class registered as ``name``, from an entry point, or ``"path/to/file.py:ClassName"``;
    ``"name:preset"`` gives the preset's subclass (see the module docstring)."""
    if isinstance(name, type):
        return _checked(name, repr(name))
    if split_file_spec(name):
        return load_class_from_file(
            name, flag="--methods", base=FewShotMethod, check=_checked, names_from="`fewshot-bench methods`"
        )
    base_name, colon, preset = name.partition(":")
    if base_name not in METHODS:
        _load_entry_points()
    cls = METHODS.get(base_name)
    return _preset_class(cls, base_name, preset.strip().lower()) if colon else cls


def create(name: str | type[FewShotMethod], *, preprocess: str | None = None, base_mean: Any = None,
           **params: Any) -> FewShotMethod:
    """Build a method with its hyper-parameters; ``None`` values are dropped (keep the defaults).

    ``name`` may carry a preset, ``"ridge:r2d2"``: its values replace the defaults, and ``params``
    given here still override them (``create("ridge:r2d2", alpha=10.0)``).

    ``preprocess`` replaces the method's declared feature preprocessing chain (e.g. ``"l2n"``,
    ``"power:0.5+cl2n"``, ``"none"``; see :mod:`fewshot_bench.preprocess`); ``base_mean (D,)`` is the
    train split's mean feature, needed by chains with ``center``/``cl2n`` (for a chain with steps
    before the centring, ``Preprocessing.base_mean_from(train_features)`` averages after those steps).
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
    """``(name, description, paper, transductive, preprocessing)`` of every method, for ``fewshot-bench methods``."""
    return [
        MethodInfo(n, c.description, c.paper, bool(c.transductive), parse_preprocessing(c.preprocessing).spec)
        for n, c in ((n, METHODS.get(n)) for n in available())
    ]


def _preset_class(cls: type[FewShotMethod], name: str, preset: str) -> type[FewShotMethod]:
    """The subclass of ``cls`` whose defaults are ``cls.presets[preset]`` (built once, cached)."""
    presets = {k.lower(): v for k, v in (getattr(cls, "presets", None) or {}).items()}
    if preset not in presets:
        choices = ", ".join(f"{name}:{p}" for p in sorted(presets)) or "none (use the plain name)"
        raise UnknownNameError(f"method {name!r} has no preset {preset!r} (--methods {name}:{preset}); "
                               f"its presets: {choices}")
    key = (cls, preset)
    if key not in _PRESET_CLASSES:
        values = dict(presets[preset])
        attributes = {k: values.pop(k) for k in _PRESET_CLASS_ATTRIBUTES if k in values}
        check_params_known("method", f"{name}:{preset}", cls, values)
        base_init, signature = cls.__init__, inspect.signature(cls.__init__)

        def __init__(self: FewShotMethod, **params: Any) -> None:
            base_init(self, **{**values, **params})

        __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(default=values[p.name]) if p.name in values else p
                        for p in signature.parameters.values()])
        _PRESET_CLASSES[key] = type(cls.__name__, (cls,), {
            "__init__": __init__, "__module__": cls.__module__, "__doc__": cls.__doc__,
            "__qualname__": f"{cls.__qualname__}[{preset}]", "name": f"{cls.name}:{preset}",
            "preset": preset, **attributes,
        })
    return _PRESET_CLASSES[key]


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
