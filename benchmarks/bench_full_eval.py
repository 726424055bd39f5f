"""One whole ``eval`` of a checkpoint on all four benchmarks, on synthetic data of the real sizes (not a test).

    python benchmarks/bench_full_eval.py --arch conv4 --scale 1 --json full_conv4.json
    python benchmarks/bench_full_eval.py --arch resnet12 --scale 0.05 --json full_resnet12.json
    python benchmarks/bench_full_eval.py --arch resnet12 --device cuda --json full_gpu.json   # the GPU target

Writes the four test splits in real on-disk layouts under ``--workdir`` (a temporary folder by
default), with random uint8 pixels, scaled by ``--scale`` (every class keeps at least 20 images):

* CIFAR-FS and FC100: MetaOptNet ``CIFAR_FS_test.pickle`` / ``FC100_test.pickle`` (``data``
  (N, 32, 32, 3) uint8, ``labels`` CIFAR-100 fine ids of the package's class split tables),
  20 classes x 600 = 12,000 images each;
* miniImageNet: learn2learn ``mini-imagenet-cache-test.pkl`` (``image_data`` (N, 84, 84, 3),
  ``class_dict`` {wnid: rows}), 20 x 600 = 12,000 images;
* tieredImageNet: MetaOptNet ``test_images.npz`` (``images``) + ``test_labels.pkl`` (``labels``
  offset by 448 as in the real files), 160 classes of varying sizes (1,300 for most) adding up to
  206,209 images;

and a randomly initialised ``--arch`` checkpoint, then runs ``fewshot_bench.benchmark.run_benchmark``
(what ``fewshot-bench eval`` runs) once, cold (empty caches), then once more warm (every cache
filled), timing each stage per dataset: *load/decode* (``load_split``: read the files, decode,
hash, write the array cache), *extraction* (``get_features``), *episodes* (``resolve_episode_set``:
draw and write the 3,000-episode files) and *methods* (``evaluate_episodes``). Memory: a thread
samples ``/proc/self/status`` every 5 ms; per stage it reports the peak anonymous RSS above the
level when the stage began (memory-mapped files count as file-backed RSS, so a second in-RAM copy
of the features would show here); ``ru_maxrss`` gives the process peak.
The peak that grows with the number of images is tieredImageNet's minus miniImageNet's (same
image size, model, episodes and heads, so activations and batch buffers cancel), divided by the
difference in feature-matrix size: at most about 1x in extraction (the one in-RAM result array,
before the written cache is memory-mapped; less where freed activation memory is reused for it) and about 0 in the methods; a second copy would add 1x or more.
Use a scale where tieredImageNet's features are large (e.g. ``--arch conv4``, 1,600-d at 84 px).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command_line

import fewshot_bench.benchmark as bench
import fewshot_bench.features as features_mod
from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.data import cifar_fs, fc100, load_split, miniimagenet, tieredimagenet
from fewshot_bench.data.cifar100 import FINE_NAMES

REAL = {"cifar-fs": 12_000, "fc100": 12_000, "miniimagenet": 12_000, "tieredimagenet": 206_209}
DATASETS = list(REAL)


# ------------------------------------------------------------------------------ synthetic data


def _images(rng, n: int, side: int, chunk: int = 4096) -> np.ndarray:
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for a in range(0, n, chunk):
        out[a : a + chunk] = rng.integers(0, 256, (min(chunk, n - a), side, side, 3), dtype=np.uint8)
    return out


def _sizes(n_classes: int, per_class: int, scale: float) -> np.ndarray:
    return np.full(n_classes, max(20, round(per_class * scale)), dtype=np.int64)


def tiered_sizes(scale: float, seed: int) -> np.ndarray:
    """160 class sizes adding up to 206,209 (most 1,300, a few smaller), scaled (>= 20 each)."""
    rng = np.random.default_rng(seed)
    sizes = np.full(160, 1300, dtype=np.int64)
    short = 160 * 1300 - REAL["tieredimagenet"]  # 1,791 images fewer than 160 full classes
    cut = rng.multinomial(short, np.ones(12) / 12)  # spread over 12 random classes
    sizes[rng.choice(160, 12, replace=False)] -= cut
    assert sizes.sum() == REAL["tieredimagenet"]
    return np.maximum(20, np.round(sizes * scale)).astype(np.int64)


def write_data(root: Path, scale: float, seed: int) -> dict[str, int]:
    """The four test splits in their real layouts under ``root``; returns image counts."""
    rng = np.random.default_rng(seed)
    counts = {}
    for name, module, file in (("cifar-fs", cifar_fs, "CIFAR_FS_test.pickle"), ("fc100", fc100, "FC100_test.pickle")):
        fine = [FINE_NAMES.index(c) for c in module.classes("test")]
        labels = np.repeat(fine, _sizes(len(fine), 600, scale))
        order = rng.permutation(len(labels))  # files are not sorted by class
        with open(root / file, "wb") as f:
            pickle.dump({"data": _images(rng, len(labels), 32), "labels": labels[order].tolist()}, f, protocol=4)
        counts[name] = len(labels)
    wnids = miniimagenet.classes("test")
    sizes = _sizes(len(wnids), 600, scale)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    class_dict = {w: list(range(int(starts[i]), int(starts[i + 1]))) for i, w in enumerate(wnids)}
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": _images(rng, int(sizes.sum()), 84), "class_dict": class_dict}, f, protocol=4)
    counts["miniimagenet"] = int(sizes.sum())
    sizes = tiered_sizes(scale, seed)
    labels = np.repeat(448 + np.arange(len(sizes)), sizes)[rng.permutation(int(sizes.sum()))]
    tiered = root / "tiered-imagenet"
    tiered.mkdir(exist_ok=True)
    np.savez(tiered / "test_images.npz", images=_images(rng, len(labels), 84))
    with open(tiered / "test_labels.pkl", "wb") as f:
        pickle.dump({"labels": labels.tolist()}, f, protocol=2)
    counts["tieredimagenet"] = len(labels)
    assert len(tieredimagenet.classes("test")) == len(sizes) == 160
    return counts


# ------------------------------------------------------------------------------ instrumentation


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Meter:
    """Wall time and peak anonymous RSS above the starting level, per (stage, dataset)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.anon_peak_kb: dict[tuple[str, str], int] = defaultdict(int)
        self._current: tuple[str, str] | None = None
        self._base = self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            if self._current is not None:
                self._peak = max(self._peak, _status_kb("RssAnon"))

    @contextlib.contextmanager
    def stage(self, stage: str, dataset: str):
        key = (stage, dataset)
        outer = self._current
        if outer is not None:  # nested (e.g. episodes inside methods): charge the inner stage only
            yield
            return
        self._base = self._peak = _status_kb("RssAnon")
        self._current = key
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] += time.perf_counter() - t0
            self._peak = max(self._peak, _status_kb("RssAnon"))
            self.anon_peak_kb[key] = max(self.anon_peak_kb[key], self._peak - self._base)
            self._current = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def instrument(meter: Meter, data_root: Path, cache: Path):
    """Wrap the stage functions ``run_benchmark`` calls; returns (load_split replacement, undo)."""
    get_features, resolve, evaluate = features_mod.get_features, bench.resolve_episode_set, bench.evaluate_episodes

    def load(dataset, split):
        with meter.stage("load/decode", dataset):
            order = "rgb" if dataset == "tieredimagenet" else None  # synthetic pixels: no BGR warning
            return load_split(dataset, split, data_root, cache_dir=cache, progress=False, channel_order=order)

    def timed_features(checkpoint, arch, split, *a, **kw):
        with meter.stage("extraction", split.dataset):
            return get_features(checkpoint, arch, split, *a, **kw)

    def timed_resolve(spec, split, *a, **kw):
        with meter.stage("episodes", split.dataset):
            return resolve(spec, split, *a, **kw)

    def timed_evaluate(feats, eps, split, *a, **kw):
        with meter.stage("methods", split.dataset):
            return evaluate(feats, eps, split, *a, **kw)

    features_mod.get_features = timed_features
    bench.resolve_episode_set, bench.evaluate_episodes = timed_resolve, timed_evaluate

    def undo():
        features_mod.get_features = get_features
        bench.resolve_episode_set, bench.evaluate_episodes = resolve, evaluate

    return load, undo


# ------------------------------------------------------------------------------ driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet12", choices=["resnet12", "conv4"])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["protonet", "logistic"])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--workdir", type=Path, default=None, help="where data and caches go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep --workdir")
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm-cache) run")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fsb-full-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    data, cache = work / "data", work / "cache"
    data.mkdir(exist_ok=True)
    meter = Meter()
    try:
        t0 = time.perf_counter()
        counts = write_data(data, args.scale, args.seed)
        t_write = time.perf_counter() - t0
        torch.manual_seed(args.seed)
        ckpt = save_checkpoint(work / f"{args.arch}.pt", create_backbone(args.arch, image_size=84), {"loss": "ce"})
        print(f"wrote synthetic test splits {counts} (scale {args.scale}) in {t_write:.1f} s under {work}",
              file=sys.stderr)
        totals = {}
        results = None
        for run in ("cold", "warm")[: 1 if args.no_warm else 2]:
            cfg = bench.EvalConfig(checkpoint=str(ckpt), arch=args.arch, datasets=DATASETS, shots=args.shots,
                                   episodes=args.episodes, methods=args.methods, cache_dir=str(cache),
                                   episodes_dir=str(work / "episodes"), device=args.device,
                                   batch_size=args.batch_size, seed=args.seed, progress=False)
            run_meter = meter if run == "cold" else Meter()
            loader, undo = instrument(run_meter, data, cache)
            try:
                t0 = time.perf_counter()
                result = bench.run_benchmark(cfg, load_split=loader, log=lambda m: None)
                bench.write_run(work / f"run-{run}", result)
                totals[run] = time.perf_counter() - t0
            finally:
                undo()
            if run == "cold":
                results = result
            else:
                warm_stages = dict(run_meter.seconds)
                run_meter.close()
    finally:
        meter.close()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    dims = {side: create_backbone(args.arch, image_size=side).out_dim for side in (32, 84)}
    feat_bytes = {ds: counts[ds] * dims[32 if ds in ("cifar-fs", "fc100") else 84] * 4 for ds in DATASETS}
    stages = ["load/decode", "extraction", "episodes", "methods"]
    rows = []
    for ds in DATASETS:
        row = {"dataset": ds, "images": counts[ds], "features_MB": feat_bytes[ds] / 2**20}
        for st in stages:
            row[f"{st} s"] = meter.seconds.get((st, ds), 0.0)
        for st in stages:
            row[f"{st} peak anon MB"] = meter.anon_peak_kb.get((st, ds), 0) / 1024
        if not args.no_warm:
            row["warm total s"] = sum(v for (st, d2), v in warm_stages.items() if d2 == ds)
        rows.append(row)
    table = pd.DataFrame(rows)
    # Memory that grows with the number of images: tieredImageNet minus miniImageNet (same 84 px images, model,
    # episodes and methods, so activations, batch buffers and head temporaries cancel), per MB of extra features.
    tiered, mini = (table.set_index("dataset").loc[d] for d in ("tieredimagenet", "miniimagenet"))
    extra = tiered["features_MB"] - mini["features_MB"]
    ratio = {st: (tiered[f"{st} peak anon MB"] - mini[f"{st} peak anon MB"]) / extra
             for st in ("extraction", "methods")}
    device = features_mod._resolve_device(args.device)
    print(f"--arch {args.arch} --scale {args.scale} on {device} ({torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs), methods {' '.join(args.methods)}, shots {args.shots}, {args.episodes} "
          f"episodes; torch {torch.__version__}; load average before {load_before[0]:.2f}")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"whole eval, cold caches: {totals['cold']:.1f} s (data writing {t_write:.1f} s not included)"
          + ("" if args.no_warm else f"; again with warm caches: {totals['warm']:.1f} s"))
    print(f"process peak RSS (ru_maxrss): {peak_kb / 1024:.0f} MB")
    print(f"tieredImageNet features {tiered['features_MB']:.0f} MB ({extra:.0f} MB more than miniImageNet's); "
          f"peak anonymous RSS grows with them by {ratio['extraction']:.2f}x in extraction (at most the one in-RAM "
          f"result array, then the written cache is memory-mapped) and {ratio['methods']:.2f}x in the methods "
          "(0 = features only memory-mapped; a copy would add >= 1x)")
    name = (f"tieredImageNet features never held twice: extraction {ratio['extraction']:.2f}x < 2x, "
            f"methods {ratio['methods']:.2f}x < 0.5x")
    if extra < 64:  # activations vary by tens of MB between runs: too small a difference to read
        name += (f" (not checked: {extra:.0f} MB of extra features is within the noise of activation memory; "
                 "use e.g. --arch conv4 --scale 0.1)")
    checks = [(name, None if extra < 64 else ratio["extraction"] < 2 and ratio["methods"] < 0.5)]
    if device.type == "cuda" and args.arch == "resnet12" and args.scale == 1 and len(args.methods) >= 1:
        checks.append((f"whole four-benchmark ResNet-12 evaluation under 2 minutes ({totals['cold']:.0f} s)",
                       totals["cold"] < 120))
    else:
        print("The 2-minute target (ResNet-12, full sizes, one H100-class GPU) needs --device cuda --scale 1; "
              "not checked here.")
    for name, ok in checks:
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        from fewshot_bench._io import atomic_write_json

        atomic_write_json(args.json, {
            "command": command_line("bench_full_eval.py", argv),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average_before": load_before,
            "images": counts, "data_write_s": t_write, "total_s": totals, "ru_maxrss_MB": peak_kb / 1024,
            "tiered_peak_anon_over_features": ratio, "stages": table.to_dict("records"),
            "summary": results.summary["results"] if results is not None else None,
            "checks": [{"check": n, "pass": None if ok is None else bool(ok)} for n, ok in checks],
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
