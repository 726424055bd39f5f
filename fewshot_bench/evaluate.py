"""Run a few-shot method over a fixed episode set on cached features.

``evaluate_episodes`` gathers each batch of episodes straight from the (possibly
memory-mapped) feature array, so the full feature matrix is never copied, and calls the
method's batched ``scores`` once per batch of episodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .episodes import EpisodeSet
from .errors import MethodError

__all__ = ["episode_batch_size", "evaluate_episodes", "evaluate_rows"]

_BATCH_BYTES = 1 << 28  # ~256 MiB of gathered features per batch of episodes


def episode_batch_size(rows_per_episode: int, dim: int, itemsize: int = 4, budget: int = _BATCH_BYTES) -> int:
    """Episodes per batch so that gathered features stay under ``budget`` bytes."""
    return max(1, budget // max(1, rows_per_episode * dim * itemsize))


def evaluate_rows(features, support_rows: np.ndarray, query_rows: np.ndarray, ways: int, method: Any, *,
                  device: str | torch.device | None = None, batch_episodes: int | None = None,
                  progress: bool = False, desc: str = "episodes") -> np.ndarray:
    """Per-episode accuracy of ``method`` on episodes given as feature rows.

    Parameters
    ----------
    features : (M, D) array or tensor (a memory-mapped ``np.ndarray`` is fine).
    support_rows : (E, N*K) int rows of ``features``; class n owns columns ``n*K:(n+1)*K``.
    query_rows : (E, N*Q) int rows; class n owns columns ``n*Q:(n+1)*Q``.
    ways : N.
    method : object with ``scores(support (B,N*K,D), support_labels (B,N*K), query (B,N*Q,D)) -> (B,N*Q,N)``.

    Returns
    -------
    (E,) float64 fractions of correctly classified queries.
    """
    E, NK = support_rows.shape
    NQ = query_rows.shape[1]
    if NK % ways or NQ % ways:
        raise MethodError(f"episodes have {NK} support and {NQ} query rows, not multiples of {ways} ways")
    K, Q = NK // ways, NQ // ways
    dim = features.shape[1]
    device = torch.device(device) if device is not None else torch.device("cpu")
    if batch_episodes is None:
        batch_episodes = episode_batch_size(NK + NQ, dim)
    s_labels = torch.arange(ways, device=device).repeat_interleave(K)
    q_labels = torch.arange(ways, device=device).repeat_interleave(Q)
    is_tensor = isinstance(features, torch.Tensor)
    out = np.empty(E, dtype=np.float64)
    bar = tqdm(total=E, desc=desc, unit="ep", disable=not progress, leave=False)
    for start in range(0, E, batch_episodes):
        stop = min(start + batch_episodes, E)
        s_idx, q_idx = support_rows[start:stop], query_rows[start:stop]
        if is_tensor:
            support = features[torch.as_tensor(s_idx, device=features.device)]
            query = features[torch.as_tensor(q_idx, device=features.device)]
        else:
            support = torch.from_numpy(np.ascontiguousarray(features[s_idx]))
            query = torch.from_numpy(np.ascontiguousarray(features[q_idx]))
        support, query = support.to(device, torch.float32), query.to(device, torch.float32)
        B = stop - start
        scores = method.scores(support, s_labels.expand(B, NK), query)
        if tuple(scores.shape) != (B, NQ, ways):
            raise MethodError(f"method {getattr(method, 'name', method)!r} returned scores of shape "
                              f"{tuple(scores.shape)}, expected {(B, NQ, ways)} (episodes, queries, ways)")
        correct = (scores.argmax(dim=-1) == q_labels).sum(dim=1)
        out[start:stop] = correct.cpu().numpy().astype(np.float64) / NQ
        bar.update(B)
    bar.close()
    return out


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
