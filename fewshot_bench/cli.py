"""The ``fewshot-bench`` command: parse, call the library, render, map user errors to one line.

Heavy imports (torch, timm) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, EpisodeError, FewshotBenchError

__all__ = ["build_parser", "main"]

EPILOG = """\
typical session:
  fewshot-bench demo                                   # the whole flow on scikit-learn digits
  fewshot-bench datasets --data-root ~/data            # what is found where
  fewshot-bench eval --checkpoint ckpt.pt --arch resnet12 --dataset cifar-fs fc100 \\
      --data-root ~/data --out reports/my-run           # mean ± 95% CI over 3,000 episodes
  fewshot-bench table reports/run-a reports/run-b --format latex --baseline reports/run-a

Run `fewshot-bench COMMAND --help` for the flags of one command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends a flag's default where it says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default is not argparse.SUPPRESS
                and default is not None and not isinstance(default, bool)):
            text += " (default: %(default)s)"
        return text


def _int_at_least(minimum: int, what: str):
    """An argparse ``type`` accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["logistic.C=0.5", "knn.k=3"]`` -> ``{"logistic": {"C": 0.5}, "knn": {"k": 3}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot or not method or not param:
            raise ConfigError(f"--param {item!r} is not METHOD.NAME=VALUE, e.g. --param logistic.C=0.5")
        out.setdefault(method, {})[param] = _parse_value(value)
    return out


# --------------------------------------------------------------------------- shared flags
def _add_data_flags(p: argparse.ArgumentParser, *, many: bool = True) -> None:
    p.add_argument("--dataset", nargs="+" if many else None, required=True, metavar="NAME",
                   help="benchmark name(s): cifar-fs, fc100, miniimagenet, tieredimagenet, image-folder "
                        "(see `fewshot-bench datasets`)")
    p.add_argument("--data-root", required=True, metavar="DIR",
                   help="folder holding the dataset files (layouts are detected; see `fewshot-bench datasets`)")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side length image folders are resized to (default: the benchmark's native size)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache for decoded arrays and features (default: $FEWSHOT_BENCH_CACHE or "
                        "~/.cache/fewshot-bench)")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="backbone checkpoint (.pt/.pth; nested state_dict/model/EMA and module. prefixes are "
                        "understood); 'none' evaluates a randomly initialised backbone (a sanity baseline)")
    p.add_argument("--arch", required=True, metavar="ARCH",
                   help="conv4, resnet12, or any timm model as timm:NAME (e.g. timm:resnet50)")
    p.add_argument("--transform", default=None, metavar="NAME",
                   help="eval transform preset (default: the dataset's documented one), e.g. metaoptnet-cifar, "
                        "metaoptnet-mini, imagenet-84, imagenet-224")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass")


def _add_episode_flags(p: argparse.ArgumentParser, *, episodes_dir: bool = True) -> None:
    p.add_argument("--ways", type=_positive_int, default=5, metavar="N", help="classes per episode")
    p.add_argument("--shots", type=_positive_int, nargs="+", default=[1, 5], metavar="K",
                   help="support images per class (one episode set per value)")
    p.add_argument("--queries", type=_positive_int, default=15, metavar="Q", help="query images per class")
    p.add_argument("--episodes", type=_positive_int, default=3000, metavar="E", help="episodes per set")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the episode sampler")
    if episodes_dir:
        p.add_argument("--episodes-dir", default="episodes", metavar="DIR",
                       help="where episode files are read from, and written on first use")


def _checkpoint_arg(text: str) -> str | None:
    if text.lower() == "none":
        return None
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {text} does not exist; give the path of a .pt/.pth file or 'none'")
    return str(path)


def _progress() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def _process_group():
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the default process group for one command.

    Yields the :class:`~fewshot_bench.distributed.DistInfo`; a group this created is left on exit.
    """
    import torch.distributed as dist

    from . import distributed as D

    existed = dist.is_available() and dist.is_initialized()
    info = D.init_from_env()
    try:
        yield info
    finally:
        if info.distributed and not existed and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, episodes=args.episodes, epochs=args.epochs, seed=args.seed,
             episodes_dir=args.episodes_dir, cache_dir=args.cache_dir, progress=_progress())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .benchmark import EvalConfig, format_summary, run_benchmark, write_run

    cfg = EvalConfig(
        checkpoint=_checkpoint_arg(args.checkpoint), arch=args.arch, datasets=args.dataset,
        data_root=args.data_root, split=args.split, ways=args.ways, shots=tuple(args.shots),
        queries=args.queries, episodes=args.episodes, seed=args.seed, methods=args.methods,
        method_params=_method_params(args.param), transform=args.transform, image_size=args.image_size,
        cache_dir=args.cache_dir, episodes_dir=args.episodes_dir, device=args.device,
        batch_size=args.batch_size, ci_method=args.ci, progress=_progress())
    log = functools.partial(print, file=sys.stderr)
    with _process_group() as info:  # torchrun: every rank extracts its shard, rank 0 evaluates
        if info.distributed:
            import dataclasses

            import torch.distributed as dist

            from .benchmark import extract_all

            extract_all(dataclasses.replace(cfg, progress=cfg.progress and info.rank == 0))
            dist.barrier()
            dist.destroy_process_group()  # rank 0 goes on alone; the others are done
            if info.rank != 0:
                return 0
    result = run_benchmark(cfg, log=log)
    paths = write_run(args.out, result)
    if args.json:
        print(json.dumps(result.summary, indent=2, sort_keys=True))
    else:
        print(format_summary(result.summary))
        print(f"wrote {paths['per_episode']}, {paths['summary']}, {paths['summary_csv']}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import describe_datasets

    print(describe_datasets(args.data_root))
    return 0


def cmd_episodes(args: argparse.Namespace) -> int:
    from .episodes import EpisodeSet, EpisodeSpec, default_filename

    out_dir = Path(args.out_dir)
    for dataset in args.dataset:
        for split_name in args.split:
            if args.data_root:
                from .data import load_split

                split = load_split(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                                   image_size=args.image_size, progress=_progress())
                structure = None
            else:
                from .data import class_structure

                structure = class_structure(dataset, split_name)  # (names, sizes) or error
            for shots in args.shots:
                spec = EpisodeSpec(args.ways, shots, args.queries, args.episodes, args.seed)
                if structure is None:
                    eps = EpisodeSet.from_split(spec, split)
                else:
                    names, sizes = structure
                    eps = EpisodeSet.draw(spec, dataset=dataset, split=split_name, class_names=names,
                                          class_sizes=sizes)
                path = eps.save(out_dir / default_filename(dataset, split_name, spec))
                bound = "bound to the data's fingerprint" if eps.data_fingerprint else "from the class structure"
                print(f"{path}  sha256={eps.sha256()[:16]}  ({bound})")
    return 0


def _checkpoint_meta(checkpoint: str | None) -> dict[str, Any]:
    from .backbones import read_checkpoint_meta

    return read_checkpoint_meta(checkpoint) if checkpoint else {}


def cmd_extract(args: argparse.Namespace) -> int:
    from .benchmark import eval_transform_for
    from .data import load_split
    from .features import get_features

    checkpoint = _checkpoint_arg(args.checkpoint)
    meta = _checkpoint_meta(checkpoint)
    with _process_group() as info:  # torchrun: each rank embeds a shard, rank 0 writes the cache
        main, progress = info.rank == 0, _progress() and info.rank == 0
        for dataset in args.dataset:
            for split_name in args.split:
                split = load_split(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                                   image_size=args.image_size, progress=progress)
                tf = eval_transform_for(args.transform, dataset, meta)
                feats = get_features(checkpoint, args.arch, split, tf, cache_dir=args.cache_dir,
                                     device=args.device, batch_size=args.batch_size, progress=progress)
                if main:
                    print(f"{dataset}/{split_name}: features {feats.shape[0]}×{feats.shape[1]} cached "
                          f"(transform {tf.name})")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .data import load_split
    from .train import finetune

    split = load_split(args.dataset, "train", args.data_root, cache_dir=args.cache_dir,
                       image_size=args.image_size, progress=_progress())
    path = finetune(split, args.arch, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                    momentum=args.momentum, warmup_epochs=args.warmup_epochs, embed_dim=args.embed_dim,
                    augment=args.augment, flip=args.flip, temperature=args.temperature, lam=args.lam, seed=args.seed, device=args.device,
                    out=Path(args.out), resume=args.resume, transform=args.transform, progress=_progress())
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"wrote {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare_cifar_benchmark

    for path in prepare_cifar_benchmark(args.benchmark, args.cifar100, args.out):
        print(f"wrote {path}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import pandas as pd

    from .methods import describe

    rows = [info._asdict() for info in describe()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    df = pd.DataFrame(rows)
    df["kind"] = ["transductive" if t else "inductive" for t in df["transductive"]]
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(df[["name", "kind", "description", "paper"]].to_string(index=False))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare, format_compare, load_run, write_compare_json

    runs = [load_run(p) for p in args.runs]
    baseline = load_run(args.baseline) if args.baseline else None
    df = compare(runs, baseline=baseline)
    print(format_compare(df))
    out = Path(args.out) if args.out else Path(args.runs[0]) / "compare.json"
    write_compare_json(df, out)
    print(f"wrote {out}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from ._io import atomic_write
    from .report import load_run, make_table

    labels = {}
    for item in args.label or []:
        run, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--label {item!r} is not RUN=TEXT, e.g. --label reports/a='ResNet-12 + CLCE'")
        labels[str(Path(run))] = text
    runs = [load_run(p) for p in args.runs]
    baseline = load_run(args.baseline) if args.baseline else None
    text = make_table(runs, fmt=args.format, baseline=baseline, labels=labels, caption=args.caption)
    if args.out:
        with atomic_write(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_accuracy, plot_paired_differences
    from .report import load_run

    runs = [load_run(p) for p in args.runs]
    out = Path(args.out)
    paths = list(plot_accuracy(runs, out))
    for path_b, other in zip(args.runs[1:], runs[1:]):
        try:
            paths += list(plot_paired_differences(runs[0], other, out))
        except EpisodeError as exc:
            print(f"skipped paired differences {args.runs[0]} vs {path_b}: {exc}", file=sys.stderr)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import numpy as np

    from .benchmark import eval_transform_for
    from .data import load_split
    from .diagnose import diagnose, format_diagnosis
    from .features import get_features

    checkpoint = _checkpoint_arg(args.checkpoint)
    split = load_split(args.dataset, args.split, args.data_root, cache_dir=args.cache_dir,
                       image_size=args.image_size, progress=_progress())
    tf = eval_transform_for(args.transform, args.dataset, _checkpoint_meta(checkpoint))
    feats = get_features(checkpoint, args.arch, split, tf, cache_dir=args.cache_dir,
                         device=args.device, batch_size=args.batch_size, progress=_progress())
    result = diagnose(feats, np.asarray(split.labels), out_dir=args.out, seed=args.seed)
    print(format_diagnosis(result))
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-bench", formatter_class=_Formatter, epilog=EPILOG,
        description="Benchmark image backbones on episodic few-shot classification: fixed episodes, "
                    "cached features, mean accuracy with 95%% confidence intervals.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "run the whole flow on scikit-learn's digits (no download): fine-tune, evaluate",
            "Fine-tune a Conv-4 on 5 base digits of sklearn.datasets.load_digits, then evaluate 5-way 1-shot "
            "and 5-shot over 3,000 fixed episodes of the 5 novel digits; prints the table and writes a run "
            "folder.")
    p.add_argument("--out", default="reports/demo", help="run folder to write")
    p.add_argument("--episodes", type=_positive_int, default=3000, help="episodes per set")
    p.add_argument("--epochs", type=_positive_int, default=None, help="fine-tuning epochs (default: the demo's)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed for training and episodes")
    p.add_argument("--episodes-dir", default="episodes", help="where episode files are read/written")
    p.add_argument("--cache-dir", default=None, help="feature cache folder")

    p = add("eval", cmd_eval, "benchmark a checkpoint: mean accuracy ± 95%% CI over fixed episodes",
            "Evaluate a backbone checkpoint on one or more benchmarks over fixed episode files; writes "
            "RUN/per_episode.csv, RUN/summary.json and RUN/summary.csv and prints a table.")
    _add_model_flags(p)
    _add_data_flags(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate on")
    _add_episode_flags(p)
    p.add_argument("--methods", nargs="+", default=["protonet"], metavar="METHOD",
                   help="few-shot heads (see `fewshot-bench methods`), or path/to/file.py:ClassName")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="method hyper-parameter, repeatable, e.g. --param logistic.C=0.5")
    p.add_argument("--ci", default="t", choices=["t", "normal"], help="confidence interval: Student t or normal")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write, e.g. reports/my-run")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")

    p = add("datasets", cmd_datasets, "list supported benchmarks and the layouts found under a data root")
    p.add_argument("--data-root", default=None, metavar="DIR", help="show what is found under DIR")

    p = add("episodes", cmd_episodes, "write fixed episode files",
            "Draw episode sets and save them as files. With --data-root the set is drawn from the data and "
            "bound to its fingerprint; without it, from the benchmark's known class structure.")
    p.add_argument("--dataset", nargs="+", required=True, metavar="NAME")
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--data-root", default=None, metavar="DIR")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX")
    p.add_argument("--cache-dir", default=None, metavar="DIR")
    _add_episode_flags(p, episodes_dir=False)
    p.add_argument("--out-dir", default="episodes", metavar="DIR", help="folder to write the files into")

    p = add("extract", cmd_extract, "fill the feature cache only (no evaluation)")
    _add_model_flags(p)
    _add_data_flags(p)
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"])

    p = add("finetune", cmd_finetune, "fine-tune a backbone on a benchmark's train split",
            "Train ARCH with a linear head on the train split and write a checkpoint with metadata "
            "(arch, loss, dataset, epochs, seed, data fingerprint) that eval and table use.")
    p.add_argument("--arch", required=True, metavar="ARCH")
    _add_data_flags(p, many=False)
    p.add_argument("--loss", default="ce", help="ce, supcon, clce (CE + label-aware contrastive), clce-nohnm")
    p.add_argument("--epochs", type=_positive_int, required=True)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--warmup-epochs", type=_nonneg_int, default=0, help="linear warm-up before the cosine decay")
    p.add_argument("--embed-dim", type=_positive_int, default=128, help="projection size of the contrastive term")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as stored (default: random crop with padding + flip)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="augment without horizontal flips (for data whose mirror image is another class)")
    p.add_argument("--temperature", type=float, default=0.5, help="τ of the contrastive term")
    p.add_argument("--lam", type=float, default=0.9, help="λ of CLCE: (1-λ)·CE + λ·LACLN")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--transform", default=None, metavar="NAME", help="normalisation preset used in training")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last epoch state")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write, e.g. checkpoints/ce.pt")

    p = add("prepare", cmd_prepare, "build CIFAR-FS or FC100 from the official CIFAR-100 files",
            "Merge CIFAR-100's train and test sets (600 images per class) and write the benchmark as "
            "MetaOptNet-format pickles, which `eval --data-root OUT` then reads.")
    p.add_argument("benchmark", choices=["cifar-fs", "fc100"])
    p.add_argument("--cifar100", required=True, metavar="DIR", help="the extracted cifar-100-python folder")
    p.add_argument("--out", required=True, metavar="DIR")

    p = add("methods", cmd_methods, "list the few-shot methods (built-in and plug-ins)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("compare", cmd_compare, "paired comparison of runs over identical episodes",
            "For every dataset × shots × method the runs share: mean difference with its CI, paired t and "
            "Wilcoxon p-values (Holm-adjusted), verdicts at α = 0.01 and 0.05. Writes compare.json.")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--baseline", default=None, metavar="RUN", help="compare every run against this one")
    p.add_argument("--out", default=None, metavar="FILE", help="JSON output (default: RUN_A/compare.json)")

    p = add("table", cmd_table, "result table (LaTeX/Markdown/CSV) in the layout of the CLCE paper's Table 1")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--format", default="latex", choices=["latex", "markdown", "csv"])
    p.add_argument("--baseline", default=None, metavar="RUN", help="mark rows that beat it (paired t-test)")
    p.add_argument("--label", action="append", metavar="RUN=TEXT", help="row label for a run, repeatable")
    p.add_argument("--caption", default=None)
    p.add_argument("--out", default=None, metavar="FILE")

    p = add("plot", cmd_plot, "accuracy-with-CI plots and paired-difference histograms (PNG + PDF)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", default="reports/plots", metavar="DIR")

    p = add("diagnose", cmd_diagnose, "feature diagnostics: cosine-similarity histograms and isotropy",
            "Positive vs negative pair cosine-similarity histograms and the isotropy score "
            "(Mu & Viswanath, 2018) of a cached feature set, as in the CLCE paper's Figs. 3-4 and Table 5.")
    _add_model_flags(p)
    _add_data_flags(p, many=False)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the pair subsample")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # "Warning: <message>", not the source line
    try:
        return int(args.func(args) or 0)
    except FewshotBenchError as exc:
        print(f"Error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        return 1
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"Error: {exc.filename}: {exc.strerror}; check the path and its permissions", file=sys.stderr)
        return 1
    except OSError as exc:  # a full or read-only disk outside the atomic writers (lock files, folders)
        if exc.errno not in _DISK_ERRNOS:
            raise
        print(f"Error: {exc.filename or 'a file'}: cannot write, the disk is full or read-only ({exc.strerror}); "
              "free space or choose another folder (--cache-dir for the cache, --out for results)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"Warning: {' '.join(str(message).split())}\n"
