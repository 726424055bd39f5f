"""Fine-tune a backbone on a train split with any registered loss; resumable, deterministic, logged.

>>> path = finetune(split, "conv4", loss="clce", epochs=5, lr=1e-3, out=Path("checkpoints/clce.pt"))
>>> paths = finetune_seeds(split, "conv4", seeds=[0, 1, 2], loss="clce", epochs=5,
...                        out=Path("checkpoints/clce.pt"))      # clce-seed0.pt, clce-seed1.pt, ...

**One training path.** The loss is built once with
:func:`fewshot_bench.train.losses.create_loss` ``(loss, **loss_params)`` and every step calls it
as ``loss(logits, z, labels, z_labels=...)``; ``LossTerms.total`` is what is backpropagated, the
unweighted ``ce`` and ``contrastive`` terms only go to the log. The loop has no loss arithmetic
of its own. The network (:class:`~fewshot_bench.train.net.TrainNet`) gets a linear head only if
the loss has a CE term (``uses_ce``) and a projection only if it has a contrastive term
(``uses_contrastive``) and ``contrast_on="projection"``; with ``contrast_on="encoder"`` (the
default, the CLCE paper's choice) ``z`` is the backbone's feature itself.

**Views.** Losses with a contrastive term see **two augmented views** of every image (both
views of an image are positives of each other, as are all views of its class): the step's
input is ``cat([view1, view2])`` ``(2B, 3, S, S)`` and its labels ``labels.repeat(2)``; the CE
term is then averaged over both views. CE-only losses use one view. Batches are plain random
shuffles with the last partial batch dropped. Under DDP ``z`` is gathered from every rank
(with gradient) and ``z_labels`` are the gathered labels; in one process ``z_labels=None``.

**Inputs.** :mod:`fewshot_bench.train.inputs` picks the transform (``transform=``, a timm
``pretrained_cfg`` with ``pretrained=``, or the dataset's), and ``image_size=S`` makes it output
``S`` px (resize, no crop). Augmentation (random crop with zero padding + flip,
:func:`fewshot_bench.transforms.train_augment`) acts on the uint8 images before it.

**Schedule.** Linear warm-up then cosine decay, per step (:mod:`fewshot_bench.train.schedule`).

**Watching and trusting training.** A tqdm bar per epoch; a JSONL log with one line per epoch
(:mod:`fewshot_bench.train.log`); every ``val_every`` epochs (and after the last epoch) ProtoNet
accuracy on fixed val episodes (:mod:`fewshot_bench.train.validate`); ``keep="best"`` writes
the backbone of the epoch with the best val accuracy (the first such epoch on ties).

Only the backbone is written to ``out`` (:func:`fewshot_bench.backbones.save_checkpoint`, with
metadata: see :func:`finetune`); head, projection, optimizer, schedule, generator, log records,
val results and (``keep="best"``) the best backbone go to the resume file :func:`state_path`
(``NAME.state.pt`` beside ``NAME.pt``), rewritten atomically after every epoch.

Randomness, all from ``seed``:

- model initialisation: ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the
  caller's global RNG state is restored afterwards), then the backbone, the linear head, the
  projection, in that order (:mod:`fewshot_bench.train.net`); ``pretrained=`` weights then
  overwrite the backbone's;
- shuffling: one CPU ``torch.Generator`` seeded with ``seed``, its state saved every epoch;
- augmentation: a generator per step seeded from ``(seed, epoch, step, rank)``; the two views
  are two successive draws from it, so they differ;
- anything drawing from the global RNG inside the model (dropout): reseeded per epoch from
  ``(seed, epoch, rank)``.

On CPU, ``torch.use_deterministic_algorithms(True)`` is switched on for the run (and
restored), so two runs with one seed give identical weights, and an interrupted run
resumed with ``resume=True`` gives the same weights as an uninterrupted one. Validation draws
no random numbers and runs the backbone in eval mode, so it does not change the weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .. import distributed as D
from .._io import atomic_write, jsonable
from ..errors import CheckpointError, ConfigError, DataError, UnknownNameError, check_int, is_number
from ..registry import close_matches
from .inputs import input_protocol, resolve_transform
from .log import write_log
from .losses import TrainingLoss, create_loss, get_loss_class
from .net import CONTRAST_ON, TrainNet
from .schedule import lr_factor

__all__ = [
    "KEEP",
    "OPTIMIZERS",
    "STATE_FORMAT",
    "finetune",
    "finetune_seeds",
    "log_path",
    "seed_path",
    "state_path",
]

OPTIMIZERS = ("adamw", "sgd")
KEEP = ("last", "best")
STATE_FORMAT = "fewshot-bench-train-state"
_STATE_VERSION = 2

# config entries that must match for resume=True to continue a run
_RESUME_KEYS = (
    "arch",
    "arch_kwargs",
    "loss",
    "loss_params",
    "contrast_on",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "warmup_epochs",
    "seed",
    "embed_dim",
    "augment",
    "flip",
    "dataset",
    "data_fingerprint",
    "n_classes",
    "image_size",
    "transform_key",
    "pretrained_sha256",
    "val_every",
    "val_spec",
    "keep",
)
# recorded in the checkpoint's metadata besides the resume keys
_META_ONLY_KEYS = ("split", "data_image_size", "transform", "world_size", "protocol", "pretrained", "log")


def state_path(out: str | Path) -> Path:
    """The resume file kept beside the checkpoint ``out``: ``NAME.pt`` → ``NAME.state.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt") if out.suffix else out.with_name(out.name + ".state.pt")


def log_path(out: str | Path) -> Path:
    """The default JSONL log beside the checkpoint ``out``: ``NAME.pt`` → ``NAME.log.jsonl``."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix else out.name) + ".log.jsonl")


def seed_path(path: str | Path, seed: int, n_seeds: int) -> Path:
    """``path`` for one of ``n_seeds`` runs: unchanged for one seed, else ``NAME-seed{seed}.EXT``.

    ``ckpt.pt`` → ``ckpt-seed0.pt``; ``run.log.jsonl`` → ``run-seed0.log.jsonl``.
    """
    path = Path(path)
    if n_seeds == 1:
        return path
    name = path.name
    for ext in (".log.jsonl", ".state.pt"):
        if name.endswith(ext) and len(name) > len(ext):
            return path.with_name(f"{name[: -len(ext)]}-seed{seed}{ext}")
    return path.with_name(f"{path.stem}-seed{seed}{path.suffix}")


def finetune_seeds(split: Any, arch: str, *, seeds: Sequence[int], out: str | Path,
                   log_file: str | Path | None = None, **kw: Any) -> list[Path]:
    """Run :func:`finetune` once per seed (one independent initialisation each); return the checkpoints.

    With one seed the checkpoint is exactly ``out``; with several, ``seed_path(out, s, n)``
    (``ckpt.pt`` → ``ckpt-seed0.pt``, ``ckpt-seed1.pt``, ...), each with its own resume state and
    log. Each run is the one ``finetune(..., seed=s)`` would do alone (bit-identical weights).
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    for s in seeds:
        _int_at_least("--seeds", s, 0)
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if seeds.count(s) > 1)
        raise ConfigError(f"--seeds lists seed {dup} twice; give distinct seeds")
    n = len(seeds)
    return [
        finetune(split, arch, seed=int(s), out=seed_path(out, s, n),
                 log_file=None if log_file is None else seed_path(log_file, s, n), **kw)
        for s in seeds
    ]


# long: the public entry point; its signature and docstring document 40 parameters, the body is 20 lines
def finetune(
    split: Any,
    arch: str,
    *,
    loss: str = "ce",
    loss_params: dict | None = None,
    lam: float | None = None,
    temperature: float | None = None,
    beta: float | None = None,
    contrast_on: str = "encoder",
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    warmup_epochs: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    out: str | Path,
    resume: bool = False,
    transform: Any = None,
    image_size: int | None = None,
    embed_dim: int = 128,
    progress: bool = True,
    augment: bool = True,
    flip: bool = True,
    amp: bool | None = None,
    log: Callable[[dict], None] | None = None,
    log_file: str | Path | None = None,
    val_split: Any = None,
    val_every: int = 0,
    val_episodes: int = 600,
    val_ways: int = 5,
    val_shots: int = 1,
    val_queries: int = 15,
    keep: str = "last",
    pretrained: str | Path | None = None,
    backbone: nn.Module | None = None,
    arch_kwargs: dict | None = None,
) -> Path:
    """Fine-tune ``arch`` on ``split`` and write the backbone checkpoint ``out``.

    Parameters
    ----------
    split: a :class:`fewshot_bench.data.Split` (uint8 ``images (N, H, W, 3)``, ``labels (N,)``
        in ``0..C-1``, ``class_names``, ``dataset``, ``split``, ``fingerprint``).
    arch: backbone name for :func:`fewshot_bench.backbones.create_backbone` (built with
        ``image_size=`` the input side, plus ``arch_kwargs``).
    loss: a registered loss name (:func:`fewshot_bench.train.losses.available_losses`: ``ce``,
        ``supcon``, ``ce+supcon``, ``lacln``, ``clce``, ``clce-nohnm``, ``h-scl``, ``ce+h-scl``, ...)
        or ``"path/to/file.py:ClassName"``.
    loss_params: hyper-parameters of the loss (``{"lam": 0.9, "temperature": 0.5}``); ``lam``,
        ``temperature`` and ``beta`` are shortcuts for the same. ``None`` keeps the loss's own
        defaults; a parameter the loss does not take is a :class:`ConfigError`.
    contrast_on: ``"encoder"`` (default: the contrastive term sees the backbone features, as in
        the CLCE paper) or ``"projection"`` (a SupCon-style MLP head). Ignored (recorded as
        ``None``) for losses without a contrastive term.
    epochs: passes over the split; batches per epoch = ``N // batch_size`` (drop last).
    batch_size: images per step (the *global* batch under DDP; each image gives two views
        for contrastive losses, so the loss sees ``2 * batch_size`` embeddings).
    lr, optimizer, weight_decay, momentum: AdamW (betas 0.9/0.999) or SGD (``momentum``);
        weight decay on every parameter.
    warmup_epochs: linear warm-up length; then cosine decay over the remaining steps
        (:func:`fewshot_bench.train.schedule.lr_factor`, per step).
    seed: every random draw (see the module docstring).
    device: ``None`` → CUDA if available (``cuda:LOCAL_RANK`` under DDP), else CPU.
    out: the checkpoint to write; the resume state lives in :func:`state_path` ``(out)``.
    resume: continue from the resume file when it exists (its configuration must match,
        else :class:`ConfigError`); start from scratch when there is none. Without
        ``resume`` an existing resume file is overwritten.
    transform, image_size: the input transform and side (:mod:`fewshot_bench.train.inputs`);
        recorded in the metadata under ``protocol``, ``transform``, ``transform_key``,
        ``image_size``.
    embed_dim: output size of the projection (``contrast_on="projection"`` only).
    progress: tqdm bar per epoch (rank 0 only).
    augment: random crop with zero padding ``clamp(H // 8, 1, 8)`` + horizontal flip on the
        uint8 images before the transform; ``False`` feeds the images as they are (both views
        are then identical).
    flip: include the horizontal flip in the augmentation.
    amp: mixed precision autocast (bf16 where supported, else fp16 with a grad scaler);
        ``None`` → on for CUDA, off on CPU. ``True`` on CPU is a :class:`ConfigError`.
    log: called on rank 0 after every epoch (after its state is saved) with the epoch's log
        record (:mod:`fewshot_bench.train.log`) plus ``epochs``, ``seed`` and ``state``
        (:func:`~fewshot_bench.train.log.format_record` renders it as one line).
    log_file: the JSONL log; ``None`` → :func:`log_path` ``(out)``.
    val_split: the val :class:`~fewshot_bench.data.Split` for validation.
    val_every: validate every this many epochs (and after the last one); 0 = never.
    val_episodes, val_ways, val_shots, val_queries: the fixed val episodes (seed 0).
    keep: ``"last"`` writes the final backbone; ``"best"`` the one of the best val epoch
        (needs ``val_every``).
    pretrained: a weights file (safetensors or a torch state dict) loaded strictly into the
        backbone before training (:mod:`fewshot_bench.train.pretrained`).
    backbone: an already built module to train instead of ``create_backbone(arch)``
        (``arch`` is then only recorded); it needs ``forward (B,3,S,S) -> (B,D)``.
    arch_kwargs: extra keyword arguments for ``create_backbone``.

    Returns
    -------
    ``Path(out)`` (on every rank; only rank 0 writes).

    Metadata written with the checkpoint (``ckpt["fewshot_bench"]``): ``arch``, ``loss`` (the
    loss's name), ``loss_spec`` (as given), ``loss_params`` (every hyper-parameter, defaults
    included), ``lam``, ``temperature`` (``None`` when the loss has none), ``hard_negatives``,
    ``contrast_on``, ``batch_size``, ``epochs``, ``lr``, ``optimizer``, ``weight_decay``,
    ``momentum``, ``warmup_epochs``, ``seed``, ``embed_dim``, ``augment``, ``flip``, ``dataset``,
    ``split``, ``data_fingerprint``, ``n_classes``, ``image_size``, ``transform``,
    ``transform_key``, ``world_size``, ``protocol`` (``transform``, ``image_size``, ``resize``,
    ``crop``, ``mean``, ``std``, ``pool``, ``feature_layer``), ``pretrained`` (``path``,
    ``sha256``, ``ignored_head_keys``, ``pretrained_cfg``, or ``None``), ``val`` (list of
    ``{epoch, accuracy, ci95}`` or ``None``), ``val_spec``, ``keep``, ``selected_epoch``,
    ``log`` (the JSONL path), ``final_train_loss``, ``train_loss_history``,
    ``fewshot_bench_version``, ``kind="finetune"``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the
    environment when needed, the model is wrapped in ``DistributedDataParallel``, each rank
    trains on its slice of every global batch and the contrastive term sees the
    embeddings of all ranks (:mod:`fewshot_bench.distributed`). Validation runs on rank 0.
    """
    loss_fn = _build_loss(loss, loss_params, lam=lam, temperature=temperature, beta=beta)
    cfg = _validate(split, arch, loss_fn=loss_fn, contrast_on=contrast_on, epochs=epochs, batch_size=batch_size,
                    lr=lr, optimizer=optimizer, weight_decay=weight_decay, momentum=momentum,
                    warmup_epochs=warmup_epochs, seed=seed, embed_dim=embed_dim, out=out, augment=augment,
                    flip=flip, val_split=val_split, val_every=val_every, keep=keep)
    cfg.update(loss=str(loss).strip(), loss_name=loss_fn.name or str(loss).strip(), loss_params=loss_fn.params,
               arch_kwargs={k: v for k, v in (arch_kwargs or {}).items() if v is not None})
    out = Path(out)
    info, dev, use_amp = _runtime(cfg, device, amp, batch_size)
    val = _prepare_val(cfg, val_split, ways=val_ways, shots=val_shots, queries=val_queries, episodes=val_episodes)
    fork_devices = (
        [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=fork_devices), _deterministic(dev.type == "cpu"):
        torch.manual_seed(seed)
        net, tf = _build_net(split, arch, loss_fn, cfg, dev, backbone=backbone, arch_kwargs=arch_kwargs,
                             transform=transform, image_size=image_size, pretrained=pretrained,
                             embed_dim=embed_dim, log_file=log_file, out=out, world_size=info.world_size)
        return _train(net, loss_fn, split, tf, cfg, info, dev, use_amp, out, resume, progress, log, val)


def _runtime(cfg: dict, device: Any, amp: bool | None, batch_size: Any) -> tuple[D.DistInfo, torch.device, bool]:
    """The process group (initialised from the environment), the device and whether autocast is on."""
    info = D.init_from_env()
    dev = D.resolve_device(device, info)
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    if use_amp and dev.type != "cuda":
        raise ConfigError(f"--amp needs a CUDA device, but training runs on {dev}; drop --amp")
    if cfg["batch_size"] % info.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is not divisible by the {info.world_size} processes; "
            f"use a multiple of {info.world_size} (it is the global batch)"
        )
    return info, dev, use_amp


def _prepare_val(cfg: dict, val_split: Any, *, ways: int, shots: int, queries: int, episodes: int):
    """The fixed val episodes (``None`` without ``val_every``); records their description as ``val_spec``."""
    val = None
    if cfg["val_every"]:
        from .validate import prepare_val

        val = prepare_val(val_split, ways=ways, shots=shots, queries=queries, n_episodes=episodes)
    cfg["val_spec"] = val.describe() if val is not None else None
    return val


def _build_net(split, arch, loss_fn: TrainingLoss, cfg: dict, dev: torch.device, *, backbone, arch_kwargs,
               transform, image_size, pretrained, embed_dim, log_file, out: Path, world_size: int):
    """The input transform and the :class:`TrainNet` (backbone, pretrained weights, heads) on ``dev``.

    Records the input protocol, the pretrained weights and the log path in ``cfg``. Draws from
    the global RNG (the caller has seeded it): backbone, head, projection, in that order.
    """
    tf, side, backbone = _input_and_backbone(split, arch, arch_kwargs, backbone, transform, image_size,
                                             pretrained)
    pre_info = None
    if pretrained is not None:
        from .pretrained import load_pretrained

        pre_info = load_pretrained(backbone, pretrained)
    cfg.update(
        transform=str(getattr(tf, "name", type(tf).__name__)),
        transform_key=str(getattr(tf, "key", getattr(tf, "name", type(tf).__name__))),
        image_size=side,
        world_size=world_size,
        pretrained=pre_info,
        pretrained_sha256=pre_info["sha256"] if pre_info else None,
        protocol=input_protocol(tf, side, backbone),
        log=str(Path(log_file) if log_file is not None else log_path(out)),
    )
    net = TrainNet(
        backbone,
        _out_dim(backbone, tf, split),
        cfg["n_classes"],
        embed_dim,
        head=loss_fn.uses_ce,
        contrastive=loss_fn.uses_contrastive,
        contrast_on=cfg["contrast_on"] or "encoder",
    ).to(dev)
    return net, tf


def _input_and_backbone(split, arch, arch_kwargs, backbone, transform, image_size, pretrained):
    """The input transform, its side, and the backbone (built here unless given).

    With ``pretrained`` weights and no explicit ``transform``, a timm model's ``pretrained_cfg``
    decides the input size and normalisation (:mod:`fewshot_bench.train.inputs`); timm models
    ignore ``image_size`` at build time, so they are built first. Other archs are built at the
    transform's output side (``conv4``'s output size depends on it).
    """
    from .pretrained import pretrained_cfg

    use_cfg = pretrained is not None and transform is None
    if backbone is None and use_cfg and arch.strip().lower().startswith("timm:"):
        backbone = _build_backbone(arch, None, arch_kwargs)
    if backbone is not None:
        tf, side = resolve_transform(transform, split, image_size, pretrained_cfg(backbone) if use_cfg else None)
        return tf, side, backbone
    tf, side = resolve_transform(transform, split, image_size)
    return tf, side, _build_backbone(arch, side, arch_kwargs)


def _build_loss(loss: Any, loss_params: dict | None, **shortcuts: Any) -> TrainingLoss:
    """``create_loss(loss, **params)``: ``loss_params`` plus the ``lam``/``temperature``/``beta`` shortcuts."""
    if not isinstance(loss, str) or not loss.strip():
        raise ConfigError(f"--loss must be a loss name or path/to/file.py:ClassName, got {loss!r}")
    params = dict(loss_params or {})
    takes = set(get_loss_class(loss.strip()).param_names())
    for k, v in shortcuts.items():
        if v is None:
            continue
        if k not in takes:
            raise ConfigError(f"--{k} {v}: loss {loss.strip()!r} has no {k} (its parameters: "
                              f"{', '.join(sorted(takes)) or 'none'}); drop --{k} or pick a loss that takes it")
        if k in params and params[k] != v:
            raise ConfigError(f"--{k} {v} conflicts with loss_params {k}={params[k]!r}; give it once")
        params[k] = v
    return create_loss(loss.strip(), **params)


def _build_backbone(arch: str, side: int | None, arch_kwargs: dict | None) -> nn.Module:
    from ..backbones import create_backbone

    return create_backbone(arch, image_size=side, **(arch_kwargs or {}))


def _out_dim(backbone: nn.Module, tf: Callable, split: Any) -> int:
    dim = getattr(backbone, "out_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dev = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        f = backbone(tf(_batch_images(split, np.arange(1))).to(dev))
    backbone.train(was_training)
    return int(f.shape[-1])


# --------------------------------------------------------------------------- training loop


@dataclass
class _Progress:
    """Where a run stands; the resume file carries it beside the modules, optimiser and generator."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimisation steps done: the schedule's position
    history: list = field(default_factory=list)  # mean train loss per epoch
    records: list = field(default_factory=list)  # the log records, one per epoch
    val_results: list = field(default_factory=list)  # {epoch, accuracy, ci95} per validation
    best: dict | None = None  # keep="best": the best val epoch with a copy of its backbone


@dataclass
class _Loop:
    """What every epoch of one run uses; fixed for the run."""

    net: TrainNet
    model: nn.Module  # net, or net wrapped in DistributedDataParallel
    loss_fn: TrainingLoss
    split: Any
    tf: Callable
    cfg: dict
    info: D.DistInfo
    dev: torch.device
    autocast: tuple  # (device type, dtype, enabled) for torch.autocast
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator  # the shuffling generator
    total_steps: int
    warmup_steps: int
    views: int  # 2 for losses with a contrastive term, else 1
    pad: int  # zero padding of the random crop
    augment: Callable | None

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.net.parameters() if p.requires_grad]


def _train(net, loss_fn, split, tf, cfg, info, dev, use_amp, out, resume, progress, log, val) -> Path:
    """The training loop: resume, one :func:`_run_epoch` per epoch (validation, state, log), the final write."""
    opt = _make_optimizer(net, cfg)
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(cfg["seed"])
    spath = state_path(out)
    run = _resume(_load_state(spath, cfg), net, opt, scaler, gen) if resume and spath.exists() else _Progress()
    steps_per_epoch = len(split.labels) // cfg["batch_size"]
    loop = _Loop(
        net=net, model=_wrap_distributed(net, info, dev), loss_fn=loss_fn, split=split, tf=tf, cfg=cfg, info=info,
        dev=dev, autocast=(dev.type, amp_dtype, use_amp), opt=opt, scaler=scaler, gen=gen,
        total_steps=steps_per_epoch * cfg["epochs"], warmup_steps=steps_per_epoch * cfg["warmup_epochs"],
        views=2 if loss_fn.uses_contrastive else 1, pad=max(1, min(8, int(split.images.shape[1]) // 8)),
        augment=_augment_fn(cfg["flip"]) if cfg["augment"] else None,
    )
    main = info.rank == 0
    net.train()
    for epoch in range(run.epoch, cfg["epochs"]):
        record = _run_epoch(loop, run, epoch, progress=progress and main)
        if main and val is not None and ((epoch + 1) % cfg["val_every"] == 0 or epoch + 1 == cfg["epochs"]):
            _validate_epoch(loop, run, val, epoch, record)
        run.records.append(record)
        run.epoch = epoch + 1
        if main:
            _save_state(spath, loop, run)
            write_log(Path(cfg["log"]), run.records)
            if log is not None:
                log({**record, "epochs": cfg["epochs"], "seed": cfg["seed"], "state": spath})
    if main:
        selected = _select_backbone(loop, run)
        _save_final(out, net.backbone, _metadata(cfg, loss_fn, run.history, run.val_results, selected))
    if info.distributed:
        torch.distributed.barrier()
    return out


def _resume(state: dict, net, opt, scaler, gen) -> _Progress:
    """Load a resume state (checked by :func:`_load_state`) into the modules, optimiser, scaler and generator."""
    net.backbone.load_state_dict(state["model"])
    if net.head is not None:
        net.head.load_state_dict(state["head"])
    if net.projection is not None:
        net.projection.load_state_dict(state["projection"])
    opt.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    gen.set_state(state["generator"])
    return _Progress(epoch=int(state["epoch"]), step=int(state["scheduler"]["step"]), history=list(state["history"]),
                     records=list(state["records"]), val_results=list(state["val"]), best=state.get("best"))


def _wrap_distributed(net: nn.Module, info: D.DistInfo, dev: torch.device) -> nn.Module:
    if not info.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)


def _run_epoch(loop: _Loop, run: _Progress, epoch: int, *, progress: bool) -> dict:
    """One pass over this rank's share of the shuffled batches; returns the epoch's log record."""
    from tqdm import tqdm

    cfg, info = loop.cfg, loop.info
    torch.manual_seed(_derive(cfg["seed"], 1, epoch, info.rank))
    t0 = time.perf_counter()
    batches = D.shard_batches(len(loop.split.labels), cfg["batch_size"], loop.gen, info.rank, info.world_size)
    sums = torch.zeros(4, dtype=torch.float64)  # total, ce, contrastive, grad norm
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg['epochs']}", unit="batch", leave=False, disable=not progress,
               dynamic_ncols=True)
    params = loop.params
    lr_now = cfg["lr"]
    for s, idx in enumerate(bar):
        inp, yv = _step_inputs(loop, idx.numpy(), epoch, s)
        lr_now = cfg["lr"] * lr_factor(run.step, loop.total_steps, loop.warmup_steps)
        for group in loop.opt.param_groups:
            group["lr"] = lr_now
        terms, grad_norm = _step(loop.model, loop.loss_fn, inp, yv, loop.opt, loop.scaler, params, info,
                                 autocast=loop.autocast, where=(epoch, s, cfg["lr"]))
        run.step += 1
        sums += torch.tensor(
            [
                terms.total.item(),
                terms.ce.item() if terms.ce is not None else math.nan,
                terms.contrastive.item() if terms.contrastive is not None else math.nan,
                grad_norm,
            ],
            dtype=torch.float64,
        )
        bar.set_postfix(loss=f"{sums[0].item() / (s + 1):.4f}", lr=f"{lr_now:.2e}")
    bar.close()
    record = _epoch_record(loop, epoch, sums / len(batches), lr_now, len(batches), t0)
    run.history.append(float(record["loss"]))
    return record


def _step_inputs(loop: _Loop, idx: np.ndarray, epoch: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``s``'s input ``tf(cat(views))`` ``(V·B, 3, S, S)`` and its labels ``(V·B,)``.

    The views are successive draws of one generator seeded from ``(seed, 2, epoch, s, rank)``.
    """
    x = _batch_images(loop.split, idx).to(loop.dev, non_blocking=True)
    y = torch.from_numpy(np.asarray(loop.split.labels[idx], dtype=np.int64)).to(loop.dev)
    if loop.augment is not None:
        g = torch.Generator().manual_seed(_derive(loop.cfg["seed"], 2, epoch, s, loop.info.rank))
        xs = [loop.augment(x, g, loop.pad) for _ in range(loop.views)]
    else:
        xs = [x] * loop.views
    return loop.tf(torch.cat(xs)), y.repeat(loop.views)


def _epoch_record(loop: _Loop, epoch: int, means: torch.Tensor, lr: float, n_batches: int, t0: float) -> dict:
    """The log record from this rank's per-step means (total, ce, contrastive, grad norm), averaged over ranks."""
    means = means.tolist()
    if loop.info.distributed:  # average the per-rank means (CE is local, the contrastive term global)
        t = torch.tensor(means, dtype=torch.float64, device=loop.dev if loop.dev.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        means = (t / loop.info.world_size).cpu().tolist()
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": means[0],
        "ce": None if math.isnan(means[1]) else means[1],
        "contrastive": None if math.isnan(means[2]) else means[2],
        "lr": lr,
        "grad_norm": means[3],
        "images_per_s": n_batches * loop.cfg["batch_size"] / max(seconds, 1e-9),
        "seconds": seconds,
    }


def _validate_epoch(loop: _Loop, run: _Progress, val, epoch: int, record: dict) -> None:
    """ProtoNet accuracy on the fixed val episodes into ``record``; ``keep="best"`` keeps the best backbone."""
    from .validate import val_accuracy

    dev_type, amp_dtype, use_amp = loop.autocast
    t1 = time.perf_counter()
    acc, ci95 = val_accuracy(loop.net.backbone, loop.tf, val, loop.dev, autocast_dtype=amp_dtype if use_amp else None)
    record.update(val_accuracy=acc, val_ci95=ci95, val_seconds=time.perf_counter() - t1)
    run.val_results.append({"epoch": epoch + 1, "accuracy": acc, "ci95": ci95})
    if loop.cfg["keep"] == "best" and (run.best is None or acc > run.best["accuracy"]):
        run.best = {
            "epoch": epoch + 1,
            "accuracy": acc,
            "ci95": ci95,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in loop.net.backbone.state_dict().items()},
        }


def _select_backbone(loop: _Loop, run: _Progress) -> int:
    """Load the backbone to write into ``net`` (``keep="best"``: the best val epoch's); return its epoch."""
    if loop.cfg["keep"] != "best":
        return loop.cfg["epochs"]
    if run.best is None:  # cannot happen: the last epoch is always validated
        raise ConfigError("--keep best found no validated epoch; use --val-every")
    loop.net.backbone.load_state_dict(run.best["model"])
    return int(run.best["epoch"])


def _step(model, loss_fn: TrainingLoss, inp: torch.Tensor, yv: torch.Tensor, opt, scaler, params, info,
          *, autocast: tuple, where: tuple) -> tuple[Any, float]:
    """One optimisation step: forward ``inp (V·B, 3, S, S)`` with labels ``yv (V·B,)``, the registered
    loss (embeddings gathered across ranks under DDP), backward, the gradient norm, the update.

    Returns the loss terms and the L2 norm of the (unscaled) gradient before the update.
    """
    dev_type, amp_dtype, use_amp = autocast
    with torch.autocast(dev_type, dtype=amp_dtype, enabled=use_amp):
        logits, z = model(inp)
    logits = logits.float() if logits is not None else None
    z_labels = None
    if z is not None:
        z = z.float()
        if info.distributed:
            z, z_labels = D.gather_with_grad(z), D.all_gather_nograd(yv)
    terms = loss_fn(logits, z, yv, z_labels=z_labels)
    if not torch.isfinite(terms.total):
        epoch, s, lr = where
        raise ConfigError(f"training diverged at epoch {epoch + 1}, step {s + 1} (loss {terms.total.item()}); "
                          f"lower --lr (now {lr})")
    opt.zero_grad(set_to_none=True)
    scaler.scale(terms.total).backward()
    scaler.unscale_(opt)
    grad_norm = _grad_norm(params)
    scaler.step(opt)
    scaler.update()
    return terms, grad_norm


def _metadata(cfg: dict, loss_fn: TrainingLoss, history: list, val_results: list, selected: int) -> dict:
    meta = {
        k: cfg[k]
        for k in (*_RESUME_KEYS, *_META_ONLY_KEYS)
        if k not in ("loss", "pretrained_sha256", "val_every")  # written below / inside "pretrained" / "val"
    }
    params = loss_fn.params
    fixed = getattr(loss_fn, "term_fixed", None) or {}
    meta.update(
        loss=cfg["loss_name"],
        loss_spec=cfg["loss"],
        lam=params.get("lam"),
        temperature=params.get("temperature"),
        hard_negatives=params.get("hard_negatives", fixed.get("hard_negatives")),
        fewshot_bench_version=__version__,
        final_train_loss=history[-1] if history else None,
        train_loss_history=list(history),
        val=list(val_results) if cfg["val_every"] else None,
        selected_epoch=selected,
        kind="finetune",
    )
    return meta


def _grad_norm(params: list[torch.Tensor]) -> float:
    """Total L2 norm of all gradients (the norm of the concatenated gradient vector)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms)).item()) if norms else 0.0


def _make_optimizer(net: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _derive(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1)
    )


def _batch_images(split: Any, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(split.images[idx]))


def _augment_fn(flip: bool) -> Callable:
    from ..transforms import train_augment

    return lambda x, g, pad: train_augment(x, g, pad, flip=flip)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    if not enabled:
        yield
        return
    was, warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


# --------------------------------------------------------------------------- files


def _save_state(path: Path, loop: _Loop, run: _Progress) -> None:
    net = loop.net
    state = {
        "format": STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "fewshot_bench_version": __version__,
        "config": jsonable(loop.cfg),  # tuples as lists: compares equal after the round trip
        "epoch": run.epoch,
        "model": net.backbone.state_dict(),
        "head": net.head.state_dict() if net.head is not None else None,
        "projection": net.projection.state_dict() if net.projection is not None else None,
        "optimizer": loop.opt.state_dict(),
        "scheduler": {
            "kind": "warmup-cosine",
            "step": run.step,
            "total_steps": loop.total_steps,
            "warmup_steps": loop.warmup_steps,
        },
        "scaler": loop.scaler.state_dict() if loop.scaler.is_enabled() else None,
        "generator": loop.gen.get_state(),
        "history": list(run.history),
        "records": [dict(r) for r in run.records],
        "val": [dict(v) for v in run.val_results],
        "best": run.best,
    }
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def _load_state(path: Path, cfg: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CheckpointError(
            f"{path}: cannot read the resume state ({type(exc).__name__}); delete it or run without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a fewshot-bench resume state; delete it or run without --resume")
    if state.get("format_version") != _STATE_VERSION:
        raise CheckpointError(
            f"{path}: resume state version {state.get('format_version')} is not "
            f"{_STATE_VERSION}; run without --resume"
        )
    old, new = state.get("config", {}), jsonable(cfg)
    diff = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more setting(s))" if len(diff) > 1 else ""
        raise ConfigError(
            f"{path}: written with {k}={old.get(k)!r}, now {k}={new.get(k)!r}{more}; "
            f"pass the same settings to resume, or run without --resume to start over"
        )
    return state


def _save_final(out: Path, backbone: nn.Module, meta: dict) -> None:
    from ..backbones import save_checkpoint

    save_checkpoint(out, backbone, meta)


# --------------------------------------------------------------------------- validation


def _validate(split: Any, arch: Any, *, loss_fn: TrainingLoss, **kw: Any) -> dict:
    """Check the settings ``kw``, ``arch``, ``out`` and the split; return the run's configuration."""
    _check_settings(loss_fn, kw)
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"--arch must be a non-empty name, got {arch!r}")
    out = Path(kw["out"])
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a checkpoint file name such as {out / 'model.pt'}")
    n_classes = _check_split(split, kw["batch_size"])
    contrastive = loss_fn.uses_contrastive
    return {
        "arch": arch.strip(),
        "contrast_on": kw["contrast_on"] if contrastive else None,
        "optimizer": kw["optimizer"].lower(),
        "epochs": int(kw["epochs"]),
        "batch_size": int(kw["batch_size"]),
        "lr": float(kw["lr"]),
        "weight_decay": float(kw["weight_decay"]),
        "momentum": float(kw["momentum"]),
        "warmup_epochs": int(kw["warmup_epochs"]),
        "seed": int(kw["seed"]),
        "embed_dim": int(kw["embed_dim"]) if contrastive and kw["contrast_on"] == "projection" else None,
        "augment": bool(kw["augment"]),
        "flip": bool(kw["flip"]),
        "dataset": str(split.dataset),
        "split": str(split.split),
        "data_fingerprint": str(split.fingerprint),
        "data_image_size": int(split.images.shape[1]),  # the decoded side (image folders: --image-size)
        "n_classes": int(n_classes),
        "val_every": int(kw["val_every"]),
        "keep": kw["keep"],
    }


def _check_settings(loss_fn: TrainingLoss, kw: dict) -> None:
    """Check the training settings; the first one that is wrong raises, naming its flag."""
    opt = kw["optimizer"]
    if not isinstance(opt, str) or opt.lower() not in OPTIMIZERS:
        hint = close_matches(str(opt), list(OPTIMIZERS))
        raise UnknownNameError(
            f"unknown optimizer {opt!r} (--optimizer); "
            + (f"did you mean: {', '.join(hint)}?" if hint else f"choose from: {', '.join(OPTIMIZERS)}")
        )
    contrast_on = kw["contrast_on"]
    if contrast_on not in CONTRAST_ON:
        raise ConfigError(f"--contrast-on {contrast_on!r}: choose {' or '.join(CONTRAST_ON)}")
    _int_at_least("--epochs", kw["epochs"], 1)
    min_batch = 2 if loss_fn.uses_contrastive else 1
    _int_at_least(
        "--batch-size",
        kw["batch_size"],
        min_batch,
        why=f" (loss {loss_fn.name} needs {min_batch} images per batch)" if min_batch > 1 else "",
    )
    _int_at_least("--warmup-epochs", kw["warmup_epochs"], 0)
    if kw["warmup_epochs"] >= kw["epochs"] and kw["warmup_epochs"] > 0:
        raise ConfigError(
            f"--warmup-epochs {kw['warmup_epochs']} must be smaller than --epochs {kw['epochs']}"
        )
    _int_at_least("--seed", kw["seed"], 0)
    _int_at_least("--embed-dim", kw["embed_dim"], 1)
    _int_at_least("--val-every", kw["val_every"], 0)
    _positive("--lr", kw["lr"])
    for flag, key in (("--weight-decay", "weight_decay"), ("--momentum", "momentum")):
        v = kw[key]
        if not (is_number(v, finite=True) and v >= 0):
            raise ConfigError(f"{flag} {v!r} must be a number >= 0")
    keep = kw["keep"]
    if keep not in KEEP:
        raise ConfigError(f"--keep {keep!r}: choose {' or '.join(KEEP)}")
    if kw["val_every"] and kw["val_split"] is None:
        raise ConfigError(f"--val-every {kw['val_every']} needs a val split to validate on; pass val_split")
    if keep == "best" and not kw["val_every"]:
        raise ConfigError("--keep best needs validation: add --val-every N")


def _check_split(split: Any, batch_size: int) -> int:
    """Check that ``split`` holds uint8 RGB images with labels in ``0..C-1``, C >= 2, and one batch; return C."""
    images, labels = getattr(split, "images", None), getattr(split, "labels", None)
    if images is None or labels is None or getattr(images, "ndim", 0) != 4 or images.shape[-1] != 3:
        raise DataError(
            f"split {getattr(split, 'dataset', '?')}: images must be uint8 (N, H, W, 3) with labels (N,)"
        )
    if images.dtype != np.uint8:
        raise DataError(f"split {split.dataset}/{split.split}: images are {images.dtype}, expected uint8 RGB")
    n, n_classes = len(labels), len(split.class_names)
    if len(images) != n:
        raise DataError(f"split {split.dataset}/{split.split}: {len(images)} images but {n} labels")
    if n_classes < 2:
        raise DataError(
            f"split {split.dataset}/{split.split} has {n_classes} class; fine-tuning needs at least 2"
        )
    if n and (int(np.min(labels)) < 0 or int(np.max(labels)) >= n_classes):
        raise DataError(f"split {split.dataset}/{split.split}: labels must lie in 0..{n_classes - 1}")
    if n < batch_size:
        raise ConfigError(
            f"split {split.dataset}/{split.split} has {n} images, fewer than "
            f"--batch-size {batch_size}; lower --batch-size"
        )
    return n_classes


_int_at_least = check_int  # (flag, value, minimum, why=""): the package's one integer check


def _positive(flag: str, v: Any) -> None:
    if not (is_number(v, finite=True) and v > 0):
        raise ConfigError(f"{flag} {v!r} must be a positive number")
