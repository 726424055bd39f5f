"""ResNet-18 with torchvision parameter names (512-d features).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385 (Table 1, 18-layer). Few-shot use: Chen et al., "A Closer Look
at Few-shot Classification", ICLR 2019 (wyharveychen/CloserLookFewShot ``backbone.py``); FEAT
(Sha-Lab/FEAT ``model/networks/res18.py``); easyfsl ``modules/predesigned_modules.py``.

Layout (torchvision names, the ones most few-shot ResNet-18 checkpoints carry)::

    stem "imagenet" (paper): conv1 7×7/2 pad 3 → bn1 → ReLU → maxpool 3×3/2 pad 1
    stem "small" (FEAT, easyfsl default): conv1 3×3/1 pad 1 → bn1 → ReLU   (no maxpool)
    stem "easyfsl-big" (easyfsl big_kernel=True): conv1 7×7/2 pad 1 → bn1 → ReLU   (no maxpool)
    layer1..layer4: 2 BasicBlocks each, widths 64, 128, 256, 512, first block of layers 2–4 stride 2
    BasicBlock: y = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + downsample(x))
                conv 3×3 pad 1 no bias, conv1 carries the stride; downsample = conv1x1/stride + BN
    → global average pool → (B, 512)

Final map: paper stem 224 px → 7×7, 84 px → 3×3, 32 px → 1×1; small stem 84 px → 11×11,
32 px → 4×4. Keys: ``conv1.weight``, ``bn1.*``, ``layerK.N.conv{1,2}.weight``,
``layerK.N.bn{1,2}.*``, ``layerK.0.downsample.{0,1}.*`` (K = 2..4): 120 keys; a torchvision /
timm ``fc.*`` classifier is a head the loader drops.

Which checkpoints fit (the stem sets the shape of ``conv1.weight``, so a wrong stem is refused
with a shape mismatch rather than loaded silently — with one exception below):

- torchvision / timm ImageNet ResNet-18: ``stem="imagenet"`` (also ``--arch timm:resnet18``).
- FEAT ``Res18`` and easyfsl ``resnet18()`` (``big_kernel=False``): ``stem="small"``.
- CloserLook ``ResNet18`` is the paper network under other names (``trunk.0`` conv1, ``trunk.1``
  bn1, ``trunk.{4..11}`` the eight blocks with ``C1/BN1/C2/BN2/shortcut/BNshortcut``); after
  renaming it fits ``stem="imagenet"`` (its AvgPool2d(7) is the global pool at 224 px).
- easyfsl ``resnet18(big_kernel=True)``: ``stem="easyfsl-big"`` (7×7/2 conv with padding 1, no
  maxpool). Its keys and shapes equal the paper stem's, so the loader refuses an easyfsl file
  with a 7×7 ``conv1`` into ``stem="imagenet"`` and names this stem.
- Not covered: RFS ``resnet18`` (ResNet-12-style blocks, [1, 1, 2, 2]), whose keys differ.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import BACKBONES
from ._base import FeatureBackbone

__all__ = ["BasicBlock", "ResNet18", "resnet18"]

STEMS = ("imagenet", "small", "easyfsl-big")


class BasicBlock(nn.Module):
    """``(B, cin, H, W)`` → ``(B, cout, ⌈H/stride⌉, ⌈W/stride⌉)`` (torchvision names)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(FeatureBackbone):
    """ResNet-18 feature extractor: ``(B, 3, S, S)`` → ``(B, 512)`` (avg) or ``(B, 512·h²)`` (none).

    Parameters
    ----------
    stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool, the paper) or ``"small"`` (3×3/1 conv,
        no max-pool; FEAT / easyfsl at 84 px).
    in_chans: input channels.
    pool: ``"avg"`` (global average) or ``"none"`` (flatten).
    image_size: input side ``S``; required for ``pool="none"``.
    """

    def __init__(
        self, stem: str = "imagenet", in_chans: int = 3, pool: str = "avg", image_size: int | None = None
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(
                f"architecture 'resnet18': stem must be one of {', '.join(STEMS)}, got {stem!r}"
            )
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "easyfsl-big":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths = (64, 64, 128, 256, 512)
        for k in range(1, 5):
            stride = 1 if k == 1 else 2
            blocks = [BasicBlock(widths[k - 1], widths[k], stride), BasicBlock(widths[k], widths[k])]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
        self._set_output("resnet18", 512, pool, image_size)
        self._init_weights("relu")

    def map_side(self, side: int) -> int:
        """Each stride-2 stage maps s → ⌈s/2⌉: 5 of them with the paper stem, 3 with the small one;
        the easyfsl big stem's 7×7/2 pad-1 conv maps s → ⌊(s − 5)/2⌋ + 1, then 3 stages."""
        if self.stem == "easyfsl-big":
            side = (side - 5) // 2 + 1
        for _ in range(5 if self.stem == "imagenet" else 3):
            side = (side + 1) // 2
        return side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, 512, h, h)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@BACKBONES.register("resnet18")
def resnet18(
    image_size: int | None = None, pool: str = "avg", stem: str = "imagenet", in_chans: int = 3
) -> ResNet18:
    """ResNet-18 with torchvision keys; ``stem="small"`` for FEAT / easyfsl checkpoints."""
    return ResNet18(stem=stem, in_chans=in_chans, pool=pool, image_size=image_size)
