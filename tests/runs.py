"""Build run folders synthetically, in exactly the format `fewshot-bench eval` writes.

See "Run folder" in ARCHITECTURE.md: ``per_episode.csv`` with the columns
``dataset, split, ways, shots, queries, method, episode, accuracy`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_bench import stats

CSV_COLUMNS = ["dataset", "split", "ways", "shots", "queries", "method", "episode", "accuracy"]
_SAME = object()


def episodes_hash(dataset: str, split: str, ways: int, shots: int, queries: int, n: int, seed: int) -> str:
    """A stand-in for the sha256 of an episode file: equal inputs give equal hashes."""
    return hashlib.sha256(f"{dataset}|{split}|{ways}|{shots}|{queries}|{n}|{seed}".encode()).hexdigest()


def _full_key(key: tuple) -> tuple:
    """(dataset, shots, method) or (dataset, split, ways, shots, queries, method)."""
    if len(key) == 3:
        dataset, shots, method = key
        return (dataset, "test", 5, int(shots), 15, method)
    if len(key) == 6:
        return tuple(key)
    raise ValueError(f"key {key!r}: use (dataset, shots, method) or the full 6-tuple")


def make_run(
    path: str | Path,
    results_per_episode: Mapping[tuple, Any],
    *,
    arch: str = "resnet12",
    loss: str | None = "ce",
    seed: int = 0,
    ci_method: str = "t",
    transductive: Mapping[str, bool] | None = None,
    episodes_sha256: Mapping[tuple, str] | None = None,
    format_version: int = 1,
    checkpoint_meta: Mapping[str, Any] | None = None,
    finetune_seed: Any = _SAME,
    preprocess: Mapping[str, str] | None = None,
    protocols: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``path/per_episode.csv`` and ``path/summary.json``; return ``path``.

    ``results_per_episode`` maps ``(dataset, shots, method)`` (split "test", 5-way,
    15 queries) or the full ``(dataset, split, ways, shots, queries, method)`` to the
    per-episode accuracies. Episode-set hashes derive from the spec and ``seed`` unless
    given in ``episodes_sha256`` (same keys). ``seed`` is the episode seed and, unless
    ``finetune_seed`` is given, also the checkpoint's fine-tuning seed (``meta["seed"]``);
    ``finetune_seed=None`` writes a checkpoint without one (a third-party checkpoint).
    ``preprocess`` maps methods to the chain recorded in their results (``"preprocess"``; absent
    otherwise, as in runs written before it was recorded); ``protocols`` is written as
    ``summary["protocols"]`` (per dataset: transform, image_size, pool, source, forced).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    transductive = dict(transductive or {})
    rows, results, episode_files = [], [], []
    for key, acc in results_per_episode.items():
        dataset, split, ways, shots, queries, method = _full_key(key)
        acc = np.asarray(acc, dtype=np.float64)
        for i, a in enumerate(acc):
            rows.append([dataset, split, ways, shots, queries, method, i, repr(float(a))])
        ci = stats.mean_ci(acc, level=0.95, method=ci_method)
        h = (episodes_sha256 or {}).get(key) or episodes_hash(dataset, split, ways, shots, queries, acc.size, seed)
        results.append({
            "dataset": dataset, "split": split, "ways": ways, "shots": shots, "queries": queries,
            "method": method, "method_params": {}, "transductive": bool(transductive.get(method, False)),
            "mean": ci.mean, "std": None if ci.std != ci.std else ci.std,
            "ci95": None if ci.ci != ci.ci else ci.ci, "ci_method": ci_method,
            "n_episodes": int(acc.size), "episodes_sha256": h,
        })
        if preprocess and method in preprocess:
            results[-1]["preprocess"] = preprocess[method]
        ef = {"dataset": dataset, "split": split, "shots": shots,
              "file": f"episodes/{dataset}-{split}-{ways}w{shots}s{queries}q-seed{seed}.episodes.zip", "sha256": h}
        if ef not in episode_files:
            episode_files.append(ef)
    with open(path / "per_episode.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(rows)
    meta = {"arch": arch, "seed": seed if finetune_seed is _SAME else finetune_seed, "fewshot_bench_version": "0.1.0"}
    if meta["seed"] is None:
        del meta["seed"]
    if loss is not None:
        meta["loss"] = loss
    meta.update(checkpoint_meta or {})
    summary = {
        "format": "fewshot-bench-run",
        "format_version": format_version,
        "fewshot_bench_version": "0.1.0",
        "created": "2024-01-01T00:00:00+00:00",
        "config": {"seed": seed, "ways": 5, "queries": 15, "episodes": None, "ci_method": ci_method},
        "checkpoint": {"path": f"checkpoints/{arch}-{loss}.pt", "sha256": "c" * 64, "arch": arch, "meta": meta},
        "packages": {"torch": "2.3.0", "numpy": np.__version__},
        "episode_files": episode_files,
        "results": results,
    }
    if protocols is not None:
        summary["protocols"] = {k: dict(v) for k, v in protocols.items()}
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def make_seed_runs(
    root: str | Path,
    name: str,
    per_seed: Mapping[int, Mapping[tuple, Any]],
    **kw: Any,
) -> list[Path]:
    """One run folder per fine-tuning seed, ``root/<name>-s<seed>``, all on the same episodes
    (episode seed ``kw.get("seed", 0)``); ``per_seed`` maps each fine-tuning seed to the
    ``results_per_episode`` of :func:`make_run`. Returns the folders in seed order."""
    return [make_run(Path(root) / f"{name}-s{s}", results, finetune_seed=s, **kw)
            for s, results in sorted(per_seed.items())]


def borderline_pair(p: float, n: int = 20, base: float = 0.5, sign: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``: per-episode accuracies whose two-sided paired t-test gives exactly ``p``, with
    ``mean(a - b)`` of the sign of ``sign`` (differences ``c + e``, ``e = ±0.1`` alternating, ``c``
    solved from the t quantile)."""
    import math

    import scipy.stats

    e = np.tile([0.1, -0.1], n // 2)
    c = scipy.stats.t.ppf(1 - p / 2, n - 1) * e.std(ddof=1) / math.sqrt(n)
    b = np.full(n, base) + np.linspace(-0.05, 0.05, n)
    return b + sign * c + e, b


def holm_loop(p):
    """Holm's step-down adjustment written out: sort ascending, (m - rank) * p, running max, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
