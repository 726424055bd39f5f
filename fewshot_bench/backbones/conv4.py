"""Conv-4: the four-block ConvNet of Matching/Prototypical Networks.

Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016;
Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017,
https://arxiv.org/abs/1703.05175 (public code: jakesnell/prototypical-networks
``protonets/models/few_shot.py``, ``load_protonet_conv``).

4 × [conv3x3 (``hidden``, padding 1, with bias), BatchNorm, ReLU, maxpool 2]:
``(B, C_in, S, S)`` → ``(B, hidden, s', s')`` with ``s' = ⌊⌊⌊⌊S/2⌋/2⌋/2⌋/2⌋`` (84 px → 5,
32 px → 2, 28 px → 1). Features are the flattened map (the paper's output, ``pool="none"``,
the default here): ``out_dim = hidden · s'²``, 1600 at 84 px, 256 at 32 px. ``pool="avg"``
gives the ``hidden``-d global average instead.

Block ``k`` is child ``"k"`` with children ``"0"`` (conv) and ``"1"`` (BN), so the keys
(``0.0.weight``, ``0.0.bias``, ``0.1.running_mean``, ..., 28 in all) are those of the ProtoNet
``encoder`` (its checkpoints load after the ``encoder.`` prefix is stripped).

Differences from the reference code: ProtoNet has ``hid_dim`` (blocks 1–3) and ``z_dim``
(block 4), both 64 in the paper; we take one ``hidden`` width for all four. ProtoNet's
Omniglot models take ``in_chans=1`` 28 px images. Because flattening ties ``out_dim`` to the
input side, the side is fixed at construction (``image_size``, default 84) and ``forward``
refuses other sizes with a clear message.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, is_int
from . import BACKBONES
from ._base import FeatureBackbone

__all__ = ["Conv4", "conv4"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class Conv4(FeatureBackbone):
    """Conv-4 feature extractor: ``(B, C_in, S, S)`` → ``(B, hidden · (S // 16)²)`` (or ``(B, hidden)``).

    Parameters
    ----------
    image_size: input side ``S`` the network is built for (sets :attr:`out_dim` when flattening).
    hidden: channels of every block (64 in the literature).
    in_chans: input channels (1 for ProtoNet's Omniglot models).
    pool: ``"none"`` (flatten, the paper) or ``"avg"`` (global average pool).
    """

    def __init__(
        self, image_size: int | None = 84, hidden: int = 64, in_chans: int = 3, pool: str = "none"
    ) -> None:
        super().__init__()
        for name, value in (("hidden", hidden), ("in_chans", in_chans)):
            if not is_int(value, 1):
                raise ConfigError(f"architecture 'conv4': {name} must be a positive integer, got {value!r}")
        widths = [in_chans, hidden, hidden, hidden, hidden]
        for k in range(4):
            self.add_module(str(k), _block(widths[k], widths[k + 1]))
        self._set_output("conv4", hidden, pool, image_size)

    def map_side(self, side: int) -> int:
        """Four 2×2 max-pools (floor): 84 → 5, 32 → 2."""
        for _ in range(4):
            side //= 2
        return side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, S)`` → ``(B, hidden, S // 16, S // 16)``."""
        for block in self.children():
            x = block(x)
        return x


@BACKBONES.register("conv4")
def conv4(image_size: int | None = 84, hidden: int = 64, in_chans: int = 3, pool: str = "none") -> Conv4:
    """Conv-4 (ProtoNet); flattened output by default, as in the paper."""
    return Conv4(image_size=image_size, hidden=hidden, in_chans=in_chans, pool=pool)
