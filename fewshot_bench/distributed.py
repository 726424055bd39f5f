"""Helpers for multi-process runs under ``torchrun``: DDP fine-tuning and sharded extraction.

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

Sharded feature extraction (``torchrun ... -m fewshot_bench extract|eval``, see
:func:`fewshot_bench.features.get_features`): rank ``r`` embeds the contiguous run of whole
batches :func:`batch_shard` gives it, :func:`gather_rows_to_main` sends every shard to rank 0,
which writes the cache entry; batches are cut exactly as in one process, so the merged
array is the single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

__all__ = [
    "DistInfo",
    "agree",
    "all_gather_nograd",
    "barrier",
    "batch_shard",
    "broadcast_flag",
    "gather_rows_to_main",
    "gather_with_grad",
    "get_info",
    "init_from_env",
    "is_main",
    "resolve_device",
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


def resolve_device(device: str | torch.device | None = None, info: DistInfo | None = None) -> torch.device:
    """The torch device a ``--device`` value names; the one device resolver of the package.

    ``None``: CUDA when available, else CPU. A CUDA device without an index (``None`` or
    ``"cuda"``) gets ``cuda:<LOCAL_RANK>`` under torchrun (``info``, default :func:`get_info`)
    and the current CUDA device otherwise. A value torch does not parse, or CUDA asked for
    where there is none, raises :class:`~fewshot_bench.errors.ConfigError`.
    """
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA but none is available; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        info = get_info() if info is None else info
        dev = torch.device("cuda", info.local_rank if info.distributed else torch.cuda.current_device())
    return dev


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


# ------------------------------------------------------------------ sharded extraction


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batch_shard(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` embeds: a contiguous run of whole batches.

    The ``ceil(n / batch_size)`` batches of a single-process pass are split into
    ``world_size`` contiguous runs (sizes differ by at most one batch), so every batch a
    rank feeds the model is one the single process fed it, and the shards concatenate in
    rank order to ``range(n)``. A rank may get no rows (``lo == hi``).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    n_batches = -(-n // batch_size)
    first, last = rank * n_batches // world_size, (rank + 1) * n_batches // world_size
    return min(n, first * batch_size), min(n, last * batch_size)


def agree(ok: bool) -> bool:
    """True on every rank iff ``ok`` on every rank (one all-reduce); ``ok`` itself without a group.

    Call it after a step that may fail on some ranks only, so that all ranks leave together
    instead of some waiting forever in the next collective.
    """
    if not _active():
        return bool(ok)
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def broadcast_flag(value: bool, src: int = 0) -> bool:
    """``value`` of rank ``src`` on every rank."""
    if not _active():
        return bool(value)
    flag = torch.tensor([1 if value else 0], dtype=torch.int32, device=_comm_device())
    dist.broadcast(flag, src)
    return bool(flag.item())


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _active():
        dist.barrier()


def gather_rows_to_main(
    local: np.ndarray, n: int, shard_of=None, chunk_bytes: int = 1 << 26
) -> np.ndarray | None:
    """Concatenate every rank's ``(n_r, D)`` float32 shard on rank 0 → ``(n, D)``; ``None`` elsewhere.

    ``shard_of(rank) -> (lo, hi)`` says which rows each rank holds (every rank computes the
    same answer, so nothing but the rows travels); they must tile ``range(n)`` in rank
    order. Rows go point to point in chunks of about ``chunk_bytes`` (on the GPU under
    NCCL), so no rank ever holds more than its shard plus one chunk, and rank 0 the result
    plus one chunk. ``D`` is agreed with one all-reduce (a rank with no rows may not know it).
    Without a process group ``local`` is returned as is.
    """
    if not _active():
        return local
    rank, world, dev = dist.get_rank(), dist.get_world_size(), _comm_device()
    dim = torch.tensor([local.shape[1] if len(local) else 0], dtype=torch.int64, device=dev)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    d = int(dim.item())
    rows_per_chunk = max(1, chunk_bytes // max(1, 4 * d))
    if rank != 0:
        lo, hi = shard_of(rank)
        assert len(local) == hi - lo, (len(local), lo, hi)
        for a in range(0, hi - lo, rows_per_chunk):
            part = torch.from_numpy(np.ascontiguousarray(local[a : a + rows_per_chunk], np.float32))
            dist.send(part.to(dev), dst=0)
        return None
    out = np.empty((n, d), dtype=np.float32)
    lo0, hi0 = shard_of(0)
    out[lo0:hi0] = local
    for src in range(1, world):
        lo, hi = shard_of(src)
        for a in range(lo, hi, rows_per_chunk):
            buf = torch.empty(min(rows_per_chunk, hi - a), d, dtype=torch.float32, device=dev)
            dist.recv(buf, src=src)
            out[a : a + len(buf)] = buf.cpu().numpy()
    return out
