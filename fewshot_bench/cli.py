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
from .errors import ConfigError, FewshotBenchError, int_arg

__all__ = ["build_parser", "main"]

EPILOG = """\
typical session:
  fewshot-bench demo                                   # the whole flow on scikit-learn digits
  fewshot-bench datasets --data-root ~/data            # what is found where
  fewshot-bench eval --checkpoint ckpt.pt --arch resnet12 --dataset cifar-fs fc100 \\
      --data-root ~/data --out reports/my-run           # mean ± 95% CI over 3,000 episodes
  fewshot-bench eval --checkpoint rfs_resnet12_last.pth --preset rfs-resnet12 --dataset miniimagenet \\
      --data-root ~/data --out reports/rfs          # a published checkpoint, as its paper evaluated it
  fewshot-bench finetune --arch resnet12 --dataset cifar-fs --data-root ~/data --loss clce \\
      --epochs 100 --seeds 0 1 2 --out checkpoints/clce.pt
  fewshot-bench table reports/run-a reports/run-b --format latex --baseline reports/run-a
  fewshot-bench archs | losses | methods              # what can be plugged in

Run `fewshot-bench COMMAND --help` for the flags of one command.
"""


#: ``--help`` epilog of each command without an example in its description (tests/test_readme.py checks
#: that every command's help shows at least one invocation of itself)
_EXAMPLES = {
    "demo": "example:\n  fewshot-bench demo --out reports/demo        # ~10 epochs x 2 losses on CPU, then 2 x 3,000 episodes",
    "datasets": "examples:\n  fewshot-bench datasets                        # benchmarks, splits, class counts, layouts\n"
                "  fewshot-bench datasets --data-root ~/data     # ... and what is found where",
    "episodes": "examples:\n"
                "  fewshot-bench episodes --dataset cifar-fs --split val test --shots 1 5\n"
                "  fewshot-bench episodes --dataset image-folder --data-root ~/data/birds --ways 5 10 --out-dir episodes\n"
                "  fewshot-bench episodes import runs.csv --dataset image-folder --data-root ~/data/birds --out runs.episodes.zip\n"
                "  fewshot-bench episodes export runs.episodes.zip --format json --by index --out runs.json",
    "extract": "example:\n  fewshot-bench extract --checkpoint ckpt.pt --arch resnet12 --dataset cifar-fs --data-root ~/data \\\n"
               "      --split train test",
    "methods": "example:\n  fewshot-bench methods --json",
    "losses": "example:\n  fewshot-bench losses",
    "archs": "example:\n  fewshot-bench archs --json",
    "prepare": "example:\n  fewshot-bench prepare cifar-fs --cifar100 ~/data/cifar-100-python --out ~/data/CIFAR-FS",
    "compare": "example:\n  fewshot-bench compare reports/ce reports/clce --baseline reports/ce --out reports/compare.json",
    "table": "example:\n  fewshot-bench table reports/ce reports/clce --format latex --baseline reports/ce \\\n"
             "      --label reports/clce=\"ResNet-12 + CLCE\" --out reports/table1.tex",
    "plot": "example:\n  fewshot-bench plot reports/ce reports/clce --out reports/plots",
    "diagnose": "example:\n  fewshot-bench diagnose --checkpoint ckpt.pt --arch resnet12 --dataset cifar-fs --data-root ~/data \\\n"
                "      --out reports/diag",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends a flag's default where it says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default is not argparse.SUPPRESS
                and default is not None and not isinstance(default, bool)):
            text += " (default: %(default)s)"
        return text


_positive_int = int_arg(1, "positive")  # argparse types; the rule is errors.check_int's
_nonneg_int = int_arg(0, "non-negative")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["logistic.C=0.5", "knn.k=3"]`` -> ``{"logistic": {"C": 0.5}, "knn": {"k": 3}}``; the name is
    after the last dot, so a method given as a file (``my/head.py:Head.k=3``) keeps its path."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, param = key.rpartition(".")
        if not sep or not dot or not method or not param:
            raise ConfigError(f"--param {item!r} is not METHOD.NAME=VALUE, e.g. --param logistic.C=0.5")
        out.setdefault(method, {})[param] = _parse_value(value)
    return out


def _preprocess_arg(text: str | None) -> str | None:
    """``--preprocess``: ``None`` (each method's declared chain) or the canonical spec of a valid chain;
    a bad chain fails here, before any data is decoded."""
    from .preprocess import parse_preprocessing

    return None if text is None else parse_preprocessing(text, what="--preprocess").spec


_PREPROCESS_HELP = ("feature preprocessing for every method, steps joined by '+': none, l2n, center, cl2n, "
                    "power[:BETA] (e.g. l2n, power:0.5+cl2n); centring uses the train split's mean feature "
                    "(default: each method's own chain, see `fewshot-bench methods`)")


# --------------------------------------------------------------------------- shared flags
def _add_data_flags(p: argparse.ArgumentParser, *, many: bool = True) -> None:
    p.add_argument("--dataset", nargs="+" if many else None, required=True, metavar="NAME",
                   help="benchmark name(s): cifar-fs, fc100, miniimagenet, tieredimagenet, image-folder "
                        "(see `fewshot-bench datasets`)")
    p.add_argument("--data-root", required=True, metavar="DIR",
                   help="folder holding the dataset files (layouts are detected; see `fewshot-bench datasets`)")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side length image folders are resized to (default: the benchmark's native size)")
    _add_cache_dir(p, "decoded arrays and features")


def _add_cache_dir(p: argparse.ArgumentParser, holds: str) -> None:
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help=f"cache for {holds} (default: $FEWSHOT_BENCH_CACHE or ~/.cache/fewshot-bench)")


def _add_model_flags(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", nargs="+" if many else None,
                   help="backbone checkpoint (.pt/.pth/.safetensors; the RFS, MetaOptNet, FEAT, S2M2, ProtoNet, "
                        "easyfsl, LibFewShot and timm layouts are recognised and every key must be accounted for); "
                        "'none' evaluates a randomly initialised backbone (a sanity baseline)"
                        + ("; several checkpoints (e.g. one per fine-tuning seed) give one run folder each" if many
                           else ""))
    p.add_argument("--arch", default=None, metavar="ARCH",
                   help="architecture (see `fewshot-bench archs`): conv4, resnet12, seresnet12, wrn28_10, resnet18, "
                        "or any timm model as timm:NAME (default: the preset's, else the checkpoint's own)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a paper's evaluation protocol: architecture, image size, normalisation and pooling "
                        "(rfs-resnet12, rfs-seresnet12, metaoptnet-resnet12, feat-resnet12, s2m2-wrn28, "
                        "protonet-conv4; see `fewshot-bench archs`)")
    p.add_argument("--transform", default=None, metavar="NAME",
                   help="eval transform (default: the preset's, else the checkpoint's stored protocol, else the "
                        "dataset's documented one), e.g. metaoptnet-cifar, metaoptnet-mini, imagenet-84, imagenet-224")
    p.add_argument("--pool", default=None, choices=["avg", "none"],
                   help="pooling of the final feature map: avg (global average) or none (flattened, MetaOptNet) "
                        "(default: the preset's, else the checkpoint's, else the architecture's own)")
    p.add_argument("--arch-kw", action="append", metavar="NAME=VALUE",
                   help="architecture keyword argument, repeatable, e.g. --arch-kw hidden=32 for a narrow Conv-4")
    p.add_argument("--force-protocol", action="store_true",
                   help="let --arch/--transform/--pool override the preset's or the checkpoint's protocol "
                        "(recorded in summary.json)")
    p.add_argument("--allow-partial", action="store_true",
                   help="load a checkpoint that does not fully fit --arch: copy the tensors that fit, leave the "
                        "rest at random initialisation and print the load report (missing, unexpected and "
                        "mismatched keys) instead of refusing; the report is recorded in summary.json")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """The fine-tuning hyper-parameters shared by ``finetune``, ``reproduce`` and ``sweep``."""
    p.add_argument("--lam", type=float, default=None,
                   help="λ of the CE/contrastive mixes: (1-λ)·CE + λ·contrastive (default: the loss's, 0.9)")
    p.add_argument("--temperature", type=float, default=None,
                   help="τ of the contrastive term (default: the loss's, e.g. 0.5 for CLCE, 0.1 for SupCon)")
    p.add_argument("--beta", type=float, default=None, help="concentration β of the H-SCL losses (default: 1.0)")
    p.add_argument("--contrast-on", default=None, choices=["encoder", "projection"],
                   help="where the contrastive term acts: the backbone's embedding (the CLCE paper; the default) or "
                        "a projection head (SupCon); recorded in the checkpoint")
    p.add_argument("--epochs", type=_positive_int, required=True, help="passes over the train split")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (after warm-up; cosine decay per step)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="AdamW or SGD with --momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay on every parameter")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--warmup-epochs", type=_nonneg_int, default=0, help="linear warm-up before the cosine decay")
    p.add_argument("--embed-dim", type=_positive_int, default=None,
                   help="output size of the projection head, with --contrast-on projection (default: 128)")
    p.add_argument("--arch-kw", action="append", metavar="NAME=VALUE",
                   help="architecture keyword argument, repeatable, e.g. --arch-kw hidden=32 (stored in the checkpoint)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as stored (default: random crop with padding + flip)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="augment without horizontal flips (for data whose mirror image is another class)")
    p.add_argument("--transform", default=None, metavar="NAME", help="input transform preset used in training")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="start from these weights (.safetensors or a .pt state dict), loaded strictly; a timm "
                        "model's pretrained_cfg sets the input size and normalisation unless --transform/--image-size")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p._option_string_actions["--image-size"].help = (
        "train at PX x PX: the input transform resizes to it (no crop) and the checkpoint records it; "
        "image folders are also decoded at this size (default: the transform's / data's native size)")


def _training_kwargs(args: argparse.Namespace, losses: list[str]) -> dict[str, Any]:
    """``finetune`` keyword arguments from :func:`_add_training_flags`; flags left unset are left out
    (``finetune``'s and each loss's defaults apply). A flag that none of ``losses`` uses is refused."""
    from .train.losses import get_loss_class

    if args.contrast_on is not None and not any(get_loss_class(loss).uses_contrastive for loss in losses):
        raise ConfigError(f"--contrast-on {args.contrast_on}: {', '.join(losses)} has no contrastive term; drop the "
                          "flag or pick a contrastive loss")
    if args.embed_dim is not None and args.contrast_on != "projection":
        raise ConfigError("--embed-dim sizes the projection head, which only --contrast-on projection uses; drop "
                          "--embed-dim or add --contrast-on projection")
    kw = {"lam": args.lam, "temperature": args.temperature, "beta": args.beta, "contrast_on": args.contrast_on,
          "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
          "weight_decay": args.weight_decay, "momentum": args.momentum, "warmup_epochs": args.warmup_epochs,
          "embed_dim": args.embed_dim, "augment": args.augment, "flip": args.flip, "transform": args.transform,
          "image_size": args.image_size, "pretrained": args.pretrained,
          "arch_kwargs": _arch_kwargs(args.arch_kw) or None}
    return {k: v for k, v in kw.items() if v is not None}


def _add_episode_flags(p: argparse.ArgumentParser, *, episodes_dir: bool = True, many_ways: bool = True) -> None:
    if many_ways:
        p.add_argument("--ways", type=_positive_int, nargs="+", default=[5], metavar="N",
                       help="classes per episode (one episode set per value and --shots value, e.g. --ways 5 10)")
    else:
        p.add_argument("--ways", type=_positive_int, default=5, metavar="N", help="classes per episode")
    p.add_argument("--shots", type=_positive_int, nargs="+", default=[1, 5], metavar="K",
                   help="support images per class (one episode set per value)")
    p.add_argument("--queries", type=_positive_int, default=15, metavar="Q", help="query images per class")
    p.add_argument("--episodes", type=_positive_int, default=3000, metavar="E", help="episodes per set")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the episode sampler")
    if episodes_dir:
        p.add_argument("--episodes-dir", default="episodes", metavar="DIR",
                       help="where episode files are read from, and written on first use (the shipped canonical "
                            "sets inside the package are used when DIR has no file for the data)")


def _checkpoint_arg(text: str) -> str | None:
    if text.lower() == "none":
        return None
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"--checkpoint {text} is a folder; pass the .pt/.pth/.safetensors file inside it")
    if not path.is_file():
        raise ConfigError(f"--checkpoint {text} does not exist; give the path of a .pt/.pth file or 'none'")
    return str(path)


def _check_out_folder(out: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be one, before any work is done."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {out}: {p} exists and is not a folder; choose another {flag}")
            return


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


def _arch_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["hidden=32"]`` -> ``{"hidden": 32}`` (values parsed as JSON when they are)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--arch-kw {item!r} is not NAME=VALUE, e.g. --arch-kw hidden=32")
        out[key.strip()] = _parse_value(value)
    return out


def _decode_size(args: argparse.Namespace, checkpoint: str | None) -> int | None:
    """``--image-size`` (the side image folders are decoded at), else the side a checkpoint fine-tuned
    on an image folder was trained from, so eval reads the same pixels as training did."""
    if args.image_size is not None or checkpoint is None:
        return args.image_size
    from .backbones import read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    return meta.get("data_image_size") if meta.get("dataset") == "image-folder" else None


def _eval_config(args: argparse.Namespace, checkpoint: str | None, **kw: Any):
    from .benchmark import EvalConfig

    return EvalConfig(
        checkpoint=checkpoint, arch=args.arch, datasets=args.dataset if isinstance(args.dataset, list) else
        [args.dataset], data_root=args.data_root, transform=args.transform,
        image_size=_decode_size(args, checkpoint),
        cache_dir=args.cache_dir, device=args.device, batch_size=args.batch_size, progress=_progress(),
        preset=args.preset, pool=args.pool, arch_kwargs=_arch_kwargs(args.arch_kw),
        force_protocol=args.force_protocol, allow_partial=getattr(args, "allow_partial", False), **kw)


def _run_dirs(out: str, checkpoints: list[str | None]) -> list[Path]:
    """One run folder per checkpoint: ``OUT`` itself for one, ``OUT/<checkpoint stem>`` for several."""
    if len(checkpoints) == 1:
        return [Path(out)]
    stems = [Path(c).stem if c else "none" for c in checkpoints]
    if len(set(stems)) < len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise ConfigError(f"--checkpoint names two files with the stem {dup!r}; their run folders under --out "
                          f"would collide; rename one")
    return [Path(out) / s for s in stems]


def cmd_eval(args: argparse.Namespace) -> int:
    from .benchmark import extract_all, format_summary, run_benchmark, write_run

    preprocess = _preprocess_arg(args.preprocess)
    checkpoints = [_checkpoint_arg(c) for c in args.checkpoint]
    dirs = _run_dirs(args.out, checkpoints)
    log = functools.partial(print, file=sys.stderr)
    configs = [_eval_config(args, c, split=args.split, ways=tuple(args.ways), shots=tuple(args.shots),
                            queries=args.queries, episodes=args.episodes, seed=args.seed, methods=args.methods,
                            method_params=_method_params(args.param), preprocess=preprocess,
                            episodes_dir=args.episodes_dir, episode_files=tuple(args.episode_file or ()),
                            ci_method=args.ci) for c in checkpoints]
    for out in dirs:
        _check_out_folder(out)
    if len(configs) > 1:  # every checkpoint must fit before the first run folder is written
        from .benchmark import preflight

        for cfg in configs:
            preflight(cfg)
    with _process_group() as info:  # torchrun: every rank extracts its shard, rank 0 evaluates
        if info.distributed:
            import dataclasses

            import torch.distributed as dist

            for cfg in configs:
                extract_all(dataclasses.replace(cfg, progress=cfg.progress and info.rank == 0))
            dist.barrier()
            dist.destroy_process_group()  # rank 0 goes on alone; the others are done
            if info.rank != 0:
                return 0
    for cfg, out in zip(configs, dirs):
        result = run_benchmark(cfg, log=log)
        paths = write_run(out, result)
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


def _write_episodes(eps, path: Path, force: bool) -> str:
    """Save ``eps`` to ``path`` (refused if it holds other episodes, unless ``force``); say what happened."""
    existed = path.is_file()
    same = existed and path.read_bytes() == eps.to_bytes()
    eps.save(path, force=force)
    return "unchanged" if same else ("replaced" if existed else "wrote")


def cmd_episodes(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .episodes import EpisodeSet, EpisodeSpec

    if not args.dataset:
        raise ConfigError("episodes needs --dataset NAME to draw sets, or an action: `episodes import SRC ...`, "
                          "`episodes export FILE ...` (see `fewshot-bench episodes --help`)")
    out_dir = Path(args.out_dir)
    for dataset in (DATASETS.get(d).name for d in args.dataset):
        for split_name in args.split:
            if args.data_root:
                from .data import load_split

                split = load_split(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                                   image_size=args.image_size, progress=_progress())
                structure = None
            else:
                from .data import class_structure

                structure = class_structure(dataset, split_name)  # (names, sizes) or error
            for ways in args.ways:
                for shots in args.shots:
                    spec = EpisodeSpec(ways, shots, args.queries, args.episodes, args.seed)
                    if structure is None:
                        eps = EpisodeSet.from_split(spec, split)
                    else:
                        names, sizes = structure
                        eps = EpisodeSet.draw(spec, dataset=dataset, split=split_name, class_names=names,
                                              class_sizes=sizes)
                    path = out_dir / eps.filename
                    done = _write_episodes(eps, path, args.force)
                    bound = ("bound to the data's fingerprint" if eps.data_fingerprint
                             else "from the class structure")
                    print(f"{done} {path}  sha256={eps.sha256()[:16]}  ({bound})")
    return 0


def cmd_episodes_import(args: argparse.Namespace) -> int:
    from ._io import sha256_file
    from .data import DATASETS, normalize_split
    from .episodes import episodes_from_list, read_episode_list

    dataset, split_name, src = DATASETS.get(args.dataset).name, normalize_split(args.split), Path(args.src)
    entries = read_episode_list(src)
    by_name, resolve, fingerprint = isinstance(entries[0].ref, str), None, None
    if args.data_root:
        from .data import load_split, split_files

        if by_name:
            files = split_files(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                                image_size=args.image_size, progress=_progress())
            split, resolve = files.split, files.resolve
        else:
            split = load_split(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                               image_size=args.image_size, progress=_progress())
        names, sizes, fingerprint = split.class_names, split.class_sizes, split.fingerprint
    elif by_name:
        raise ConfigError(f"{src} names image files; pass --data-root DIR so they can be found")
    else:
        from .data import class_structure

        names, sizes = class_structure(dataset, split_name)  # (names, sizes), or an error asking for --data-root
    eps = episodes_from_list(entries, dataset=dataset, split=split_name, class_names=names, class_sizes=sizes,
                             data_fingerprint=fingerprint, resolve=resolve, where=str(src),
                             origin={"file": src.name, "sha256": sha256_file(src)})
    out = Path(args.out)
    done = _write_episodes(eps, out, args.force)
    s = eps.spec
    bound = "bound to the data's fingerprint" if fingerprint else "from the class structure"
    print(f"{done} {out}  {s.n_episodes} episodes, {s.ways}-way {s.shots}-shot {s.queries}-query, "
          f"sha256={eps.sha256()[:16]}  ({bound})")
    print(f"evaluate on it: fewshot-bench eval ... --dataset {dataset} --split {split_name} --episode-file {out}")
    return 0


def cmd_episodes_export(args: argparse.Namespace) -> int:
    from ._io import atomic_write
    from .episodes import EpisodeSet, export_episode_list

    eps = EpisodeSet.load(Path(args.file))
    name_of = None
    if args.by == "name":
        if not args.data_root:
            raise ConfigError(f"--by name needs --data-root DIR holding the {eps.dataset} {eps.split} images; "
                              "or use --by index")
        from .data import split_files

        files = split_files(eps.dataset, eps.split, args.data_root, cache_dir=args.cache_dir,
                            image_size=args.image_size, progress=_progress())
        eps.check_compatible(files.split)
        name_of = files.name_of
    text = export_episode_list(eps, args.format, by=args.by, name_of=name_of)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not args.force and not (out.is_file() and out.read_text() == text):
        raise ConfigError(f"--out {out} already exists; add --force to replace it, or choose another file name")
    with atomic_write(out, "w") as f:
        f.write(text)
    print(f"wrote {out}  ({eps.spec.n_episodes} episodes by {args.by}, {args.format})")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .benchmark import check_load
    from .data import load_split
    from .features import get_features

    checkpoint = _checkpoint_arg(args.checkpoint)
    cfg = _eval_config(args, checkpoint)
    plan = cfg.plan()
    with _process_group() as info:  # torchrun: each rank embeds a shard, rank 0 writes the cache
        main, progress = info.rank == 0, _progress() and info.rank == 0
        for dataset in args.dataset:
            for split_name in args.split:
                split = load_split(dataset, split_name, args.data_root, cache_dir=args.cache_dir,
                                   image_size=cfg.image_size, progress=progress)
                report = check_load(plan, split, allow_partial=args.allow_partial)
                protocol = plan.protocols[dataset]
                feats = get_features(checkpoint, plan.arch, split, protocol.transform, cache_dir=args.cache_dir,
                                     device=args.device, batch_size=args.batch_size, progress=progress,
                                     arch_kwargs=plan.features_kwargs(dataset), allow_partial=args.allow_partial,
                                     seed=args.seed)
                if main:
                    if report is not None:
                        print(f"{dataset}/{split_name}: load {report.summary()}")
                    print(f"{dataset}/{split_name}: features {feats.shape[0]}×{feats.shape[1]} cached "
                          f"(transform {protocol.transform.name})\n  protocol {protocol.describe()}")
    return 0


class _FinetuneFormatter(_Formatter):
    """Fills ``{losses}`` in a help text with the loss registry, only when help is printed (imports torch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        if "{losses}" in text:
            try:
                from .train.losses import available_losses

                names = ", ".join(available_losses())
            except Exception:  # noqa: BLE001 - help must print even if a plug-in is broken
                names = "see docs/losses.md"
            text = text.replace("{losses}", names)
        return text


def cmd_finetune(args: argparse.Namespace) -> int:
    from .data import load_split
    from .train import finetune_seeds
    from .train.log import format_record

    if args.seed is not None and args.seeds is not None:
        raise ConfigError("give --seed S or --seeds S [S ...], not both")
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    _check_out_folder(Path(args.out).parent, "--out")
    if args.log and Path(args.log).is_dir():
        raise ConfigError(f"--log {args.log} is a folder; give a file name such as {Path(args.log) / 'train.log.jsonl'}")
    kwargs = _training_kwargs(args, [args.loss])
    split = load_split(args.dataset, "train", args.data_root, cache_dir=args.cache_dir,
                       image_size=args.image_size, progress=_progress())
    val_split = None
    if args.val_every:
        try:
            val_split = load_split(args.dataset, "val", args.data_root, cache_dir=args.cache_dir,
                                   image_size=args.image_size, progress=_progress())
        except FewshotBenchError as exc:
            raise ConfigError(f"--val-every {args.val_every} needs the val split of {args.dataset}: {exc}; "
                              f"drop --val-every or provide the val split") from None
    paths = finetune_seeds(
        split, args.arch, seeds=seeds, out=Path(args.out), log_file=args.log, loss=args.loss,
        **kwargs, device=args.device, resume=args.resume,
        val_split=val_split, val_every=args.val_every, val_episodes=args.val_episodes, val_ways=args.val_ways,
        val_shots=args.val_shots, val_queries=args.val_queries, keep=args.keep, progress=_progress(),
        log=lambda record: print(format_record(record), file=sys.stderr, flush=True))  # one line per epoch
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        for path in paths:
            print(f"wrote {path}")
    return 0


def _study(args: argparse.Namespace, *, sweep: str | None = None):
    from .studies import Study

    if sweep is not None:
        flag = {"lambda": ("--lam", args.lam), "batch-size": ("--batch-size", args.batch_size)}[sweep]
        if flag[1] is not None:
            raise ConfigError(f"{flag[0]} {flag[1]} with sweep {sweep}: the swept --values set it; drop {flag[0]}")
    ft = _training_kwargs(args, args.losses)
    return Study(arch=args.arch, datasets=args.dataset, losses=args.losses, seeds=args.seeds,
                 finetune={k: v for k, v in ft.items() if v is not None}, sweep=sweep,
                 values=getattr(args, "values", None) or (), shots=tuple(args.shots), ways=args.ways,
                 queries=args.queries, episodes=args.episodes, episode_seed=args.seed, methods=args.methods,
                 preprocess=_preprocess_arg(args.preprocess), aggregate=args.aggregate)


def _run_study(args: argparse.Namespace, study) -> int:
    from .data import load_split
    from .studies import run_study

    _check_out_folder(args.out)
    def load(dataset: str, split: str):
        return load_split(dataset, split, args.data_root, cache_dir=args.cache_dir, image_size=args.image_size,
                          progress=_progress())

    files = run_study(study, args.out, load_split=load, cache_dir=args.cache_dir, episodes_dir=args.episodes_dir,
                      device=args.device, progress=_progress(), log=functools.partial(print, file=sys.stderr))
    print(files["table_md"].read_text())
    for path in files.values():
        print(f"wrote {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    return _run_study(args, _study(args))


def cmd_sweep(args: argparse.Namespace) -> int:
    return _run_study(args, _study(args, sweep=args.setting))


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
        print(df[["name", "kind", "preprocessing", "description", "paper"]].to_string(index=False))
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    import inspect

    from .train.losses import describe_losses

    rows = [{"name": r.name, "description": r.description, "paper": r.paper,
             "params": {k: (None if v is inspect.Parameter.empty else v) for k, v in r.params.items()}}
            for r in describe_losses()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "none"
        print(f"{r['name']:<12} {r['description']}\n{'':<12} params: {params}; {r['paper']}")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from .backbones import list_architectures
    from .protocol import PRESETS

    presets = [{"preset": p.name, "arch": p.arch, "arch_kwargs": dict(p.arch_kwargs), "pool": p.pool,
                "transforms": {fam: t.key for fam, t in p.transforms.items()}, "source": p.source}
               for p in (PRESETS.get(n) for n in PRESETS.list())]
    if args.json:
        print(json.dumps({"architectures": list_architectures(), "presets": presets}, indent=2))
        return 0
    print("architectures: " + ", ".join(list_architectures()) + ", timm:<any timm model>")
    print("\npresets (--preset):")
    for p in (PRESETS.get(n) for n in PRESETS.list()):
        sets = "; ".join(f"{fam} {t.name} {t.size} px" + (f" resize {t.resize}" if t.resize else "")
                         for fam, t in p.transforms.items())
        print(f"  {p.name:<20} {p.arch} pool={p.pool}; {sets}\n  {'':<20} {p.source}")
    return 0


def _row_labels_arg(items: list[str] | None) -> dict[str, str]:
    """``--label RUN=TEXT`` (repeatable) as ``{run path: text}``; one text for several runs groups their seeds."""
    labels = {}
    for item in items or []:
        run, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--label {item!r} is not RUN=TEXT, e.g. --label reports/a='ResNet-12 + CLCE'")
        labels[str(Path(run))] = text
    return labels


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare, find_runs, format_compare, load_run, write_compare_json

    paths = find_runs(args.runs)
    runs = [load_run(p) for p in paths]
    baseline = load_run(args.baseline) if args.baseline else None
    df = compare(runs, baseline=baseline, labels=_row_labels_arg(args.label), aggregate=args.aggregate)
    print(format_compare(df))  # ends with one "skipped: ..." line per comparison it could not make
    out = Path(args.out) if args.out else paths[0] / "compare.json"
    write_compare_json(df, out)
    print(f"wrote {out}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from ._io import atomic_write
    from .report import TABLE_EXTENSIONS, find_runs, load_run, make_tables

    if args.out and args.out_dir:
        raise ConfigError("--out and --out-dir: give one; --out FILE (or PREFIX with several --format), "
                          "--out-dir DIR for DIR/table.<ext>")
    formats = args.format or (list(TABLE_EXTENSIONS) if args.out_dir else ["latex"])
    labels = _row_labels_arg(args.label)
    runs = [load_run(p) for p in find_runs(args.runs)]
    baseline = load_run(args.baseline) if args.baseline else None
    texts = make_tables(runs, formats, baseline=baseline, labels=labels, caption=args.caption,
                        aggregate=args.aggregate, with_literature=args.with_literature, methods=args.methods,
                        datasets=args.datasets)
    if len(texts) > 1 and not (args.out or args.out_dir):
        raise ConfigError(f"--format {' '.join(formats)}: several formats need --out PREFIX (PREFIX.tex, "
                          "PREFIX.md, ...) or --out-dir DIR (DIR/table.tex, ...)")
    if args.out_dir or len(texts) > 1:
        prefix = Path(args.out_dir) / "table" if args.out_dir else Path(args.out)
        outputs = {prefix.with_name(f"{prefix.name}.{TABLE_EXTENSIONS[f]}"): text for f, text in texts.items()}
    elif args.out:
        outputs = {Path(args.out): next(iter(texts.values()))}
    else:
        print(next(iter(texts.values())))
        return 0
    for path, text in outputs.items():
        with atomic_write(path, "w") as f:
            f.write(text)
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_runs
    from .report import find_runs, load_run

    runs = [load_run(p) for p in find_runs(args.runs)]
    baseline = load_run(args.baseline) if args.baseline else None
    out = Path(args.out)
    doc = plot_runs(runs, out, baseline=baseline, labels=_row_labels_arg(args.label))
    for p in [*doc["files"], out / "plots.json"]:
        print(f"wrote {p}")
    for skip in doc["skipped"]:
        print(f"skipped: {skip['message']}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import numpy as np

    from .benchmark import check_load
    from .data import load_split
    from .diagnose import diagnose, format_diagnosis
    from .features import get_features

    checkpoint = _checkpoint_arg(args.checkpoint)
    cfg = _eval_config(args, checkpoint)
    plan = cfg.plan()
    split = load_split(args.dataset, args.split, args.data_root, cache_dir=args.cache_dir,
                       image_size=cfg.image_size, progress=_progress())
    report = check_load(plan, split, allow_partial=args.allow_partial)
    if report is not None:
        print(f"load {report.summary()}", file=sys.stderr)
    feats = get_features(checkpoint, plan.arch, split, plan.protocols[args.dataset].transform,
                         cache_dir=args.cache_dir, device=args.device, batch_size=args.batch_size,
                         progress=_progress(), arch_kwargs=plan.features_kwargs(args.dataset),
                         allow_partial=args.allow_partial, seed=args.seed)
    result = diagnose(feats, np.asarray(split.labels), out_dir=args.out, seed=args.seed)
    print(format_diagnosis(result))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .backbones.convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.out, trust_source=args.trust_source)
    print(f"wrote {out}: a plain state dict; load it with --checkpoint {out}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-bench", formatter_class=_Formatter, epilog=EPILOG,
        description="Benchmark image backbones on episodic few-shot classification: fixed episodes, "
                    "cached features, mean accuracy with 95%% confidence intervals.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in _COMMANDS:
        add_command(sub)
    return parser


def _add_command(sub, name: str, func, help: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter,
                       epilog=_EXAMPLES.get(name))
    p.set_defaults(func=func)
    return p


def _add_demo(sub) -> None:
    p = _add_command(
        sub, "demo", cmd_demo, "run the whole flow on scikit-learn's digits (no download): fine-tune, evaluate",
        "Fine-tune a Conv-4 on 5 base digits of sklearn.datasets.load_digits, then evaluate 5-way 1-shot "
        "and 5-shot over 3,000 fixed episodes of the 5 novel digits; prints the table and writes a run "
        "folder.")
    p.add_argument("--out", default="reports/demo", help="run folder to write")
    p.add_argument("--episodes", type=_positive_int, default=3000, help="episodes per set")
    p.add_argument("--epochs", type=_positive_int, default=None, help="fine-tuning epochs (default: the demo's)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed for training and episodes")
    p.add_argument("--episodes-dir", default="episodes", help="where episode files are read/written")
    p.add_argument("--cache-dir", default=None, help="feature cache folder")


def _add_eval(sub) -> None:
    p = _add_command(
        sub, "eval", cmd_eval, "benchmark a checkpoint: mean accuracy ± 95%% CI over fixed episodes",
        "Evaluate a backbone checkpoint on one or more benchmarks over fixed episode files; writes "
        "RUN/per_episode.csv, RUN/summary.json and RUN/summary.csv and prints a table. The checkpoint's "
        "sha256, detected format, load report and the input protocol used are printed and stored.\n\n"
        "example:\n  fewshot-bench eval --checkpoint rfs_resnet12_last.pth --preset rfs-resnet12 \\\n"
        "      --dataset miniimagenet --data-root ~/data --out reports/rfs")
    _add_model_flags(p, many=True)
    _add_data_flags(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate on")
    _add_episode_flags(p)
    p.add_argument("--episode-file", nargs="+", default=None, metavar="FILE",
                   help="evaluate on these episode files (e.g. from `episodes import`) instead of drawn sets; "
                        "each names its dataset and split, and its ways/shots/queries/episodes replace those flags")
    p.add_argument("--methods", nargs="+", default=["protonet"], metavar="METHOD",
                   help="few-shot heads (see `fewshot-bench methods`), or path/to/file.py:ClassName")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="method hyper-parameter, repeatable, e.g. --param logistic.C=0.5")
    p.add_argument("--preprocess", default=None, metavar="SPEC", help=_PREPROCESS_HELP)
    p.add_argument("--ci", default="t", choices=["t", "normal"], help="confidence interval: Student t or normal")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write, e.g. reports/my-run")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")


def _add_datasets(sub) -> None:
    p = _add_command(sub, "datasets", cmd_datasets,
                     "list supported benchmarks and the layouts found under a data root")
    p.add_argument("--data-root", default=None, metavar="DIR", help="show what is found under DIR")


def _add_episodes(sub) -> None:
    p = _add_command(
        sub, "episodes", cmd_episodes, "draw, import and export fixed episode files",
        "Draw episode sets and save them as files, one per split x ways x shots. With --data-root a set is "
        "drawn from the data and bound to its fingerprint (file name "
        "DATASET_SPLIT_data-<fingerprint>_5w1s15q_3000ep_seed0.episodes.zip); without it, from the "
        "benchmark's known class structure (DATASET_SPLIT_classes-<structure hash>_...). A file that holds "
        "other episodes is only replaced with --force. `episodes import` turns a published episode list "
        "(CSV/JSON of file names or indices) into an episode file; `episodes export` writes one as a list.")
    p.add_argument("--dataset", nargs="+", default=None, metavar="NAME",
                   help="benchmark name(s) to draw sets for (see `fewshot-bench datasets`)")
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"],
                   help="split(s) to draw from")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="draw from this copy of the data and bind the files to its fingerprint (needed for "
                        "tieredimagenet and image-folder; default: the benchmark's known class structure)")
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side image folders are decoded at; use the one eval will use, the fingerprint depends on it")
    _add_cache_dir(p, "decoded arrays")
    _add_episode_flags(p, episodes_dir=False)
    p.add_argument("--out-dir", default="episodes", metavar="DIR",
                   help="folder to write the files into (eval reads --episodes-dir, default episodes)")
    p.add_argument("--force", action="store_true", help="replace existing files that hold other episodes")
    actions = p.add_subparsers(dest="episodes_action", metavar="ACTION", required=False,
                               title="actions (instead of drawing)")
    _add_episodes_import(actions)
    _add_episodes_export(actions)


def _add_episodes_import(actions) -> None:
    q = actions.add_parser(
        "import", formatter_class=_Formatter, help="turn a CSV/JSON episode list into an episode file",
        description="Read an episode list -- file names (e.g. a paper's published one-shot runs) or (class, "
                    "position) indices -- check every row against the data and write an episode file that "
                    "`eval --episode-file` uses. CSV: header episode,role,class,file or episode,role,class,position, "
                    "one row per image, role support or query (class is optional with file). JSON: "
                    '{"episodes": [{"classes": [...], "support": [[...], ...], "query": [[...], ...]}]}. '
                    "Classes take the episode labels 0..N-1 in order of first appearance. A file name is its path "
                    "under --data-root or any unique end of it (e.g. cat/img01.png). Refused, naming the row: "
                    "unknown files or classes, a file of another class, an image in both support and query, "
                    "episodes with other numbers of classes, classes with other numbers of shots or queries.",
        epilog="examples:\n"
               "  fewshot-bench episodes import runs.csv --dataset image-folder --data-root ~/data/birds \\\n"
               "      --out episodes/birds-published.episodes.zip\n"
               "  fewshot-bench eval --checkpoint ckpt.pt --dataset image-folder --data-root ~/data/birds \\\n"
               "      --episode-file episodes/birds-published.episodes.zip --out reports/birds")
    q.set_defaults(func=cmd_episodes_import)
    q.add_argument("src", metavar="SRC", help="the episode list, a .csv or .json file")
    q.add_argument("--dataset", required=True, metavar="NAME", help="benchmark the list is for")
    q.add_argument("--split", default="test", choices=["train", "val", "test"], help="split the list is for")
    q.add_argument("--data-root", default=None, metavar="DIR",
                   help="the data the list refers to (needed for file names; binds the file to its fingerprint); "
                        "a list by index of a benchmark with a known class structure needs none")
    q.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side image folders are decoded at; use the one eval will use (positions depend on it)")
    _add_cache_dir(q, "decoded arrays")
    q.add_argument("--out", required=True, metavar="FILE", help="episode file to write (.episodes.zip)")
    q.add_argument("--force", action="store_true", help="replace --out if it holds other episodes")


def _add_episodes_export(actions) -> None:
    q = actions.add_parser(
        "export", formatter_class=_Formatter, help="write an episode file as a CSV/JSON episode list",
        description="Write the episodes of FILE as a list other code can read: one CSV row per image "
                    "(episode,role,class,position or episode,role,class,file) or one JSON object per episode. "
                    "--by index needs no data; --by name names each image by its path under --data-root. "
                    "`episodes import` reads the list back into the same episodes.",
        epilog="examples:\n"
               "  fewshot-bench episodes export episodes/x.episodes.zip --format csv --by index --out x.csv\n"
               "  fewshot-bench episodes export episodes/x.episodes.zip --format json --by name \\\n"
               "      --data-root ~/data/birds --out x.json")
    q.set_defaults(func=cmd_episodes_export)
    q.add_argument("file", metavar="FILE", help="the episode file (.episodes.zip) to export")
    q.add_argument("--format", default="csv", choices=["csv", "json"], help="list format")
    q.add_argument("--by", default="index", choices=["index", "name"],
                   help="address images by (class, position) index or by file name (needs --data-root)")
    q.add_argument("--data-root", default=None, metavar="DIR", help="the data, for --by name")
    q.add_argument("--image-size", type=_positive_int, default=None, metavar="PX",
                   help="side image folders are decoded at, for --by name (as when the file was made)")
    _add_cache_dir(q, "decoded arrays")
    q.add_argument("--out", default=None, metavar="FILE", help="file to write (default: print the list)")
    q.add_argument("--force", action="store_true", help="replace --out if it exists")


def _add_extract(sub) -> None:
    p = _add_command(sub, "extract", cmd_extract, "fill the feature cache only (no evaluation)")
    _add_model_flags(p)
    _add_data_flags(p)
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"],
                   help="split(s) to extract features of")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="initialisation seed of --checkpoint none (as eval's --seed, so extract fills what eval reads)")


def _add_finetune(sub) -> None:
    p = _add_command(
        sub, "finetune", cmd_finetune, "fine-tune a backbone on a benchmark's train split",
        "Train ARCH on the train split with any registered loss (CE, SupCon, CLCE, ...) and write a "
        "checkpoint whose metadata (arch, loss and its parameters, seed, data fingerprint, input "
        "protocol, val results) eval and table use, plus a per-epoch JSONL log.\n\n"
        "example (3 initialisations, validated every 5 epochs, best-on-val kept):\n"
        "  fewshot-bench finetune --arch resnet12 --dataset miniimagenet --data-root ~/data \\\n"
        "      --loss clce --lam 0.9 --temperature 0.5 --epochs 100 --batch-size 128 \\\n"
        "      --seeds 0 1 2 --val-every 5 --keep best --out checkpoints/resnet12-clce.pt\n"
        "  # -> checkpoints/resnet12-clce-seed{0,1,2}.pt and .log.jsonl")
    p.formatter_class = _FinetuneFormatter
    p.add_argument("--arch", required=True, metavar="ARCH",
                   help="conv4, resnet12, or any timm model as timm:NAME (e.g. timm:resnet101)")
    _add_data_flags(p, many=False)
    p.add_argument("--loss", default="ce", metavar="LOSS",
                   help="training loss: {losses}; or path/to/file.py:ClassName (a TrainingLoss subclass)")
    _add_training_flags(p)
    p.add_argument("--seeds", type=_nonneg_int, nargs="+", default=None, metavar="S",
                   help="one fine-tuning run per seed; OUT NAME.pt becomes NAME-seedS.pt when several (default: 0)")
    p.add_argument("--seed", type=_nonneg_int, default=None, metavar="S", help="a single seed (same as --seeds S)")
    _add_finetune_val_flags(p)
    p.add_argument("--log", default=None, metavar="FILE",
                   help="per-epoch JSONL log: loss, CE and contrastive parts, lr, grad norm, images/s, val accuracy "
                        "(default: OUT's name with .log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last epoch state")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write, e.g. checkpoints/ce.pt")


def _add_finetune_val_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-every", type=_nonneg_int, default=0, metavar="N",
                   help="every N epochs (and after the last), ProtoNet accuracy on fixed episodes of the val split; "
                        "0 = never")
    p.add_argument("--val-episodes", type=_positive_int, default=600, metavar="E", help="val episodes (seed 0)")
    p.add_argument("--val-ways", type=_positive_int, default=5, metavar="N", help="classes per val episode")
    p.add_argument("--val-shots", type=_positive_int, default=1, metavar="K", help="support images per val class")
    p.add_argument("--val-queries", type=_positive_int, default=15, metavar="Q", help="query images per val class")
    p.add_argument("--keep", default="last", choices=["last", "best"],
                   help="write the last epoch's backbone, or the best-on-val one (needs --val-every)")


def _add_study_flags(p: argparse.ArgumentParser, losses: list[str]) -> None:
    p.add_argument("--arch", required=True, metavar="ARCH", help="backbone to fine-tune (see `fewshot-bench archs`)")
    _add_data_flags(p)
    p.add_argument("--losses", nargs="+", default=losses, metavar="LOSS",
                   help="one row per loss; the first is the baseline of the paired tests")
    p.add_argument("--seeds", nargs="+", type=_nonneg_int, default=[0, 1, 2], metavar="S",
                   help="fine-tuning seeds (one initialisation each; rows show the median over them)")
    _add_training_flags(p)
    _add_episode_flags(p, many_ways=False)  # a study's table has one ways column
    p.add_argument("--methods", nargs="+", default=["protonet"], metavar="METHOD",
                   help="few-shot heads every checkpoint is evaluated with (see `fewshot-bench methods`)")
    p.add_argument("--preprocess", default=None, metavar="SPEC", help=_PREPROCESS_HELP)
    p.add_argument("--aggregate", default="median", choices=["median", "mean"],
                   help="over seeds: median (the paper's rule) or mean of the per-seed means")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="study folder: checkpoints/, runs/, table.*, compare.json, study.json")


def _add_reproduce(sub) -> None:
    p = _add_command(
        sub, "reproduce", cmd_reproduce,
        "the CLCE paper's Table 1: losses × seeds × datasets, fine-tuned and evaluated",
        "Fine-tune ARCH with every loss and seed on each dataset's train split, evaluate every checkpoint on "
        "the same fixed test episodes, and write OUT/table.{tex,md,csv,json} (median over seeds, episode CI, "
        "seed range) and OUT/compare.json (paired tests seed by seed against the first loss).\n\n"
        "example (the paper's scale needs a GPU):\n"
        "  fewshot-bench reproduce --arch timm:resnet101 --dataset cifar-fs fc100 miniimagenet tieredimagenet \\\n"
        "      --data-root ~/data --losses ce h-scl ce+supcon clce --seeds 0 1 2 --epochs 100 --out reports/table1")
    _add_study_flags(p, ["ce", "h-scl", "ce+supcon", "clce"])


def _add_sweep(sub) -> None:
    p = _add_command(
        sub, "sweep", cmd_sweep, "the CLCE paper's studies: batch size (Table 3) or λ (Fig. 2)",
        "Fine-tune once per loss × value × seed, evaluate on fixed test episodes, and write the table "
        "(OUT/table.*, OUT/sweep-SETTING.csv) and the plot (OUT/sweep-SETTING.png/.pdf).\n\n"
        "examples:\n"
        "  fewshot-bench sweep batch-size --values 64 128 256 512 --losses ce supcon clce --arch resnet12 \\\n"
        "      --dataset cifar-fs --data-root ~/data --epochs 100 --out reports/batch\n"
        "  fewshot-bench sweep lambda --values 0 0.1 0.3 0.5 0.7 0.9 1 --losses clce --arch resnet12 \\\n"
        "      --dataset cifar-fs --data-root ~/data --epochs 100 --out reports/lambda")
    p.add_argument("setting", choices=["batch-size", "lambda"], help="the fine-tuning setting to vary")
    p.add_argument("--values", nargs="+", required=True, metavar="V", help="values of the setting")
    _add_study_flags(p, ["ce", "supcon", "clce"])


def _add_prepare(sub) -> None:
    p = _add_command(
        sub, "prepare", cmd_prepare, "build CIFAR-FS or FC100 from the official CIFAR-100 files",
        "Merge CIFAR-100's train and test sets (600 images per class) and write the benchmark as "
        "MetaOptNet-format pickles, which `eval --data-root OUT` then reads.")
    p.add_argument("benchmark", choices=["cifar-fs", "fc100"], help="the benchmark to build")
    p.add_argument("--cifar100", required=True, metavar="DIR", help="the extracted cifar-100-python folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the benchmark's pickles into")


def _add_listings(sub) -> None:
    for name, func, help in [
            ("methods", cmd_methods, "list the few-shot methods (built-in and plug-ins)"),
            ("losses", cmd_losses, "list the fine-tuning losses (built-in and plug-ins) with their defaults"),
            ("archs", cmd_archs, "list the architectures and the papers' evaluation presets")]:
        p = _add_command(sub, name, func, help)
        p.add_argument("--json", action="store_true", help="print JSON")


def _add_compare(sub) -> None:
    p = _add_command(
        sub, "compare", cmd_compare, "paired comparison of runs over identical episodes",
        "For every dataset × shots × method the runs share: mean difference with its CI, paired t and "
        "Wilcoxon p-values (Holm-adjusted), verdicts at α = 0.01 and 0.05. Runs of one configuration that "
        "differ only in the fine-tuning seed form one row and are compared seed by seed. Writes compare.json.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or glob patterns (quoted or not)")
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="compare every row against the row of this run")
    p.add_argument("--label", action="append", metavar="RUN=TEXT",
                   help="row label for a run, repeatable; one label for several runs makes them seeds of one row")
    p.add_argument("--aggregate", default="median", choices=["median", "mean"],
                   help="summary over the seed pairs of a row pair (default: median)")
    p.add_argument("--out", default=None, metavar="FILE", help="JSON output (default: RUN_A/compare.json)")


def _add_table(sub) -> None:
    p = _add_command(sub, "table", cmd_table,
                     "result table (LaTeX/Markdown/CSV/JSON) in the layout of the CLCE paper's Table 1")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or glob patterns (quoted or not)")
    p.add_argument("--format", nargs="+", default=None,
                   choices=["latex", "markdown", "md", "csv", "csv-long", "json"],
                   help="one or more; csv: the table as printed; csv-long/json: one record per cell with every "
                        "number (default: latex; every format with --out-dir)")
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="mark cells above (†) or below (‡) the row of this run: paired t-tests on identical "
                        "episodes, seed pair by seed pair, Holm-adjusted over the table")
    p.add_argument("--label", action="append", metavar="OLD=NEW",
                   help="repeatable; RUN=TEXT: row label for a run (one label for several runs makes them seeds "
                        "of one row); DATASET=TEXT or METHOD=TEXT: print that dataset or method as TEXT")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="only these methods, rows in this order")
    p.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                   help="only these datasets, columns in this order")
    p.add_argument("--aggregate", default="median", choices=["median", "mean"],
                   help="a row's cell over its fine-tuning seeds: median (default, the paper's) or mean of the "
                        "per-seed means")
    p.add_argument("--with-literature", nargs="?", const="clce2024_table1", default=None, metavar="SOURCE",
                   help="append published rows, marked (reported): a bundled source (default clce2024_table1) "
                        "or a literature CSV")
    p.add_argument("--caption", default=None, help="caption text before the protocol (not escaped in LaTeX)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="output file; with several --format a prefix: PREFIX.tex, .md, .csv, .long.csv, .json")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write DIR/table.tex, table.md, table.csv, table.long.csv, table.json (or the --format ones)")


def _add_plot(sub) -> None:
    p = _add_command(
        sub, "plot", cmd_plot, "accuracy-with-CI plots, paired differences against a baseline (PNG + PDF)",
        "Writes DIR/accuracy (mean ± 95% CI per run), DIR/differences (mean paired difference ± 95% CI of "
        "each run against the baseline), per-episode difference histograms per run, and DIR/plots.json. Only "
        "identical episodes pair; each skipped pair is printed with its reason.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or glob patterns (quoted or not)")
    p.add_argument("--baseline", default=None, metavar="RUN", help="the run the others are compared with "
                   "(default: the first)")
    p.add_argument("--label", action="append", metavar="RUN=TEXT", help="series name for a run, repeatable")
    p.add_argument("--out", default="reports/plots", metavar="DIR", help="folder for the PNG and PDF figures")


def _add_diagnose(sub) -> None:
    p = _add_command(
        sub, "diagnose", cmd_diagnose, "feature diagnostics: cosine-similarity histograms and isotropy",
        "Positive vs negative pair cosine-similarity histograms and the isotropy score "
        "(Mu & Viswanath, 2018) of a cached feature set, as in the CLCE paper's Figs. 3-4 and Table 5.")
    _add_model_flags(p)
    _add_data_flags(p, many=False)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split whose features to diagnose")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the pair subsample and, with --checkpoint none, of the initialisation (as in eval)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the figures")


def _add_convert(sub) -> None:
    p = _add_command(
        sub, "convert", cmd_convert, "re-save a checkpoint the safe loader refuses as a plain state dict "
        "(needs --trust-source)",
        "Unpickle SRC with weights_only=False -- which runs any code the file names, so only for a\n"
        "file from a source you trust -- take its state dict (a whole pickled nn.Module such as the\n"
        "original ProtoNet's best_model.pt, or a module or state dict nested in a dict) and write DST\n"
        "as a plain {name: tensor} file, which every other command loads with weights_only=True.\n"
        "Key names are kept (prefixes are stripped at load time). DST ending in .safetensors is\n"
        "written with safetensors, anything else with torch.save; DST appears complete or not at all.\n\n"
        "example:\n"
        "  fewshot-bench convert best_model.pt --out protonet-conv4.safetensors --trust-source\n"
        "  fewshot-bench eval --checkpoint protonet-conv4.safetensors --arch conv4 ...")
    p.add_argument("src", metavar="SRC", help="the checkpoint to convert")
    p.add_argument("--out", required=True, metavar="DST", help="the plain state dict to write (.pt or .safetensors)")
    p.add_argument("--trust-source", action="store_true",
                   help="confirm that SRC comes from a source you trust: unpickling it can run arbitrary code")


# the order of `fewshot-bench --help`
_COMMANDS = (_add_demo, _add_eval, _add_datasets, _add_episodes, _add_extract, _add_finetune, _add_reproduce,
             _add_sweep, _add_prepare, _add_listings, _add_compare, _add_table, _add_plot, _add_diagnose,
             _add_convert)


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
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
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
