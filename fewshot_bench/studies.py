"""The CLCE paper's studies as recipes: Table 1 (losses × seeds × datasets), the batch-size
study (Table 3) and the λ study (Fig. 2).

Long et al., *CLCE: An Approach to Refining Cross-Entropy and Contrastive Learning for Optimized
Learning Fusion*, 2024, https://arxiv.org/abs/2402.14551.

Every recipe is the same three steps, run through the library's one path each:

1. :func:`fewshot_bench.train.finetune_seeds` on the train split of each dataset, one checkpoint
   per (setting, seed) under ``OUT/checkpoints/``;
2. :func:`fewshot_bench.benchmark.run_benchmark` on the test split's fixed episode files (the same
   episodes for every checkpoint), one run folder per checkpoint under ``OUT/runs/``;
3. :mod:`fewshot_bench.report`: rows grouped over seeds (median by default, the paper's rule),
   paired tests seed by seed against the first setting (CE in Table 1), written as LaTeX,
   Markdown, CSV and JSON, and for the sweeps a plot (PNG + PDF) of accuracy against the swept value.

Fine-tuning runs with ``resume=True``: run again, a study continues each interrupted fine-tuning
from its last finished epoch (the settings must match, else a one-line error), and features
already extracted come from the cache.
The real scale (ResNet-101 / BEiT at 224 px, 100 epochs, 3,000 episodes) needs a GPU; CI runs
every recipe at a tiny scale on the digits data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write, atomic_write_json
from .errors import ConfigError

__all__ = ["SWEEPS", "Study", "run_study"]

#: sweepable fine-tuning settings: CLI name -> (finetune keyword, value parser, paper figure)
SWEEPS = {
    "batch-size": ("batch_size", int, "Table 3 (batch size)"),
    "lambda": ("lam", float, "Fig. 2 (λ)"),
}


_LOSS_PARAMS = ("lam", "temperature", "beta")


@dataclass
class Study:
    """One study: which losses (rows), seeds, datasets, and an optional swept setting.

    ``finetune`` holds the keyword arguments every fine-tuning run shares (``epochs``, ``lr``,
    ``batch_size``, ``temperature``, ``transform``...); ``sweep`` names a key of :data:`SWEEPS`
    and ``values`` its values (one fine-tuning per loss × value × seed). ``preprocess`` replaces
    every method's feature preprocessing chain (``--preprocess``; ``None``: each method's own).
    """

    arch: str
    datasets: Sequence[str]
    losses: Sequence[str] = ("ce", "h-scl", "ce+supcon", "clce")
    seeds: Sequence[int] = (0, 1, 2)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    sweep: str | None = None
    values: Sequence[Any] = ()
    shots: Sequence[int] = (1, 5)
    ways: int = 5
    queries: int = 15
    episodes: int = 3000
    episode_seed: int = 0
    methods: Sequence[str] = ("protonet",)
    aggregate: str = "median"
    preprocess: str | None = None

    def settings(self) -> list[tuple[str, dict[str, Any], str]]:
        """``(loss, finetune kwargs, row label)`` for every row of the study.

        The loss hyper-parameters of :attr:`finetune` (``lam``, ``temperature``, ``beta``) go only to
        the losses that take them: ``--lam 0.5`` over ``ce clce`` sets CLCE's λ and leaves CE alone.
        """
        from .train.losses import get_loss_class

        taken = {k for loss in self.losses for k in get_loss_class(loss).param_names()}
        unused = [k for k in _LOSS_PARAMS if k in self.finetune and k not in taken]
        if unused:
            raise ConfigError(f"--{unused[0]} is taken by none of --losses {' '.join(self.losses)}; drop it or add a "
                              f"loss that has it")
        rows = []
        values = [None] if self.sweep is None else [SWEEPS[self.sweep][1](v) for v in self.values]
        for loss in self.losses:
            takes = set(get_loss_class(loss).param_names())
            base = {k: v for k, v in self.finetune.items() if k not in _LOSS_PARAMS or k in takes}
            for v in values:
                if v is None:
                    rows.append((loss, base, loss))
                    continue
                key = SWEEPS[self.sweep][0]
                if key in _LOSS_PARAMS and key not in takes:
                    raise ConfigError(f"sweep {self.sweep}: loss {loss} has no {key}; sweep it over losses "
                                      f"that take one (e.g. --losses clce ce+supcon)")
                rows.append((loss, {**base, key: v}, f"{loss} {self.sweep}={v:g}"))
        return rows


def _check(study: Study) -> None:
    """Everything that can be checked before the first fine-tuning starts (so a typo never costs a
    finished run): losses, seeds, methods, swept values (each one built into its loss)."""
    from .errors import UnknownNameError
    from .methods import get_method_class
    from .preprocess import parse_preprocessing
    from .train.losses import create_loss, get_loss_class

    if not study.losses:
        raise ConfigError("--losses needs at least one loss, e.g. --losses ce clce")
    for loss in study.losses:
        try:
            get_loss_class(loss)
        except UnknownNameError as exc:
            raise UnknownNameError(str(exc).replace("(--loss)", "(--losses)")) from None
    if not study.seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    for name in study.methods:
        get_method_class(name)
    if study.preprocess is not None:
        parse_preprocessing(study.preprocess, what="--preprocess")
    if study.sweep is not None:
        if study.sweep not in SWEEPS:
            raise ConfigError(f"unknown sweep {study.sweep!r}; choose from {', '.join(SWEEPS)}")
        if not study.values:
            raise ConfigError(f"sweep {study.sweep} needs --values, e.g. --values 64 128 256")
        key, parse, _ = SWEEPS[study.sweep]
        parsed = []
        for v in study.values:
            try:
                parsed.append(parse(v))
            except (TypeError, ValueError):
                raise ConfigError(f"--values {v!r} is not a valid {study.sweep}") from None
        dup = next((v for v in parsed if parsed.count(v) > 1), None)
        if dup is not None:
            raise ConfigError(f"--values lists {dup:g} twice; give distinct values")
        if key == "batch_size" and min(parsed) < 2:
            raise ConfigError(f"--values {min(parsed)}: a batch size must be an integer >= 2")
    for loss, kw, label in study.settings():  # every swept loss parameter builds its loss
        try:
            create_loss(loss, **{k: v for k, v in kw.items() if k in _LOSS_PARAMS})
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text.replace("+", "plus").replace(" ", "_"))


def run_study(study: Study, out: str | Path, *, load_split: Callable[[str, str], Any],
              cache_dir: str | None = None, episodes_dir: str | Path = "episodes", device: str | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Fine-tune, evaluate and tabulate ``study`` under ``out``; return the files written.

    ``load_split(dataset, split) -> Split`` reads the data (the CLI passes the on-disk loaders).
    """
    from .benchmark import EvalConfig, run_benchmark, write_run
    from .report import compare, load_run, make_table, write_compare_json
    from .train import finetune_seeds

    _check(study)
    out = Path(out)
    settings = study.settings()
    runs: list[str] = []
    labels: dict[str, str] = {}
    sweep_rows: list[dict[str, Any]] = []
    splits = {(d, part): load_split(d, part) for d in study.datasets for part in ("train", "test")}  # fail before training
    for dataset in study.datasets:
        train = splits[(dataset, "train")]
        for loss, kw, label in settings:
            ckpt = out / "checkpoints" / dataset / f"{_slug(label)}.pt"
            paths = finetune_seeds(train, study.arch, loss=loss, seeds=list(study.seeds), out=ckpt,
                                   device=device, progress=progress, resume=True, **kw)
            for seed, path in zip(study.seeds, paths):
                run_dir = out / "runs" / dataset / f"{_slug(label)}-seed{seed}"
                cfg = EvalConfig(checkpoint=str(path), arch=None, datasets=[dataset], split="test",
                                 ways=study.ways, shots=tuple(study.shots), queries=study.queries,
                                 episodes=study.episodes, seed=study.episode_seed, methods=tuple(study.methods),
                                 preprocess=study.preprocess, cache_dir=cache_dir, episodes_dir=str(episodes_dir),
                                 device=device, progress=progress)
                result = run_benchmark(cfg, load_split=load_split, log=lambda m: None)
                write_run(run_dir, result)
                runs.append(str(run_dir))
                labels[str(run_dir)] = label
                if study.sweep is not None:
                    for r in result.summary["results"]:
                        sweep_rows.append({"dataset": dataset, "loss": loss, "value": kw[SWEEPS[study.sweep][0]],
                                           "seed": seed, "shots": r["shots"], "method": r["method"],
                                           "mean": r["mean"], "ci95": r["ci95"]})
            log(f"{dataset}: {label} fine-tuned and evaluated over seeds {', '.join(map(str, study.seeds))}")

    files: dict[str, Path] = {}
    loaded = [load_run(p) for p in runs]
    baseline = next(r for r in loaded if labels[str(r.path)] == settings[0][2])
    for fmt, ext in (("latex", "tex"), ("markdown", "md"), ("csv", "csv"), ("json", "json")):
        text = make_table(loaded, fmt=fmt, baseline=baseline, labels=labels, aggregate=study.aggregate)
        files[f"table_{ext}"] = out / f"table.{ext}"
        with atomic_write(files[f"table_{ext}"], "w") as f:
            f.write(text)
    if len(settings) > 1:
        df = compare(loaded, baseline=baseline, labels=labels, aggregate=study.aggregate)
        files["compare"] = out / "compare.json"
        write_compare_json(df, files["compare"])
    if study.sweep is not None:
        files.update(_write_sweep(study, out, sweep_rows))
    files["study"] = out / "study.json"
    atomic_write_json(files["study"], {"format": "fewshot-bench-study", "format_version": 1,
                                       "study": _plain_study(study), "runs": runs, "labels": labels})
    return files


def _plain_study(study: Study) -> dict[str, Any]:
    d = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in study.__dict__.items()}
    d["finetune"] = json.loads(json.dumps(dict(study.finetune), default=str))
    return d


def _write_sweep(study: Study, out: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """The sweep table (per loss × value × shots: median over seeds and its range) and its plot."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(rows)
    agg = (df.groupby(["dataset", "method", "shots", "loss", "value"], sort=False)
             .agg(n_seeds=("seed", "size"), median=("mean", "median"), mean_of_means=("mean", "mean"),
                  min=("mean", "min"), max=("mean", "max"), median_ci95=("ci95", "median"))
             .reset_index())
    files = {"sweep_csv": out / f"sweep-{study.sweep}.csv"}
    with atomic_write(files["sweep_csv"], "w") as f:
        agg.to_csv(f, index=False, lineterminator="\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(agg.groupby(["dataset", "method", "shots"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, ((dataset, method, shots), g) in zip(axes[0], groups):
        for loss, gl in g.groupby("loss", sort=False):
            x = gl["value"].to_numpy(dtype=float)
            y = 100 * gl["median"].to_numpy()
            err = 100 * np.vstack([gl["median"] - gl["min"], gl["max"] - gl["median"]])
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=loss)
        ax.set_title(f"{dataset}, 5-way {shots}-shot, {method}", fontsize=9)
        ax.set_xlabel(study.sweep)
        if study.sweep == "batch-size":
            ax.set_xscale("log", base=2)
        ax.set_ylabel("accuracy (%), median over seeds")
        ax.legend(fontsize=8)
    fig.suptitle(f"{SWEEPS[study.sweep][2]}: bars span the per-seed range", fontsize=9)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        files[f"sweep_{ext}"] = out / f"sweep-{study.sweep}.{ext}"
        with atomic_write(files[f"sweep_{ext}"], "wb") as f:
            fig.savefig(f, format=ext, dpi=120)
    plt.close(fig)
    return files
