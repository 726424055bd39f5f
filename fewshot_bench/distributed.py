"""Helpers for multi-process (DDP) fine-tuning under ``torchrun``.

``torchrun --nproc-per-node G -m fewshot_bench finetune ...`` starts G processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`fewshot_bench.train.finetune` calls :func:`init_from_env` itself when
``WORLD_SIZE > 1`` and no process group exists yet.

The contract of a DDP run (see :func:`fewshot_bench.train.finetune`):

- ``batch_size`` is the *global* batch; each rank takes a contiguous slice of
  ``batch_size // world_size`` rows of every global batch (:func:`shard_batches`), drawn
  from one permutation that every rank computes from the same seeded generator, so rank
  order concatenates back to the single-process batch;
- the contrastive term is computed on the embeddings of *all* ranks
  (:func:`gather_with_grad`), so it equals the single-process loss on the concatenated
  batch, and its gradient (after DDP's gradient averaging) equals the single-process
  gradient;
- only rank 0 writes files (:func:`is_main`).

BatchNorm statistics stay per rank (no SyncBatchNorm), as in most SupCon/SimCLR code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "all_gather_nograd",
    "gather_with_grad",
    "get_info",
    "init_from_env",
    "is_main",
    "shard_batches",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun"
        ) from None


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``MASTER_ADDR``/``MASTER_PORT`` are
    read by ``env://``). Backend: ``nccl`` when CUDA is available, else ``gloo``. On CUDA
    the current device is set to ``LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 nothing
    is initialised and ``DistInfo()`` (rank 0 of 1) is returned. Calling it again once a
    group exists just reports it.
    """
    if dist.is_available() and dist.is_initialized():
        return get_info()
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world <= 1:
        return DistInfo()
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}; launch with torchrun")
    if not dist.is_available():  # pragma: no cover - every stock build has it
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def get_info() -> DistInfo:
    """Rank and world size of the current default group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", dist.get_rank()),
    )


def is_main() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files."""
    return get_info().rank == 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for the local shard.

    Forward: ``(b, ...) -> (world * b, ...)`` in rank order. Backward: all-reduce (SUM) of
    the full incoming gradient, then this rank's slice. Every rank computes the same
    global loss, so the summed gradient is ``world * dL/dz_local``; DDP then averages the
    parameter gradients over ranks, giving exactly the single-process gradient. (Uses
    all-reduce rather than reduce-scatter/all-to-all so it runs on gloo too.)
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = z.contiguous()
        world = dist.get_world_size()
        ctx.rank, ctx.b = dist.get_rank(), z.shape[0]
        parts = [torch.empty_like(z) for _ in range(world)]
        dist.all_gather(parts, z)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.b : (ctx.rank + 1) * ctx.b]


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z (b, ...)`` from every rank in rank order → ``(world * b, ...)``.

    Gradients flow back to the local shard (see :class:`_GatherWithGrad` for why the
    result after DDP averaging is the single-process gradient). Every rank must pass the
    same shape. Without a process group it returns ``z`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherWithGrad.apply(z)


def all_gather_nograd(t: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (e.g. labels), concatenated in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def shard_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """One epoch of index batches for this rank: shuffle, drop the last partial batch, shard.

    Draws one permutation of ``range(n)`` from ``generator`` (a CPU generator with the same
    state on every rank, so every rank draws the same permutation and advances its state
    identically), cuts it into ``n // batch_size`` global batches and returns this rank's
    contiguous slice of ``batch_size // world_size`` rows of each. Concatenating the ranks'
    slices in rank order gives the global batch. ``batch_size`` must be divisible by
    ``world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}")
    if batch_size % world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} (it is the global batch)"
        )
    perm = torch.randperm(n, generator=generator)
    per = batch_size // world_size
    steps = n // batch_size
    return [perm[s * batch_size + rank * per : s * batch_size + (rank + 1) * per] for s in range(steps)]
