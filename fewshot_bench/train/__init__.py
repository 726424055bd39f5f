"""Fine-tuning backbones: losses (CE, SupCon, LACLN, CLCE), the training loop.

DDP helpers live in :mod:`fewshot_bench.distributed` (shared with sharded feature extraction).

>>> from fewshot_bench.train import finetune
>>> finetune(split, "conv4", loss="clce", epochs=10, out=Path("checkpoints/clce.pt"))
"""

from __future__ import annotations

from .finetune import OPTIMIZERS, finetune, state_path
from .losses import LOSSES, clce_loss, cross_entropy, lacln_loss, supcon_loss

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "clce_loss",
    "cross_entropy",
    "finetune",
    "lacln_loss",
    "state_path",
    "supcon_loss",
]
