"""Interrupted and concurrent runs (issue 7), with real processes.

- ``kill -9`` during feature extraction, during the feature-cache write and during the data-cache
  write leaves nothing a later run takes for a complete cache entry; the next run rebuilds and
  gives exactly the arrays of a clean run.
- Two concurrent ``eval`` processes on one cache both succeed with identical results, and the
  features are computed once: the second waits on the entry's file lock, then loads the entry.

Processes run ``tests/_hooked_cli.py`` (the real CLI plus test-only hooks, see that file) so they
can be slowed down, held and killed at a known moment.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fewshot_bench.backbones import create_backbone, save_checkpoint

import synth

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

HOOKED = Path(__file__).with_name("_hooked_cli.py")
N_IMAGES = 60  # CIFAR-FS test split of synth: 20 classes x 3 images
BATCH = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs shared by the tests: CIFAR-FS test pickle, a Conv-4 checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    synth.write_cifar_pickle(root / "data", "cifar-fs", splits=("test",))
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "conv4.pt", create_backbone("conv4", image_size=32), {"loss": "ce"})
    return {"data": root / "data", "ckpt": ckpt}


@pytest.fixture()
def world(inputs, tmp_path):
    return {**inputs, "root": tmp_path, "cache": tmp_path / "cache"}


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory):
    """(images of the data cache, features) of an uninterrupted run in a fresh cache."""
    cache = tmp_path_factory.mktemp("clean") / "cache"
    finish(start(extract_argv(inputs, cache)))
    return cached_arrays(cache)


def extract_argv(w, cache=None):
    return ["extract", "--checkpoint", w["ckpt"], "--arch", "conv4", "--dataset", "cifar-fs", "--data-root",
            w["data"], "--cache-dir", cache or w["cache"], "--batch-size", str(BATCH)]


def eval_argv(w, out):
    return ["eval", "--checkpoint", w["ckpt"], "--arch", "conv4", "--dataset", "cifar-fs", "--data-root",
            w["data"], "--cache-dir", w["cache"], "--episodes-dir", w["root"] / "episodes", "--shots", "1",
            "--queries", "2", "--episodes", "50", "--batch-size", str(BATCH), "--out", out]


def start(argv, **hooks) -> subprocess.Popen:
    env = {**os.environ, **{k: str(v) for k, v in hooks.items()}}
    return subprocess.Popen([sys.executable, str(HOOKED), *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def complete_entries(cache: Path, kind: str) -> list[Path]:
    return sorted(p.parent for p in (cache / kind).glob("**/meta.json"))


def cached_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    (data_entry,) = complete_entries(cache, "data")
    (feat_entry,) = complete_entries(cache, "features")
    return np.load(data_entry / "images.npy"), np.load(feat_entry / "features.npy")


# ------------------------------------------------------------------------------------------ kill -9
def test_kill_during_extraction_then_rebuild(world, clean):
    log = world["root"] / "batches.log"
    proc = start(extract_argv(world), FSB_TEST_BATCH_LOG=log, FSB_TEST_BATCH_DELAY=0.3)
    wait_for(lambda: len(lines(log)) >= 3, proc, what="the third batch")
    kill9(proc)
    assert len(lines(log)) < math.ceil(N_IMAGES / BATCH)  # killed mid-way
    assert complete_entries(world["cache"], "features") == []
    assert len(complete_entries(world["cache"], "data")) == 1  # the data cache was complete before

    finish(start(extract_argv(world)))  # the next run rebuilds
    images, feats = cached_arrays(world["cache"])
    np.testing.assert_array_equal(images, clean[0])
    np.testing.assert_array_equal(feats, clean[1])


@pytest.mark.parametrize("kind", ["features", "data"])
def test_kill_while_the_cache_entry_is_written_then_rebuild(kind, world, clean):
    paused = world["root"] / "paused"
    proc = start(extract_argv(world), FSB_TEST_PAUSE_WRITE=f"/{kind}/", FSB_TEST_PAUSED=paused)
    wait_for(paused.exists, proc, what=f"the {kind} cache write")
    half_written = Path(paused.read_text())
    assert half_written.exists() and half_written.name.endswith(".tmp")
    kill9(proc)
    assert complete_entries(world["cache"], kind) == []  # only temporaries are left ...
    assert half_written.exists()

    finish(start(extract_argv(world)))  # ... and the next run ignores them, rebuilds and cleans up
    assert not half_written.exists()
    images, feats = cached_arrays(world["cache"])
    np.testing.assert_array_equal(images, clean[0])
    np.testing.assert_array_equal(feats, clean[1])
    leftovers = [p for p in world["cache"].rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".tmp"]
    assert leftovers == []


# ---------------------------------------------------------------------------------------- concurrent
def _waits_on_a_lock(pid: int) -> bool:
    """True while ``pid`` is blocked in flock() (a ``->`` line of /proc/locks)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:  # pragma: no cover
        return False
    # "1: -> FLOCK  ADVISORY  WRITE <pid> <dev:inode> 0 EOF"
    return any(ln.split()[1:2] == ["->"] and ln.split()[5] == str(pid) for ln in text.splitlines())


def test_two_concurrent_evals_compute_features_once(world):
    log, hold = world["root"] / "batches.log", world["root"] / "release"
    a = start(eval_argv(world, world["root"] / "run-a"), FSB_TEST_BATCH_LOG=log, FSB_TEST_HOLD=hold)
    wait_for(Path(f"{hold}.waiting").exists, a, what="A to start extracting (holding the entry's lock)")
    b = start(eval_argv(world, world["root"] / "run-b"), FSB_TEST_BATCH_LOG=log)
    if Path("/proc/locks").is_file():  # A holds the entry's lock, held at its first batch: B must wait on it
        wait_for(lambda: _waits_on_a_lock(b.pid), b, what="B to wait on the feature-cache lock")
    else:  # pragma: no cover
        time.sleep(10)
    hold.write_text("go")
    out_a, out_b = finish(a), finish(b)

    pids = {ln.split()[0] for ln in lines(log)}
    assert pids == {str(a.pid)}  # B never extracted
    assert len(lines(log)) == math.ceil(N_IMAGES / BATCH)  # A extracted once
    assert len(complete_entries(world["cache"], "features")) == 1
    assert len(complete_entries(world["cache"], "data")) == 1
    pa = pd.read_csv(world["root"] / "run-a" / "per_episode.csv")
    pb = pd.read_csv(world["root"] / "run-b" / "per_episode.csv")
    pd.testing.assert_frame_equal(pa, pb)
    assert out_a.splitlines()[:-1] == [ln.replace("run-b", "run-a") for ln in out_b.splitlines()[:-1]]
