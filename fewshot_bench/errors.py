"""Exception hierarchy of fewshot-bench, drawn in one place.

Every error a user can cause derives from :class:`FewshotBenchError`; the CLI
prints ``Error: <message>`` (one line) and exits with status 1 for these, and
lets anything else surface as a bug with its traceback.

Messages name the file or flag, say what is wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EpisodeError",
    "FewshotBenchError",
    "MethodError",
    "UnknownNameError",
]


class FewshotBenchError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(FewshotBenchError, ValueError):
    """A flag or parameter has an invalid value."""


class UnknownNameError(ConfigError, KeyError):
    """A dataset, method or architecture name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(FewshotBenchError):
    """A dataset file or folder is missing, unreadable or malformed."""


class EpisodeError(FewshotBenchError):
    """An episode spec is impossible or an episode file does not fit the data."""


class CheckpointError(FewshotBenchError):
    """A checkpoint is missing, unreadable or does not fit the architecture."""


class CacheError(FewshotBenchError):
    """A cache entry is corrupt or cannot be written."""


class MethodError(FewshotBenchError):
    """A few-shot method was given inputs it cannot handle."""
