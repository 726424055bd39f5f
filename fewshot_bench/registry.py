"""A registry is a dict plus a decorator; unknown names answer with close matches.

>>> BACKBONES = Registry("architecture")
>>> @BACKBONES.register("conv4")
... def conv4(**kw): ...
>>> BACKBONES.get("conv-4")   # raises UnknownNameError: ... Did you mean: conv4?
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry", "close_matches"]

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


Factory = Callable[..., Any]
