"""Run a few-shot method over a fixed episode set on cached features.

``evaluate_episodes`` gathers each batch of episodes straight from the (possibly
memory-mapped) feature array through a torch view of it (``index_select`` into reused
buffers, about 3x faster than numpy fancy indexing), so the full feature matrix is never
copied on the host, and calls the method's batched ``scores`` once per batch of episodes.
On CUDA the matrix is moved to the GPU once when it fits.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .episodes import EpisodeSet
from .errors import MethodError

__all__ = ["default_batch_episodes", "episode_batch_size", "evaluate_episodes", "evaluate_rows"]

_BATCH_BYTES = 1 << 28  # ~256 MiB of gathered features per batch of episodes
# Heads whose episodes do not interact (``method.batch_invariant``) get smaller batches: the same
# results, and fresh buffers of ~32 MiB cost far fewer page faults than 256 MiB ones (1.5x on ProtoNet).
# On the CPU ~4 MiB (about 20 episodes of 640-D features) keeps an iterative head's batch in cache:
# TIM, PT-MAP, LaplacianShot and transductive fine-tuning run 1.2-1.5x faster than with 32 MiB, the
# closed-form heads within noise (benchmarks/bench_methods.py, 1 thread). CUDA keeps 32 MiB (unmeasured).
_INVARIANT_BATCH_BYTES = {"cpu": 1 << 22, "cuda": 1 << 25}


def episode_batch_size(rows_per_episode: int, dim: int, itemsize: int = 4, budget: int = _BATCH_BYTES) -> int:
    """Episodes per batch so that gathered features stay under ``budget`` bytes."""
    return max(1, budget // max(1, rows_per_episode * dim * itemsize))


def default_batch_episodes(method: Any, rows_per_episode: int, dim: int, device: str | torch.device = "cpu") -> int:
    """Episodes per ``scores`` call :func:`evaluate_rows` uses for ``method`` (float32 features).

    ~256 MiB of features; for a ``batch_invariant`` head ~4 MiB on the CPU (or its ``cpu_batch_bytes``)
    and ~32 MiB on CUDA.
    """
    if not getattr(method, "batch_invariant", False):
        budget = _BATCH_BYTES
    elif torch.device(device).type == "cpu":
        budget = getattr(method, "cpu_batch_bytes", None) or _INVARIANT_BATCH_BYTES["cpu"]
    else:
        budget = _INVARIANT_BATCH_BYTES["cuda"]
    return episode_batch_size(rows_per_episode, dim, budget=budget)


def _feature_source(features, device: torch.device) -> torch.Tensor | None:
    """A torch view of ``features`` to gather rows from, without copying them on the host.

    A numpy array (typically the read-only memory-mapped cache) is wrapped by
    ``torch.from_numpy``: no copy, pages are read as rows are gathered. On CUDA the whole
    matrix is moved to the device once when it takes at most half of the free memory.
    Returns ``None`` for arrays torch cannot view (non-native byte order, negative strides,
    non-float dtypes): those take the numpy gathering path.
    """
    if isinstance(features, torch.Tensor):
        src = features
    else:
        arr = features if isinstance(features, np.ndarray) else np.asarray(features)
        if arr.dtype not in (np.float16, np.float32, np.float64) or not arr.dtype.isnative:
            return None
        try:
            with warnings.catch_warnings():  # read-only memmap: we only ever read through the view
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                src = torch.from_numpy(arr)
        except (ValueError, TypeError):  # e.g. negative strides
            return None
    if device.type == "cuda" and src.device != device:
        free, _ = torch.cuda.mem_get_info(device)
        if src.numel() * src.element_size() <= free // 2:
            src = src.to(device)
    return src


def evaluate_rows(features, support_rows: np.ndarray, query_rows: np.ndarray, ways: int, method: Any, *,
                  device: str | torch.device | None = None, batch_episodes: int | None = None,
                  progress: bool = False, desc: str = "episodes") -> np.ndarray:
    """Per-episode accuracy of ``method`` on episodes given as feature rows.

    Parameters
    ----------
    features : (M, D) array or tensor (a memory-mapped ``np.ndarray`` is fine: it is viewed,
        never copied whole into RAM; on CUDA it is moved to the device once if it fits).
    support_rows : (E, N*K) int rows of ``features``; class n owns columns ``n*K:(n+1)*K``.
    query_rows : (E, N*Q) int rows; class n owns columns ``n*Q:(n+1)*Q``.
    ways : N.
    method : object with ``scores(support (B,N*K,D), support_labels (B,N*K), query (B,N*Q,D)) -> (B,N*Q,N)``.

    Each batch of episodes is gathered with ``torch.index_select`` into buffers reused
    across batches (a method must not keep references to its inputs), then cast to float32
    on ``device``; the values are exactly ``features[rows]``. Default batch
    (:func:`default_batch_episodes`): ~256 MiB of features, ~4 MiB on the CPU (~32 MiB on CUDA) for
    heads with ``batch_invariant = True`` (their results do not depend on the batching; the others'
    may, e.g. the ``logistic`` head's stopping test).

    Returns
    -------
    (E,) float64 fractions of correctly classified queries.
    """
    support_rows, query_rows = np.asarray(support_rows), np.asarray(query_rows)
    E, NK = support_rows.shape
    NQ = query_rows.shape[1]
    if NK % ways or NQ % ways:
        raise MethodError(f"episodes have {NK} support and {NQ} query rows, not multiples of {ways} ways")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if batch_episodes is None:
        batch_episodes = default_batch_episodes(method, NK + NQ, features.shape[1], device)
    batch_episodes = max(1, min(int(batch_episodes), E))
    s_labels = torch.arange(ways, device=device).repeat_interleave(NK // ways)
    q_labels = torch.arange(ways, device=device).repeat_interleave(NQ // ways)
    out = np.empty(E, dtype=np.float64)
    bar = tqdm(total=E, desc=desc, unit="ep", disable=not progress, leave=False)
    for start, support, query in _episode_batches(features, support_rows, query_rows, batch_episodes, device):
        B = support.shape[0]
        scores = method.scores(support, s_labels.expand(B, NK), query)
        if tuple(scores.shape) != (B, NQ, ways):
            raise MethodError(f"method {getattr(method, 'name', method)!r} returned scores of shape "
                              f"{tuple(scores.shape)}, expected {(B, NQ, ways)} (episodes, queries, ways)")
        correct = (scores.argmax(dim=-1) == q_labels).sum(dim=1)
        out[start:start + B] = correct.cpu().numpy().astype(np.float64) / NQ
        bar.update(B)
    bar.close()
    return out


def _episode_batches(features, support_rows: np.ndarray, query_rows: np.ndarray, batch_episodes: int,
                     device: torch.device):
    """``(start, support (B, N*K, D), query (B, N*Q, D))`` per batch of ``batch_episodes`` episodes,
    float32 on ``device``, exactly ``features[rows]``.

    Rows are gathered with ``torch.index_select`` into two buffers reused across batches (so a
    batch's tensors may be overwritten by the next one), or by numpy indexing where torch
    cannot view ``features`` (:func:`_feature_source`).
    """
    E, NK = support_rows.shape
    NQ = query_rows.shape[1]
    dim = features.shape[1]
    src = _feature_source(features, device)
    if src is not None:
        s_all = torch.as_tensor(support_rows, dtype=torch.int64).to(src.device)
        q_all = torch.as_tensor(query_rows, dtype=torch.int64).to(src.device)
        s_buf = torch.empty(batch_episodes * NK, dim, dtype=src.dtype, device=src.device)
        q_buf = torch.empty(batch_episodes * NQ, dim, dtype=src.dtype, device=src.device)
    for start in range(0, E, batch_episodes):
        stop = min(start + batch_episodes, E)
        B = stop - start
        if src is not None:
            with torch.no_grad():
                support = torch.index_select(src, 0, s_all[start:stop].reshape(-1), out=s_buf[: B * NK])
                query = torch.index_select(src, 0, q_all[start:stop].reshape(-1), out=q_buf[: B * NQ])
            support, query = support.view(B, NK, dim), query.view(B, NQ, dim)
        else:
            support = torch.from_numpy(np.ascontiguousarray(features[support_rows[start:stop]], np.float32))
            query = torch.from_numpy(np.ascontiguousarray(features[query_rows[start:stop]], np.float32))
        yield start, support.to(device, torch.float32), query.to(device, torch.float32)


def evaluate_episodes(features, episodes: EpisodeSet, split, method: Any, **kw) -> np.ndarray:
    """Per-episode accuracies (E,) of ``method`` over ``episodes`` drawn from ``split``.

    ``features`` (M, D) must be row-aligned with ``split`` (``features[i]`` embeds
    ``split.images[i]``). Keyword arguments go to :func:`evaluate_rows`.
    """
    if len(features) != len(split.labels):
        raise MethodError(f"features have {len(features)} rows but {split.dataset}/{split.split} has "
                          f"{len(split.labels)} images; rebuild the feature cache")
    support_rows, query_rows = episodes.indices(split)
    return evaluate_rows(features, support_rows, query_rows, episodes.spec.ways, method, **kw)
