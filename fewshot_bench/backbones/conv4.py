"""Conv-4: the four-block ConvNet of Matching/Prototypical Networks.

Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016;
Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017,
https://arxiv.org/abs/1703.05175.

4 × [conv3x3 (64, padding 1), BatchNorm, ReLU, maxpool 2], then flatten. The module is an
``nn.Sequential`` so its keys (``0.0.weight``, ``0.1.running_mean``, ...) are those of the
original ProtoNet ``encoder`` (its checkpoints load after the ``encoder.`` prefix is stripped).

Because the output is flattened, ``out_dim = hidden * s'²`` depends on the input side:
``s' = s // 2 // 2 // 2 // 2``, e.g. 84 px → 5 → 1600-d, 32 px → 2 → 256-d. We require the
input side up front (``image_size``, default 84) so ``out_dim`` is known before the first
batch (a training head needs it); ``forward`` refuses other sizes with a clear message.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError
from . import BACKBONES

__all__ = ["Conv4", "conv4"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class Conv4(nn.Sequential):
    """Conv-4 feature extractor: ``(B, 3, S, S)`` → ``(B, hidden · (S // 16)²)``.

    Parameters
    ----------
    image_size: input side ``S`` the network is built for (sets :attr:`out_dim`).
    hidden: channels of every block (64 in the literature).
    in_chans: input channels.
    """

    def __init__(self, image_size: int = 84, hidden: int = 64, in_chans: int = 3) -> None:
        super().__init__(
            _block(in_chans, hidden), _block(hidden, hidden), _block(hidden, hidden), _block(hidden, hidden)
        )
        side = int(image_size)
        for _ in range(4):
            side //= 2
        if side < 1:
            raise DataError(f"conv4 needs images of at least 16 px, got image_size={image_size}")
        self.image_size = int(image_size)
        self.out_dim = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, out_dim)``."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise DataError(
                f"conv4 was built for {self.image_size} px inputs (out_dim {self.out_dim}) but got "
                f"{tuple(x.shape[-2:])}; build it with image_size={x.shape[-1]}"
            )
        return super().forward(x).flatten(1)


@BACKBONES.register("conv4")
def conv4(image_size: int = 84, hidden: int = 64, in_chans: int = 3) -> Conv4:
    return Conv4(image_size=image_size, hidden=hidden, in_chans=in_chans)
