"""``fewshot-bench demo``: the whole flow on real data bundled with scikit-learn.

Fine-tunes a Conv-4 on the 5 base digits (0-4) of ``sklearn.datasets.load_digits`` with
cross-entropy and with CLCE, evaluates both over the same 3,000 fixed 5-way 1-shot and
5-shot episodes of the 5 novel digits (5-9), prints the tables and the paired
comparison, and writes run folders under ``reports/demo/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DEMO", "run_demo"]

#: Training recipe of the demo (small enough for 2 CPU cores). No horizontal flips: a mirrored
#: digit is another symbol, so flipping would teach the backbone wrong invariances.
DEMO = {"arch": "conv4", "epochs": 10, "batch_size": 64, "lr": 3e-3, "optimizer": "adamw",
        "weight_decay": 5e-4, "transform": "unit", "temperature": 0.5, "lam": 0.9, "flip": False}


def run_demo(out: str | Path = "reports/demo", *, episodes: int = 3000, epochs: int | None = None, seed: int = 0,
             episodes_dir: str | Path = "episodes", cache_dir: str | Path | None = None, progress: bool = True,
             losses: Sequence[str] = ("ce", "clce"), log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run the demo; returns ``{loss: run folder}`` (plus ``"compare"`` when two losses ran)."""
    from .benchmark import EvalConfig, format_summary, run_benchmark, write_run
    from .data.digits import load_digits_split
    from .train import finetune
    from .train.losses import get_loss_class

    start = time.perf_counter()
    out = Path(out)
    splits = {"train": load_digits_split("train", cache_dir=cache_dir),
              "test": load_digits_split("test", cache_dir=cache_dir)}
    base, novel = splits["train"], splits["test"]
    log(f"digits: {len(base)} base images of {', '.join(base.class_names)}; "
        f"{len(novel)} novel images of {', '.join(novel.class_names)}")
    runs: dict[str, Path] = {}
    for loss in losses:
        ckpt = out / "checkpoints" / f"{DEMO['arch']}-{loss}.pt"
        t0 = time.perf_counter()
        takes = get_loss_class(loss).param_names()  # CE has no τ or λ
        finetune(base, DEMO["arch"], loss=loss, epochs=epochs or DEMO["epochs"], batch_size=DEMO["batch_size"],
                 lr=DEMO["lr"], optimizer=DEMO["optimizer"], weight_decay=DEMO["weight_decay"],
                 loss_params={k: DEMO[k] for k in ("temperature", "lam") if k in takes}, flip=DEMO["flip"],
                 seed=seed, device="cpu", out=ckpt, transform=DEMO["transform"], progress=progress)
        log(f"fine-tuned {DEMO['arch']} with {loss} on the base digits in {time.perf_counter() - t0:.1f} s -> {ckpt}")
        cfg = EvalConfig(checkpoint=str(ckpt), arch=DEMO["arch"], datasets=["digits"], split="test",
                         shots=(1, 5), queries=15, episodes=episodes, seed=seed, methods=["protonet"],
                         cache_dir=None if cache_dir is None else str(cache_dir),
                         episodes_dir=str(episodes_dir), device="cpu", progress=progress)
        result = run_benchmark(cfg, load_split=lambda dataset, split: splits[split], log=log)
        runs[loss] = out / loss
        write_run(runs[loss], result)
        log(f"\n{DEMO['arch']} fine-tuned with {loss}, ProtoNet on the novel digits:")
        log(format_summary(result.summary))
    if len(runs) >= 2:
        from .report import compare, format_compare, load_run, write_compare_json

        loaded = [load_run(p) for p in runs.values()]
        df = compare(loaded)
        log(f"\npaired comparison over identical episodes ({' vs '.join(runs)}; diff = first - second):")
        log(format_compare(df))
        runs["compare"] = out / "compare.json"
        write_compare_json(df, runs["compare"])
    log(f"\nwrote {', '.join(str(p) for p in runs.values())} in {time.perf_counter() - start:.1f} s")
    return runs
