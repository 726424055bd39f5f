"""ResNet-12 of the few-shot literature (640-d features).

Lee et al., "Meta-Learning with Differentiable Convex Optimization" (MetaOptNet), CVPR 2019,
https://arxiv.org/abs/1904.03758; Tian et al., "Rethinking Few-Shot Image Classification"
(RFS), ECCV 2020, https://arxiv.org/abs/2003.11539.

Four residual blocks of widths 64, 160, 320, 640. Each block: 3 × [conv3x3, BatchNorm,
LeakyReLU(0.1)] (the last activation after the residual sum), a conv1x1 + BatchNorm
shortcut, then maxpool 2. Features are the global average pool of the last block (RFS), so
the output is 640-d at any input size (84 px → 5×5 map, 32 px → 2×2).

Parameter names (``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ...) are those
of the RFS/MetaOptNet code, so their checkpoints load directly (after stripping the usual
prefixes; MetaOptNet's ``embedding`` nesting is recognised). DropBlock and dropout are
omitted: they hold no parameters and are identities at eval time; the training loop
regularises by other means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import BACKBONES

__all__ = ["BasicBlock", "ResNet12", "resnet12"]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``(B, cin, H, W)`` → ``(B, cout, H // 2, W // 2)``."""

    def __init__(self, cin: int, cout: int, slope: float = 0.1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.conv3, self.bn3 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.relu = nn.LeakyReLU(slope)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.maxpool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.maxpool(self.relu(out + self.downsample(x)))


class ResNet12(nn.Module):
    """ResNet-12 feature extractor: ``(B, 3, H, W)`` → ``(B, channels[-1])`` (640).

    Parameters
    ----------
    channels: widths of the four blocks (64, 160, 320, 640 in MetaOptNet/RFS;
        (64, 128, 256, 512) is the narrower variant of TADAM).
    in_chans: input channels.
    """

    def __init__(self, channels: Sequence[int] = (64, 160, 320, 640), in_chans: int = 3) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"resnet12 needs 4 block widths, got {tuple(channels)}")
        widths = [in_chans, *channels]
        # one-block Sequentials give RFS's ``layerK.0.*`` parameter names
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[1]))
        self.layer2 = nn.Sequential(BasicBlock(widths[1], widths[2]))
        self.layer3 = nn.Sequential(BasicBlock(widths[2], widths[3]))
        self.layer4 = nn.Sequential(BasicBlock(widths[3], widths[4]))
        self.out_dim = int(channels[-1])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → feature map ``(B, 640, H / 16, W / 16)``."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 640)`` (global average pool)."""
        return self.forward_features(x).mean(dim=(2, 3))


@BACKBONES.register("resnet12")
def resnet12(
    channels: Sequence[int] = (64, 160, 320, 640), in_chans: int = 3, image_size: int | None = None
) -> ResNet12:
    """``image_size`` is accepted for a uniform call path and ignored (the output is pooled)."""
    return ResNet12(channels=channels, in_chans=in_chans)
