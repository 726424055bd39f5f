"""A stand-in for ``importlib.metadata.EntryPoint`` in the plug-in tests of methods and losses."""

from __future__ import annotations


class FakeEntryPoint:
    """``.name``, ``.value`` and ``.load()``; ``load`` raises ``obj`` when it is an exception."""

    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"fake:{name}", obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj
