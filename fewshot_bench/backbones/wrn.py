"""WRN-28-10 of S2M2 (640-d features).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, https://arxiv.org/abs/1605.07146;
Mangla et al., "Charting the Right Manifold: Manifold Mixup for Few-shot Learning" (S2M2),
WACV 2020, https://arxiv.org/abs/1907.12087 (public code: nupurkmr9/S2M2_fewshot
``wrn_mixup_model.py``, ``wrn28_10``).

Layout (depth 28 → n = (28 − 4) / 6 = 4 blocks per group, widen factor 10)::

    conv1: conv3x3(3 → 16), stride 1, no bias
    block1: 4 blocks 16 → 160, stride 1;  block2: 4 blocks 160 → 320, first stride 2;
    block3: 4 blocks 320 → 640, first stride 2
    bn1 (640) → ReLU → global average pool → (B, 640)

Pre-activation block ``blockG.layer.N`` (all convs 3×3 pad 1 or 1×1, no bias)::

    a = ReLU(bn1(x))
    o = conv2(ReLU(bn2(conv1(a))))                   # conv1 carries the stride
    y = o + (x if cin == cout else convShortcut(a))  # shortcut from the *pre-activated* input

Final map: 84 px → 21×21 (stride 1, 2, 2), 80 px → 20×20, 32 px → 8×8. The S2M2 code resizes
miniImageNet / tieredImageNet / CUB images to 80 px and CIFAR-FS to 32 px (``save_features.py``);
84 px is the usual miniImageNet protocol (FEAT's WRN pools a 21×21 map). ``pool="avg"``
(default, S2M2's ``F.avg_pool2d(out, out.size()[2:])``) works at any side; ``pool="none"``
flattens (640·h²) and needs ``image_size``.

Parameter names are S2M2's: ``conv1.weight``, ``block1.layer.0.bn1.*``,
``block1.layer.0.conv1.weight``, ``block1.layer.0.bn2.*``, ``block1.layer.0.conv2.weight``,
``block1.layer.0.convShortcut.weight`` (first block of each group only), ..., final ``bn1.*``:
153 keys. S2M2 checkpoints (``{"state": {"module.…"}}``) also hold the classifier ``linear.*``
(``linear.L.weight_g`` / ``linear.L.weight_v`` for its cosine head, ``linear.weight`` /
``linear.bias`` for softmax), a head the loader drops.

Differences from the reference code: dropout (p = 0.5 between ``relu2`` and ``conv2``,
training only) is omitted — no parameters, identity at eval. FEAT's ``WRN28.py`` is a
different network (convs with bias, stride on ``conv2``, shortcut from the raw input, keys
``layerK.N.*`` / ``shortcut.0``) and is not covered by this architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import BACKBONES
from ._base import FeatureBackbone

__all__ = ["WideBlock", "WideResNet", "wrn28_10"]


class WideBlock(nn.Module):
    """Pre-activation wide block ``(B, cin, H, W)`` → ``(B, cout, ⌈H/stride⌉, ⌈W/stride⌉)``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))


class _Group(nn.Module):
    """``n`` wide blocks under ``.layer`` (S2M2's ``NetworkBlock``: keys ``blockG.layer.N.*``)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureBackbone):
    """Wide ResNet (S2M2 layout): ``(B, 3, S, S)`` → ``(B, 64·k)`` (avg) or ``(B, 64·k·h²)`` (none).

    Parameters
    ----------
    depth: 6n + 4 (28).
    widen_factor: k (10); group widths 16k, 32k, 64k.
    in_chans: input channels.
    pool: ``"avg"`` (global average, S2M2) or ``"none"`` (flatten).
    image_size: input side ``S``; required for ``pool="none"``.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_chans: int = 3,
        pool: str = "avg",
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        arch = f"wrn{depth}_{widen_factor}"
        if (depth - 4) % 6 or depth < 10:
            raise ConfigError(f"architecture {arch!r}: depth must be 6n + 4 (e.g. 28), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Group(n, widths[0], widths[1], 1)
        self.block2 = _Group(n, widths[1], widths[2], 2)
        self.block3 = _Group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self._set_output(arch, widths[3], pool, image_size)
        self._init_weights("relu")  # S2M2: N(0, 2 / (k·k·cout))

    def map_side(self, side: int) -> int:
        """Strides 1, 2, 2 (3×3, pad 1 → ⌈s/2⌉): 84 → 21, 80 → 20, 32 → 8."""
        for _ in range(2):
            side = (side + 1) // 2
        return side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, 640, ⌈S/4⌉, ⌈S/4⌉)`` after the final BN + ReLU."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(out))


@BACKBONES.register("wrn28_10")
def wrn28_10(image_size: int | None = None, pool: str = "avg", in_chans: int = 3) -> WideResNet:
    """WRN-28-10 as in S2M2 (640-d)."""
    return WideResNet(depth=28, widen_factor=10, in_chans=in_chans, pool=pool, image_size=image_size)
