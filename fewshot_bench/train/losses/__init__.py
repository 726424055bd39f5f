"""Training losses: a registry of :class:`TrainingLoss` classes, one module per loss family.

>>> from fewshot_bench.train.losses import create_loss
>>> loss = create_loss("clce", lam=0.9, temperature=0.5)
>>> terms = loss(logits, z, labels, z_labels=z_labels)   # LossTerms(total, ce, contrastive)
>>> terms.total.backward()

Built-ins: ``ce``, ``supcon``, ``ce+supcon``, ``lacln``, ``clce``, ``clce-nohnm``, ``h-scl``,
``ce+h-scl`` (equations, sources and defaults: docs/losses.md and each class docstring). Other
packages add losses through the ``fewshot_bench.losses`` entry-point group;
``"path/to/file.py:ClassName"`` loads a class from a file.

The functions ``cross_entropy``, ``supcon_loss``, ``lacln_loss``, ``clce_loss`` and ``hscl_loss``
are the functional forms the classes call.

References
----------
- Khosla et al., *Supervised Contrastive Learning*, NeurIPS 2020 (SupCon ``L_out``).
  https://arxiv.org/abs/2004.11362
- Long et al., *CLCE: An Approach to Refining Cross-Entropy and Contrastive Learning for Optimized
  Learning Fusion*, 2024, Eq. 3 (LACLN) and Eq. 4 (CLCE). https://arxiv.org/abs/2402.14551
- Jiang et al., *Supervised Contrastive Learning with Hard Negative Samples*, 2022 (H-SCL).
  https://arxiv.org/abs/2209.00078
- Robinson et al., *Contrastive Learning with Hard Negative Samples*, ICLR 2021 (the importance
  weights LACLN and H-SCL follow). https://arxiv.org/abs/2010.04592
"""

from __future__ import annotations

from . import ce, clce, hscl, lacln, supcon  # noqa: F401  (register the built-ins)
from .base import (
    ENTRY_POINT_GROUP,
    LOSS_REGISTRY,
    ContrastiveLoss,
    LossInfo,
    LossTerms,
    TrainingLoss,
    available_losses,
    create_loss,
    describe_losses,
    get_loss_class,
    register_loss,
)
from .ce import CrossEntropy, cross_entropy
from .clce import CLCE, CLCENoHNM, clce_loss
from .hscl import CEHSCL, HSCL, hscl_loss
from .lacln import LACLN, lacln_loss
from .mixed import CEPlusContrastive
from .supcon import CESupCon, SupCon, supcon_loss

__all__ = [
    "CEHSCL",
    "CEPlusContrastive",
    "CESupCon",
    "CLCE",
    "CLCENoHNM",
    "ContrastiveLoss",
    "CrossEntropy",
    "ENTRY_POINT_GROUP",
    "HSCL",
    "LACLN",
    "LOSSES",
    "LOSS_REGISTRY",
    "LossInfo",
    "LossTerms",
    "SupCon",
    "TrainingLoss",
    "available_losses",
    "clce_loss",
    "create_loss",
    "cross_entropy",
    "describe_losses",
    "get_loss_class",
    "hscl_loss",
    "lacln_loss",
    "register_loss",
    "supcon_loss",
]

#: Legacy: the names ``finetune`` accepted before the registry; use :func:`available_losses`.
LOSSES = ("ce", "supcon", "clce", "clce-nohnm")
