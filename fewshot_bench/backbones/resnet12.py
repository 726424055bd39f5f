"""ResNet-12 of the few-shot literature (640-d), and its squeeze-and-excitation variant.

Lee et al., "Meta-Learning with Differentiable Convex Optimization" (MetaOptNet), CVPR 2019,
https://arxiv.org/abs/1904.03758; Tian et al., "Rethinking Few-Shot Image Classification"
(RFS), ECCV 2020, https://arxiv.org/abs/2003.11539; Ye et al., "Few-Shot Learning via
Embedding Adaptation with Set-to-Set Functions" (FEAT), CVPR 2020, https://arxiv.org/abs/1812.03664.
SE: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507.

Layout (public code: WangYueFt/rfs ``models/resnet.py``, kjunelee/MetaOptNet
``models/ResNet12_embedding.py``, Sha-Lab/FEAT ``model/networks/res12.py`` — one layout):
four blocks ``layer1..layer4`` (one block each, ``layerK.0``) of widths 64, 160, 320, 640; block
``(B, cin, H, W)`` → ``(B, cout, ⌊H/2⌋, ⌊W/2⌋)``::

    o = LReLU(bn1(conv1(x)));  o = LReLU(bn2(conv2(o)));  o = bn3(conv3(o))   # conv3x3, pad 1, no bias
    o = se(o)                                          # seresnet12 only (RFS use_se=True)
    o = maxpool2(LReLU(o + downsample(x)))             # downsample = conv1x1 (stride 1) + BN
    LReLU slope 0.1;  se(o) = o · σ(W2 ReLU(W1 avg(o) + b1) + b2),  W1: (C/4, C), W2: (C, C/4)

Final map at 84 px: 640 × 5 × 5 (32 px: 640 × 2 × 2). ``pool="avg"`` (default) gives 640-d
features as RFS (``avg_pool=True``: AdaptiveAvgPool2d) and FEAT (AvgPool2d(5) on the 5×5 map,
the same at 84 px); ``pool="none"`` flattens as MetaOptNet's ``avg_pool=False`` does
(16,000-d at 84 px, 2,560-d at 32 px), and needs ``image_size``.

Parameter names are those of the three public codes (``layer1.0.conv1.weight``,
``layer1.0.bn1.running_mean``, ``layer1.0.downsample.0.weight``, ``layer1.0.downsample.1.*``;
SE adds ``layerK.0.se.fc.0.{weight,bias}``, ``layerK.0.se.fc.2.{weight,bias}``, 16 keys): 96
keys, 112 with SE. Their checkpoints differ only in nesting/prefixes (RFS ``{"model": ...}``
with a ``classifier.*`` head, MetaOptNet ``{"embedding": {"module.…"}}``, FEAT
``{"params": {"encoder.…"}}``), which the loader strips.

Differences from the reference code: DropBlock (layers 3–4) and dropout (layers 1–2) are
omitted — they hold no parameters and are identities at eval time, so a DropBlock-trained
checkpoint needs no separate architecture; our training loop regularises by other means.
The references' Python counter ``num_batches_tracked`` on the block is not a buffer either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from . import BACKBONES
from ._base import FeatureBackbone

__all__ = ["BasicBlock", "ResNet12", "SELayer", "resnet12", "seresnet12"]

SE_REDUCTION = 4  # RFS: SELayer(planes, 4)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class SELayer(nn.Module):
    """Squeeze-and-excitation ``(B, C, H, W)`` → ``(B, C, H, W)``: ``x · σ(W2 ReLU(W1 avg(x) + b1) + b2)``.

    ``fc.0``: Linear(C, C // reduction), ``fc.2``: Linear(C // reduction, C) (RFS names).
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class BasicBlock(nn.Module):
    """``(B, cin, H, W)`` → ``(B, cout, H // 2, W // 2)``; SE after ``bn3`` when ``se``."""

    def __init__(self, cin: int, cout: int, slope: float = 0.1, se: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.conv3, self.bn3 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.relu = nn.LeakyReLU(slope)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.maxpool = nn.MaxPool2d(2)
        self.se = SELayer(cout) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.maxpool(self.relu(out + self.downsample(x)))


class ResNet12(FeatureBackbone):
    """ResNet-12 feature extractor: ``(B, 3, S, S)`` → ``(B, 640)`` (avg) or ``(B, 640·⌊S/16⌋²)`` (none).

    Parameters
    ----------
    channels: widths of the four blocks (64, 160, 320, 640 in MetaOptNet/RFS/FEAT;
        (64, 128, 256, 512) is the narrower variant of TADAM).
    in_chans: input channels.
    se: squeeze-and-excitation in every block (RFS ``seresnet12``).
    pool: ``"avg"`` (global average, RFS/FEAT) or ``"none"`` (flatten, MetaOptNet).
    image_size: input side ``S``; required for ``pool="none"``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 160, 320, 640),
        in_chans: int = 3,
        se: bool = False,
        pool: str = "avg",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        arch = "seresnet12" if se else "resnet12"
        channels = tuple(channels)
        if len(channels) != 4:
            raise ConfigError(f"architecture {arch!r} needs 4 block widths (channels), got {channels}")
        widths = [in_chans, *channels]
        # one-block Sequentials give the reference ``layerK.0.*`` parameter names
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[1], se=se))
        self.layer2 = nn.Sequential(BasicBlock(widths[1], widths[2], se=se))
        self.layer3 = nn.Sequential(BasicBlock(widths[2], widths[3], se=se))
        self.layer4 = nn.Sequential(BasicBlock(widths[3], widths[4], se=se))
        self._set_output(arch, channels[-1], pool, image_size)
        self._init_weights("leaky_relu")

    def map_side(self, side: int) -> int:
        """Four 2×2 max-pools (floor): 84 → 5, 32 → 2."""
        for _ in range(4):
            side //= 2
        return side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → feature map ``(B, 640, ⌊S/16⌋, ⌊S/16⌋)``."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@BACKBONES.register("resnet12")
def resnet12(
    image_size: int | None = None,
    pool: str = "avg",
    channels: Sequence[int] = (64, 160, 320, 640),
    in_chans: int = 3,
    se: bool = False,
) -> ResNet12:
    """ResNet-12 (RFS/MetaOptNet/FEAT); ``se=True`` is :func:`seresnet12`."""
    return ResNet12(channels=channels, in_chans=in_chans, se=se, pool=pool, image_size=image_size)


@BACKBONES.register("seresnet12")
def seresnet12(
    image_size: int | None = None,
    pool: str = "avg",
    channels: Sequence[int] = (64, 160, 320, 640),
    in_chans: int = 3,
) -> ResNet12:
    """RFS's ResNet-12 with squeeze-and-excitation (reduction 4) after ``bn3`` of every block."""
    return ResNet12(channels=channels, in_chans=in_chans, se=True, pool=pool, image_size=image_size)
