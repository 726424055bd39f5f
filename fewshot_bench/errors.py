"""Exception hierarchy of fewshot-bench, drawn in one place, and the argument checks that raise it.

Every error a user can cause derives from :class:`FewshotBenchError`; the CLI
prints ``Error: <message>`` (one line) and exits with status 1 for these, and
lets anything else surface as a bug with its traceback.

Messages name the file or flag, say what is wrong and what to do.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EpisodeError",
    "FewshotBenchError",
    "MethodError",
    "UnknownNameError",
    "check_int",
    "int_arg",
    "is_int",
    "is_number",
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


# ------------------------------------------------------------------------------ argument checks
# One rule for "an integer" and one for "a number" (a bool is neither here), used by every check of a
# parameter; "an integer >= minimum" has two front ends: values passed to the library (ConfigError
# naming the flag) and command-line text (an argparse type).


def is_int(value: object, minimum: int | None = None) -> bool:
    """An integer (Python or numpy; not a bool), ``>= minimum`` if given."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and (minimum is None or value >= minimum)
    )


def is_number(value: object, *, finite: bool = False) -> bool:
    """A real number (Python or numpy; not a bool) that is not NaN, and not infinite if ``finite``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
        return False
    return math.isfinite(value) or not finite


def check_int(flag: str, value: object, minimum: int, why: str = "") -> int:
    """``value`` if it is an integer (numpy integers too, not a bool) ``>= minimum``.

    Otherwise :class:`ConfigError`: ``"<flag> <value!r> must be an integer >= <minimum><why>"``.
    """
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0 and value.dtype.kind in "iu":
        value = value.item()  # a numpy integer
    if not is_int(value, minimum):
        raise ConfigError(f"{flag} {value!r} must be an integer >= {minimum}{why}")
    return value


def int_arg(minimum: int, what: str):
    """An argparse ``type`` accepting integer text ``>= minimum``; ``what`` names the range
    in the message (``"positive"``: *expected a positive integer, got 0*)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if not is_int(value, minimum):
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value

    return parse
