"""Fine-tuning backbones: the loss registry (CE, SupCon, LACLN, CLCE, H-SCL and their mixes), the training loop.

DDP helpers live in :mod:`fewshot_bench.distributed` (shared with sharded feature extraction).

>>> from fewshot_bench.train import finetune
>>> finetune(split, "conv4", loss="clce", epochs=10, out=Path("checkpoints/clce.pt"))
"""

from __future__ import annotations

from .finetune import KEEP, OPTIMIZERS, finetune, finetune_seeds, log_path, seed_path, state_path
from .log import read_log
from .losses import (
    LOSSES,
    LossTerms,
    TrainingLoss,
    available_losses,
    clce_loss,
    create_loss,
    cross_entropy,
    describe_losses,
    hscl_loss,
    lacln_loss,
    register_loss,
    supcon_loss,
)
from .net import CONTRAST_ON
from .schedule import lr_factor

__all__ = [
    "CONTRAST_ON",
    "KEEP",
    "LOSSES",
    "LossTerms",
    "OPTIMIZERS",
    "TrainingLoss",
    "available_losses",
    "clce_loss",
    "create_loss",
    "cross_entropy",
    "describe_losses",
    "finetune",
    "finetune_seeds",
    "hscl_loss",
    "lacln_loss",
    "log_path",
    "lr_factor",
    "read_log",
    "register_loss",
    "seed_path",
    "state_path",
    "supcon_loss",
]
