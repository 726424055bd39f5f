"""Validation during fine-tuning: ProtoNet accuracy on fixed episodes of the val split.

The episodes are drawn once (:class:`~fewshot_bench.episodes.EpisodeSet` from the val split's
class structure with a fixed seed, bound to its fingerprint), so every validation of a run, of
a resumed run and of another seed scores the same tasks. Each validation embeds only the
images those episodes use, with the backbone in eval mode (BatchNorm running statistics,
no dropout), under ``torch.no_grad``, through the training run's own input transform (no
augmentation), then scores them with :func:`fewshot_bench.evaluate.evaluate_rows` and the
registered ``protonet`` head (Snell et al., 2017: nearest class mean, squared Euclidean) and
summarises with :func:`fewshot_bench.stats.mean_ci` (Student t, 95 %).

Validation draws no random numbers and leaves the backbone's training mode as it found it,
so turning it on does not change the trained weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import methods
from ..episodes import EpisodeSet, EpisodeSpec
from ..errors import ConfigError, EpisodeError
from ..evaluate import evaluate_rows
from ..stats import mean_ci

__all__ = ["ValEpisodes", "prepare_val", "val_accuracy"]


@dataclass(frozen=True)
class ValEpisodes:
    """Fixed val episodes, reduced to the rows they use.

    rows: (M,) sorted unique rows of the val split the episodes touch.
    support, query: (E, N*K), (E, N*Q) indices into ``rows`` (not into the split).
    """

    split: Any
    episodes: EpisodeSet
    rows: np.ndarray
    support: np.ndarray
    query: np.ndarray

    @property
    def spec(self) -> EpisodeSpec:
        return self.episodes.spec

    def describe(self) -> dict:
        """What the checkpoint metadata records about the val protocol."""
        s = self.spec
        return {
            "dataset": str(self.split.dataset),
            "split": str(self.split.split),
            "data_fingerprint": str(self.split.fingerprint),
            "ways": s.ways,
            "shots": s.shots,
            "queries": s.queries,
            "episodes": s.n_episodes,
            "seed": s.seed,
            "method": "protonet",
            "episodes_sha256": self.episodes.sha256(),
        }


def prepare_val(
    split: Any, *, ways: int = 5, shots: int = 1, queries: int = 15, n_episodes: int = 600, seed: int = 0
) -> ValEpisodes:
    """Draw the fixed val episodes of ``split`` (a val :class:`~fewshot_bench.data.Split`)."""
    try:
        spec = EpisodeSpec(ways, shots, queries, n_episodes, seed)
        eps = EpisodeSet.from_split(spec, split)
    except EpisodeError as exc:  # the episode module names eval's flags; name ours
        msg = str(exc)
        for a in ("ways", "shots", "queries", "episodes"):  # "--shots 1 + ...", "lower --shots/--queries"
            msg = re.sub(rf"--{a}\b", f"--val-{a}", msg)
        raise ConfigError(f"validation on {split.dataset}/{split.split}: {msg}") from None
    support, query = eps.indices(split)
    rows, inverse = np.unique(np.concatenate([support.ravel(), query.ravel()]), return_inverse=True)
    inverse = inverse.reshape(-1)
    return ValEpisodes(
        split,
        eps,
        rows.astype(np.int64),
        inverse[: support.size].reshape(support.shape),
        inverse[support.size :].reshape(query.shape),
    )


def val_accuracy(
    backbone: nn.Module,
    transform: Callable,
    val: ValEpisodes,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Mean ProtoNet accuracy (fraction) over ``val``'s episodes and its 95 % CI half-width."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        with torch.no_grad():
            for start in range(0, len(val.rows), batch_size):
                idx = val.rows[start : start + batch_size]
                x = transform(torch.from_numpy(np.ascontiguousarray(val.split.images[idx]))).to(device)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float16,
                                    enabled=autocast_dtype is not None):
                    f = backbone(x)
                feats.append(f.float().cpu())
    finally:
        backbone.train(was_training)
    features = torch.cat(feats)
    acc = evaluate_rows(features, val.support, val.query, val.spec.ways, methods.create("protonet"))
    ci = mean_ci(acc)
    return float(ci.mean), float(ci.ci)
