"""Shared test setup: tests/ helpers (synth.py, runs.py) import as top-level modules; shared fixtures."""

import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")

# Under mutmut each call passes through its trampoline: those frames are not counted by warning_sites.
_TRAMPOLINE = os.path.join("mutmut", "mutation", "trampoline.py")


@pytest.fixture
def one_thread():
    """Tiny solves run several times faster without BLAS / torch threads on a shared machine."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def warning_sites(monkeypatch):
    """(message, file, line) each ``warnings.warn`` points at, stepping over mutmut's trampoline frames
    (``warnings.warn`` is wrapped; the warning itself is still issued)."""
    sites, real = [], warnings.warn

    def warn(message, category=None, stacklevel=1, **kw):
        frame = sys._getframe(1)
        for _ in range(stacklevel - 1):
            frame = frame.f_back
            while frame.f_code.co_filename.endswith(_TRAMPOLINE):
                frame = frame.f_back
        sites.append((str(message), frame.f_code.co_filename, frame.f_lineno))
        real(message, category, stacklevel + 1, **kw)

    monkeypatch.setattr(warnings, "warn", warn)
    return sites
