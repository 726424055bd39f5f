"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: Any = None) -> None:
    """Wait for queued CUDA work so wall-clock times are honest; no-op on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: Any = None) -> tuple[float, Any]:
    """Best wall time in seconds over ``repeats`` calls of ``fn`` and the last result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that produced a result, for the JSON report."""
    return " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
