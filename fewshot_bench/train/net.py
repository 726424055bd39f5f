"""The network trained by :func:`fewshot_bench.train.finetune`: backbone plus training-only heads.

::

    x (B, 3, S, S) -> backbone -> f (B, D) -+-> head: Linear(D, C)                    -> logits (B, C)
                                            +-> projection: Linear(D, min(D, 2048))
                                                -> ReLU -> Linear(., embed_dim)        -> p (B, embed_dim)

- the linear head exists only when the loss has a cross-entropy term (``uses_ce``);
- the projection exists only when the loss has a contrastive term (``uses_contrastive``) **and**
  ``contrast_on="projection"`` (the SupCon recipe, Khosla et al. 2020: a 2-layer MLP whose output
  the contrastive loss sees, discarded after training).

Where the contrastive term acts (``contrast_on``):

``"encoder"`` (default)
    ``z = f``, the backbone's own embedding, which is what few-shot evaluation uses. This is the
    CLCE paper's choice (Long et al., 2024, https://arxiv.org/abs/2402.14551, applies LACLN to
    the encoder's embeddings).
``"projection"``
    ``z = p``, the SupCon choice; the backbone only receives the contrastive gradient through
    the projection.

Either way ``z`` is L2-normalised inside the loss. Only the backbone is written to the
checkpoint; the head and projection live in the resume state.

Initialisation order (all after ``torch.manual_seed(seed)``): the backbone (unless one is
passed in), then the linear head, then the projection's two layers; PyTorch's default
``nn.Linear`` initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError

__all__ = ["CONTRAST_ON", "TrainNet"]

#: values of ``contrast_on`` / ``--contrast-on``
CONTRAST_ON = ("encoder", "projection")


class TrainNet(nn.Module):
    """Backbone plus optional heads; ``forward(x) -> (logits | None, z | None)``.

    Parameters
    ----------
    backbone: ``(B, 3, S, S) -> (B, D)``.
    dim: ``D``.
    n_classes: ``C`` of the linear head.
    embed_dim: output size of the projection.
    head: build the linear head (the loss uses CE).
    contrastive: the loss uses embeddings ``z``.
    contrast_on: ``"encoder"`` (``z`` = backbone features) or ``"projection"``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        n_classes: int,
        embed_dim: int,
        *,
        head: bool,
        contrastive: bool,
        contrast_on: str = "encoder",
    ) -> None:
        super().__init__()
        if contrast_on not in CONTRAST_ON:
            raise ValueError(f"contrast_on={contrast_on!r}; choose from {', '.join(CONTRAST_ON)}")
        self.backbone = backbone
        self.contrastive = contrastive
        self.contrast_on = contrast_on
        self.head = nn.Linear(dim, n_classes) if head else None
        hidden = min(dim, 2048)
        self.projection = (
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))
            if contrastive and contrast_on == "projection"
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        f = self.backbone(x)
        if f.ndim != 2:
            raise DataError(f"the backbone returned shape {tuple(f.shape)}; fine-tuning needs (B, D) features")
        logits = self.head(f) if self.head is not None else None
        if not self.contrastive:
            z = None
        elif self.projection is not None:
            z = self.projection(f)
        else:
            z = f
        return logits, z
