"""Fine-tune a backbone on a train split with CE, SupCon or CLCE; resumable and deterministic.

>>> path = finetune(split, "conv4", loss="clce", epochs=5, lr=1e-3, out=Path("checkpoints/clce.pt"))

The network is ``backbone -> features (D)``, plus

- a linear head ``D -> C`` for the cross-entropy term (losses ``ce``, ``clce``,
  ``clce-nohnm``), on the backbone features;
- a projection ``D -> min(D, 2048) -> ReLU -> embed_dim`` whose output is L2-normalised
  inside the contrastive losses (``supcon``, ``clce``, ``clce-nohnm``), as in SupCon and
  the CLCE paper.

Contrastive losses see **two augmented views** of every image (both views of an image are
positives of each other, as are all views of its class); CE-only training uses one view.
The CE term of CLCE is averaged over both views. Batches are plain random shuffles with
the last partial batch dropped (no class-balanced sampler): an anchor whose class has no
other image in the batch still has its second view as a positive, and a batch in which no
anchor has a positive contributes 0 to the contrastive term.

Only the backbone is written to ``out`` (through
:func:`fewshot_bench.backbones.save_checkpoint`, with metadata); head, projection,
optimizer, schedule and generator states go to the resume file :func:`state_path`
(``NAME.state.pt`` beside ``NAME.pt``), rewritten atomically after every epoch.

Randomness, all from ``seed``:

- model initialisation: ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the
  caller's global RNG state is restored afterwards);
- shuffling: one CPU ``torch.Generator`` seeded with ``seed``, its state saved every epoch;
- augmentation: a generator per step seeded from ``(seed, epoch, step, rank)``;
- anything drawing from the global RNG inside the model (dropout): reseeded per epoch from
  ``(seed, epoch, rank)``.

On CPU, ``torch.use_deterministic_algorithms(True)`` is switched on for the run (and
restored), so two runs with one seed give identical weights, and an interrupted run
resumed with ``resume=True`` gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .. import distributed as D
from .._io import atomic_write
from ..errors import CheckpointError, ConfigError, DataError, FewshotBenchError, UnknownNameError
from ..registry import close_matches
from .losses import LOSSES, cross_entropy, lacln_loss, supcon_loss

__all__ = ["OPTIMIZERS", "STATE_FORMAT", "finetune", "state_path"]

OPTIMIZERS = ("adamw", "sgd")
STATE_FORMAT = "fewshot-bench-train-state"
_STATE_VERSION = 1
_CONTRASTIVE = ("supcon", "clce", "clce-nohnm")

# config entries that must match for resume=True to continue a run
_RESUME_KEYS = (
    "arch",
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "warmup_epochs",
    "temperature",
    "lam",
    "seed",
    "embed_dim",
    "augment",
    "flip",
    "dataset",
    "data_fingerprint",
    "n_classes",
    "image_size",
    "transform_key",
)


def state_path(out: str | Path) -> Path:
    """The resume file kept beside the checkpoint ``out``: ``NAME.pt`` → ``NAME.state.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt") if out.suffix else out.with_name(out.name + ".state.pt")


def finetune(
    split: Any,
    arch: str,
    *,
    loss: str = "ce",
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    warmup_epochs: int = 0,
    temperature: float = 0.5,
    lam: float = 0.9,
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
    backbone: nn.Module | None = None,
    arch_kwargs: dict | None = None,
) -> Path:
    """Fine-tune ``arch`` on ``split`` and write the backbone checkpoint ``out``.

    Parameters
    ----------
    split: a :class:`fewshot_bench.data.Split` (uint8 ``images (N, H, W, 3)``, ``labels (N,)``
        in ``0..C-1``, ``class_names``, ``dataset``, ``split``, ``fingerprint``).
    arch: backbone name for :func:`fewshot_bench.backbones.create_backbone` (built with
        ``image_size=`` the transform's output side, plus ``arch_kwargs``).
    loss: ``ce`` | ``supcon`` | ``clce`` ((1-λ)·CE + λ·LACLN with hard negatives) |
        ``clce-nohnm`` (the same without hard-negative weights).
    epochs: passes over the split; batches per epoch = ``N // batch_size`` (drop last).
    batch_size: images per step (the *global* batch under DDP; each image gives two views
        for contrastive losses, so the loss sees ``2 * batch_size`` embeddings).
    lr, optimizer, weight_decay, momentum: AdamW (betas 0.9/0.999) or SGD (``momentum``);
        weight decay on every parameter.
    warmup_epochs: linear warm-up length; then cosine decay to 0 over the remaining steps
        (the schedule is per step).
    temperature, lam: τ of the contrastive term, λ of CLCE.
    seed: every random draw (see the module docstring).
    device: ``None`` → CUDA if available (``cuda:LOCAL_RANK`` under DDP), else CPU.
    out: the checkpoint to write (backbone ``state_dict`` + metadata); the resume state
        lives in :func:`state_path` ``(out)``.
    resume: continue from the resume file when it exists (its configuration must match,
        else :class:`ConfigError`); start from scratch when there is none. Without
        ``resume`` an existing resume file is overwritten.
    transform: eval transform used to feed the network (name or
        :class:`~fewshot_bench.transforms.EvalTransform` or any callable uint8
        ``(B, H, W, 3)`` → float ``(B, 3, S, S)``); ``None`` → the dataset's registered
        ``eval_transform``, else ``"unit"``. Use the same one for evaluation: it is recorded
        in the metadata (``transform``, ``transform_key``).
    image_size: expected network input side; ``None`` → whatever the transform outputs.
        A mismatch is a :class:`ConfigError` (images are never silently stretched).
    embed_dim: output size of the projection head.
    progress: tqdm bar per epoch (rank 0 only).
    augment: random crop with zero padding ``clamp(H // 8, 1, 8)`` + horizontal flip
        (:func:`fewshot_bench.transforms.train_augment`) on the uint8 images before the
        transform; ``False`` feeds the images as they are (both views are then identical).
    flip: include the horizontal flip in the augmentation; turn it off where a mirror image is
        another class (digits, text).
    amp: mixed precision autocast (bf16 where supported, else fp16 with a grad scaler);
        ``None`` → on for CUDA, off on CPU. ``True`` on CPU is a :class:`ConfigError`.
    log: called on rank 0 after every epoch (after its state is saved) with a dict
        ``{epoch, epochs, loss, ce, contrastive, lr, seconds, images_per_s, state}``.
    backbone: an already built module to train instead of ``create_backbone(arch)``
        (``arch`` is then only recorded); it needs ``forward (B,3,S,S) -> (B,D)``.
    arch_kwargs: extra keyword arguments for ``create_backbone``.

    Returns
    -------
    ``Path(out)`` (on every rank; only rank 0 writes).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the
    environment when needed, the model is wrapped in ``DistributedDataParallel``, each rank
    trains on its slice of every global batch and the contrastive term sees the
    embeddings of all ranks (:mod:`fewshot_bench.distributed`).
    """
    cfg = _validate(
        split,
        arch,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        momentum=momentum,
        warmup_epochs=warmup_epochs,
        temperature=temperature,
        lam=lam,
        seed=seed,
        embed_dim=embed_dim,
        out=out,
        augment=augment,
        flip=flip,
    )
    out = Path(out)
    info = D.init_from_env()
    dev = _resolve_device(device, info)
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    if use_amp and dev.type != "cuda":
        raise ConfigError(f"--amp needs a CUDA device, but training runs on {dev}; drop --amp")
    tf, tf_name, tf_key = _resolve_transform(transform, split)
    side = _input_side(tf, split, image_size)
    cfg.update(transform=tf_name, transform_key=tf_key, image_size=side, world_size=info.world_size)
    if cfg["batch_size"] % info.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is not divisible by the {info.world_size} processes; "
            f"use a multiple of {info.world_size} (it is the global batch)"
        )

    fork_devices = (
        [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=fork_devices), _deterministic(dev.type == "cpu"):
        torch.manual_seed(seed)
        if backbone is None:
            backbone = _build_backbone(arch, side, arch_kwargs)
        net = _TrainNet(
            backbone,
            _out_dim(backbone, tf, split),
            cfg["n_classes"],
            embed_dim,
            head=loss != "supcon",
            projection=loss in _CONTRASTIVE,
        ).to(dev)
        return _train(net, split, tf, cfg, info, dev, use_amp, out, resume, progress, log)


# --------------------------------------------------------------------------- the network


class _TrainNet(nn.Module):
    """Backbone plus the training-only heads; ``forward -> (logits | None, z | None)``."""

    def __init__(
        self, backbone: nn.Module, dim: int, n_classes: int, embed_dim: int, *, head: bool, projection: bool
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, n_classes) if head else None
        hidden = min(dim, 2048)
        self.projection = (
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))
            if projection
            else None
        )

    def forward(self, x: torch.Tensor):
        f = self.backbone(x)
        if f.ndim != 2:
            raise DataError(
                f"the backbone returned shape {tuple(f.shape)}; fine-tuning needs (B, D) features"
            )
        logits = self.head(f) if self.head is not None else None
        z = self.projection(f) if self.projection is not None else None
        return logits, z


def _build_backbone(arch: str, side: int, arch_kwargs: dict | None) -> nn.Module:
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


def _train(net, split, tf, cfg, info, dev, use_amp, out, resume, progress, log) -> Path:
    from tqdm import tqdm

    loss_name, seed = cfg["loss"], cfg["seed"]
    n = len(split.labels)
    steps_per_epoch = n // cfg["batch_size"]
    total_steps = steps_per_epoch * cfg["epochs"]
    warmup_steps = steps_per_epoch * cfg["warmup_epochs"]
    opt = _make_optimizer(net, cfg)
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(seed)
    start_epoch, step, history = 0, 0, []

    spath = state_path(out)
    if resume and spath.exists():
        state = _load_state(spath, cfg)
        net.backbone.load_state_dict(state["model"])
        if net.head is not None:
            net.head.load_state_dict(state["head"])
        if net.projection is not None:
            net.projection.load_state_dict(state["projection"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        start_epoch, step, history = (
            int(state["epoch"]),
            int(state["scheduler"]["step"]),
            list(state["history"]),
        )

    model: nn.Module = net
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)

    images_u8 = split.images
    pad = max(1, min(8, int(images_u8.shape[1]) // 8))
    views = 2 if loss_name in _CONTRASTIVE else 1
    augment_fn = _augment_fn(cfg["flip"]) if cfg["augment"] else None
    main = info.rank == 0
    net.train()

    for epoch in range(start_epoch, cfg["epochs"]):
        torch.manual_seed(_derive(seed, 1, epoch, info.rank))
        t0 = time.perf_counter()
        batches = D.shard_batches(n, cfg["batch_size"], gen, info.rank, info.world_size)
        sums = torch.zeros(3, dtype=torch.float64)  # loss, ce, contrastive
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg['epochs']}",
            unit="batch",
            leave=False,
            disable=not (progress and main),
            dynamic_ncols=True,
        )
        for s, idx in enumerate(bar):
            x = _batch_images(split, idx.numpy()).to(dev, non_blocking=True)
            y = torch.from_numpy(np.asarray(split.labels[idx.numpy()], dtype=np.int64)).to(dev)
            if augment_fn is not None:
                g = torch.Generator().manual_seed(_derive(seed, 2, epoch, s, info.rank))
                xs = [augment_fn(x, g, pad) for _ in range(views)]
            else:
                xs = [x] * views
            inp = tf(torch.cat(xs))
            yv = y.repeat(views)
            lr_now = cfg["lr"] * _lr_factor(step, total_steps, warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr_now
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                logits, z = model(inp)
            ce = cross_entropy(logits.float(), yv) if logits is not None else None
            con = None
            if z is not None:
                z_all = D.gather_with_grad(z.float())
                y_all = D.all_gather_nograd(yv)
                if loss_name == "supcon":
                    con = supcon_loss(z_all, y_all, cfg["temperature"])
                else:
                    con = lacln_loss(z_all, y_all, cfg["temperature"], hard_negatives=loss_name == "clce")
            if loss_name == "ce":
                total = ce
            elif loss_name == "supcon":
                total = con
            else:
                total = (1.0 - cfg["lam"]) * ce + cfg["lam"] * con
            if not torch.isfinite(total):
                raise ConfigError(
                    f"training diverged at epoch {epoch + 1}, step {s + 1} (loss {total.item()}); "
                    f"lower --lr (now {cfg['lr']})"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            sums += torch.tensor(
                [
                    total.item(),
                    ce.item() if ce is not None else math.nan,
                    con.item() if con is not None else math.nan,
                ],
                dtype=torch.float64,
            )
            bar.set_postfix(loss=f"{sums[0].item() / (s + 1):.4f}")
        bar.close()
        means = (sums / len(batches)).tolist()
        if info.distributed:  # average the per-rank means (CE is local, the contrastive term global)
            t = torch.tensor(means, dtype=torch.float64, device=dev if dev.type == "cuda" else "cpu")
            torch.distributed.all_reduce(t)
            means = (t / info.world_size).cpu().tolist()
        seconds = time.perf_counter() - t0
        history.append(float(means[0]))
        if main:
            _save_state(
                spath, net, opt, scaler, gen, cfg, epoch + 1, step, total_steps, warmup_steps, history
            )
            if log is not None:
                log(
                    {
                        "epoch": epoch + 1,
                        "epochs": cfg["epochs"],
                        "loss": means[0],
                        "ce": None if math.isnan(means[1]) else means[1],
                        "contrastive": None if math.isnan(means[2]) else means[2],
                        "lr": lr_now,
                        "seconds": seconds,
                        "images_per_s": len(batches) * cfg["batch_size"] / max(seconds, 1e-9),
                        "state": spath,
                    }
                )

    if main:
        meta = {
            k: cfg[k]
            for k in (
                "arch",
                "loss",
                "temperature",
                "lam",
                "batch_size",
                "epochs",
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
                "split",
                "data_fingerprint",
                "n_classes",
                "image_size",
                "transform",
                "transform_key",
                "world_size",
            )
        }
        if loss_name not in ("clce", "clce-nohnm"):
            meta["lam"] = None
        if loss_name == "ce":
            meta["temperature"] = None
        meta.update(
            fewshot_bench_version=__version__,
            final_train_loss=history[-1] if history else None,
            train_loss_history=history,
            hard_negatives=loss_name == "clce",
            kind="finetune",
        )
        _save_final(out, net.backbone, meta)
    if info.distributed:
        torch.distributed.barrier()
    return out


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


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


def _save_state(path, net, opt, scaler, gen, cfg, epoch, step, total_steps, warmup_steps, history) -> None:
    state = {
        "format": STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "fewshot_bench_version": __version__,
        "config": dict(cfg),
        "epoch": epoch,
        "model": net.backbone.state_dict(),
        "head": net.head.state_dict() if net.head is not None else None,
        "projection": net.projection.state_dict() if net.projection is not None else None,
        "optimizer": opt.state_dict(),
        "scheduler": {
            "kind": "cosine",
            "step": step,
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
        },
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "generator": gen.get_state(),
        "history": list(history),
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
    old = state.get("config", {})
    diff = [k for k in _RESUME_KEYS if old.get(k) != cfg.get(k)]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more setting(s))" if len(diff) > 1 else ""
        raise ConfigError(
            f"{path}: written with {k}={old.get(k)!r}, now {k}={cfg.get(k)!r}{more}; "
            f"pass the same settings to resume, or run without --resume to start over"
        )
    return state


def _save_final(out: Path, backbone: nn.Module, meta: dict) -> None:
    try:
        from ..backbones import save_checkpoint
    except ImportError:  # backbones not importable yet: the same file layout
        with atomic_write(out, "wb") as f:
            torch.save({"state_dict": backbone.state_dict(), "fewshot_bench": meta}, f)
        return
    save_checkpoint(out, backbone, meta)


# --------------------------------------------------------------------------- validation


def _validate(split: Any, arch: Any, **kw: Any) -> dict:
    loss = kw["loss"]
    if not isinstance(loss, str) or loss.lower() not in LOSSES:
        hint = close_matches(str(loss), list(LOSSES))
        raise UnknownNameError(
            f"unknown loss {loss!r} (--loss); "
            + (f"did you mean: {', '.join(hint)}?" if hint else f"choose from: {', '.join(LOSSES)}")
        )
    loss = loss.lower()
    opt = kw["optimizer"]
    if not isinstance(opt, str) or opt.lower() not in OPTIMIZERS:
        hint = close_matches(str(opt), list(OPTIMIZERS))
        raise UnknownNameError(
            f"unknown optimizer {opt!r} (--optimizer); "
            + (f"did you mean: {', '.join(hint)}?" if hint else f"choose from: {', '.join(OPTIMIZERS)}")
        )
    _int_at_least("--epochs", kw["epochs"], 1)
    min_batch = 2 if loss in _CONTRASTIVE else 1
    _int_at_least(
        "--batch-size",
        kw["batch_size"],
        min_batch,
        why=f" (loss {loss} needs {min_batch} images per batch)" if min_batch > 1 else "",
    )
    _int_at_least("--warmup-epochs", kw["warmup_epochs"], 0)
    if kw["warmup_epochs"] >= kw["epochs"] and kw["warmup_epochs"] > 0:
        raise ConfigError(
            f"--warmup-epochs {kw['warmup_epochs']} must be smaller than --epochs {kw['epochs']}"
        )
    _int_at_least("--seed", kw["seed"], 0)
    _int_at_least("--embed-dim", kw["embed_dim"], 1)
    _positive("--lr", kw["lr"])
    _positive("--temperature", kw["temperature"])
    for flag, key in (("--weight-decay", "weight_decay"), ("--momentum", "momentum")):
        v = kw[key]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{flag} {v!r} must be a number >= 0")
    lam = kw["lam"]
    if not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise ConfigError(f"--lam {lam!r} is outside [0, 1]; CLCE mixes (1 - lam) * CE + lam * LACLN")
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"--arch must be a non-empty name, got {arch!r}")
    out = Path(kw["out"])
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a checkpoint file name such as {out / 'model.pt'}")

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
    if n < kw["batch_size"]:
        raise ConfigError(
            f"split {split.dataset}/{split.split} has {n} images, fewer than "
            f"--batch-size {kw['batch_size']}; lower --batch-size"
        )
    return {
        "arch": arch.strip(),
        "loss": loss,
        "optimizer": opt.lower(),
        "epochs": int(kw["epochs"]),
        "batch_size": int(kw["batch_size"]),
        "lr": float(kw["lr"]),
        "weight_decay": float(kw["weight_decay"]),
        "momentum": float(kw["momentum"]),
        "warmup_epochs": int(kw["warmup_epochs"]),
        "temperature": float(kw["temperature"]),
        "lam": float(lam),
        "seed": int(kw["seed"]),
        "embed_dim": int(kw["embed_dim"]),
        "augment": bool(kw["augment"]),
        "flip": bool(kw["flip"]),
        "dataset": str(split.dataset),
        "split": str(split.split),
        "data_fingerprint": str(split.fingerprint),
        "n_classes": int(n_classes),
    }


def _int_at_least(flag: str, v: Any, lo: int, why: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ConfigError(f"{flag} {v!r} must be an integer >= {lo}{why}")


def _positive(flag: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{flag} {v!r} must be a positive number")


def _resolve_device(device: Any, info: D.DistInfo) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank if info.distributed else torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA but none is available; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.distributed else torch.cuda.current_device())
    return dev


def _resolve_transform(transform: Any, split: Any) -> tuple[Callable, str, str]:
    if transform is None:
        transform = "unit"
        try:
            from ..data import DATASETS

            transform = DATASETS.get(split.dataset).eval_transform
        except (ImportError, FewshotBenchError, AttributeError):
            pass
    if isinstance(transform, str) or type(transform).__name__ == "EvalTransform":
        from ..transforms import get_transform

        t = get_transform(transform)
        return t, t.name, t.key
    if not callable(transform):
        raise ConfigError(
            f"transform must be a name, an EvalTransform or a callable, got {type(transform).__name__}"
        )
    name = str(getattr(transform, "name", type(transform).__name__))
    return transform, name, str(getattr(transform, "key", name))


def _input_side(tf: Callable, split: Any, image_size: int | None) -> int:
    x = tf(_batch_images(split, np.arange(1)))
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise DataError(f"the transform gave shape {tuple(x.shape)}; it must give (B, 3, S, S)")
    side = int(x.shape[-1])
    if image_size is not None and int(image_size) != side:
        raise ConfigError(
            f"--image-size {image_size} but the transform makes {side} px inputs from this split's "
            f"{split.images.shape[1]}x{split.images.shape[2]} images; pick a transform that outputs "
            f"{image_size} px or load the split at that size"
        )
    return side
