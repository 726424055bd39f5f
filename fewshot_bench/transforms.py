"""Eval transforms and train-time augmentation, applied in torch on uint8 batches.

Images travel as uint8 ``(B, H, W, 3)`` (as stored in a :class:`~fewshot_bench.data.Split`)
and are turned into float ``(B, 3, S, S)`` on whatever device they are on, so on a GPU
the host only ships bytes.

>>> t = get_transform("imagenet-84")          # resize 96 + center crop 84, ImageNet stats
>>> x = t(torch.zeros(2, 100, 120, 3, dtype=torch.uint8))
>>> x.shape, x.dtype
(torch.Size([2, 3, 84, 84]), torch.float32)

Geometry follows ``torchvision.transforms.v2`` on float tensors exactly: ``Resize(int)``
resizes the shorter side (bilinear, ``antialias=True``, long side ``int(r * long / short)``),
``CenterCrop`` uses ``round((H - S) / 2)`` offsets. Resizing happens on float pixels, so it
differs from PIL/uint8 pipelines only by their rounding (< 1/255 before normalisation).
Statistics: ``shared/datasets/FACTS.md`` §6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .registry import Registry

__all__ = [
    "EvalTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METAOPTNET_CIFAR_MEAN",
    "METAOPTNET_CIFAR_STD",
    "METAOPTNET_MINI_MEAN",
    "METAOPTNET_MINI_STD",
    "TRANSFORMS",
    "get_transform",
    "list_transforms",
    "to_uint8_tensor",
    "train_augment",
]

Stats = tuple[float, float, float]

METAOPTNET_CIFAR_MEAN: Stats = tuple(v / 255.0 for v in (129.37731888, 124.10583864, 112.47758569))  # type: ignore[assignment]
METAOPTNET_CIFAR_STD: Stats = tuple(v / 255.0 for v in (68.20947949, 65.43124043, 70.45866994))  # type: ignore[assignment]
METAOPTNET_MINI_MEAN: Stats = tuple(v / 255.0 for v in (120.39586422, 115.59361427, 104.54012653))  # type: ignore[assignment]
METAOPTNET_MINI_STD: Stats = tuple(v / 255.0 for v in (70.68188272, 68.27635443, 72.54505529))  # type: ignore[assignment]
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
RFS_CIFAR_MEAN: Stats = (0.5071, 0.4867, 0.4408)  # RFS dataset/transform_cfg.py, transform D
RFS_CIFAR_STD: Stats = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN: Stats = tuple(v / 255.0 for v in (125.3, 123.0, 113.9))  # type: ignore[assignment]
CIFAR10_STD: Stats = tuple(v / 255.0 for v in (63.0, 62.1, 66.7))  # type: ignore[assignment]

_IMPL_VERSION = 1  # bump when the numerics change: it is part of every cache key


def to_uint8_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check a ``(B, H, W, 3)`` uint8 batch and return it as a tensor (no copy for numpy)."""
    if isinstance(images, np.ndarray):  # read-only arrays (memmaps) are copied: torch needs writable memory
        contiguous = np.ascontiguousarray(images)
        images = torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"images must be uint8 (B, H, W, 3) RGB, got {str(images.dtype).replace('torch.', '')} "
            f"{tuple(images.shape)}; convert them to uint8 RGB with channels last"
        )
    return images


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic eval transform: uint8 ``(B, H, W, 3)`` → float32 ``(B, 3, S, S)``.

    Steps: ``/255``; if ``resize``, resize the shorter side to ``resize``; if ``crop``,
    center-crop ``size × size``; normalise with ``mean``/``std`` (skipped when ``None``).
    The result must be ``size × size`` (``size=None`` accepts any input size), otherwise
    a :class:`DataError` names the transform to pick instead: images are never silently
    stretched to a shape they were not benchmarked at.

    Parameters
    ----------
    name: preset name, part of :attr:`key`.
    size: output side ``S`` or ``None`` (keep the input size; only without resize/crop).
    resize: shorter-side target before cropping, or ``None``.
    crop: center-crop to ``size``.
    mean, std: per-channel RGB statistics on the ``[0, 1]`` scale, or ``None``.
    """

    name: str
    size: int | None
    resize: int | None = None
    crop: bool = False
    mean: Stats | None = None
    std: Stats | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"transform {self.name!r}: give both mean and std, or neither")
        for field, v in (("mean", self.mean), ("std", self.std)):
            if v is not None:
                v = tuple(float(x) for x in v)
                if len(v) != 3 or not all(math.isfinite(x) for x in v):
                    raise ConfigError(f"transform {self.name!r}: {field} must be 3 finite numbers, got {v}")
                object.__setattr__(self, field, v)
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"transform {self.name!r}: std must be positive, got {self.std}")
        if self.size is None and (self.crop or self.resize):
            raise ConfigError(f"transform {self.name!r}: resize/crop need an output size")
        for field, v in (("size", self.size), ("resize", self.resize)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v <= 0):
                raise ConfigError(f"transform {self.name!r}: {field} must be a positive integer, got {v!r}")

    @property
    def key(self) -> str:
        """Stable string naming every parameter (and the implementation version), for cache keys."""
        fmt = lambda v: "none" if v is None else ",".join(repr(float(x)) for x in v)  # noqa: E731
        return (
            f"{self.name}|v{_IMPL_VERSION}|size={self.size}|resize={self.resize}|crop={int(self.crop)}"
            f"|mean={fmt(self.mean)}|std={fmt(self.std)}"
        )

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` → float32 ``(B, 3, S, S)`` on the same device."""
        x = to_uint8_tensor(images).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        if self.resize is not None:
            x = _resize_shorter(x, self.resize)
        if self.crop:
            x = _center_crop(x, self.size)  # type: ignore[arg-type]
        h, w = x.shape[-2:]
        if self.size is not None and (h, w) != (self.size, self.size):
            raise DataError(
                f"transform {self.name!r} expects {self.size}x{self.size} images but got "
                f"{tuple(images.shape[1:3])}; choose a transform that resizes (e.g. imagenet-84) "
                f"or store images at {self.size} px"
            )
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        return x.contiguous()


def _resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` so the shorter side is ``size`` (torchvision ``Resize(int)`` rule)."""
    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return x
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise DataError(f"cannot center-crop {size}x{size} from {h}x{w} images; resize them first")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


TRANSFORMS: Registry[EvalTransform] = Registry("transform", flag="--transform")


def _preset(t: EvalTransform) -> EvalTransform:
    TRANSFORMS.register(t.name, t)
    return t


_preset(EvalTransform("metaoptnet-cifar", 32, mean=METAOPTNET_CIFAR_MEAN, std=METAOPTNET_CIFAR_STD))
_preset(EvalTransform("metaoptnet-mini", 84, mean=METAOPTNET_MINI_MEAN, std=METAOPTNET_MINI_STD))
_preset(EvalTransform("imagenet-84", 84, resize=96, crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
_preset(EvalTransform("imagenet-224", 224, resize=256, crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
_preset(EvalTransform("unit", None))
# the protocols of published backbones (fewshot_bench.protocol.PRESETS; FACTS.md §6)
_preset(EvalTransform("rfs-cifar", 32, mean=RFS_CIFAR_MEAN, std=RFS_CIFAR_STD))
_preset(EvalTransform("feat-mini", 84, resize=92, crop=True, mean=METAOPTNET_MINI_MEAN, std=METAOPTNET_MINI_STD))
_preset(EvalTransform("feat-tiered", 84, mean=CIFAR10_MEAN, std=CIFAR10_STD))
_preset(EvalTransform("s2m2-cifar", 32, resize=36, crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
_preset(EvalTransform("s2m2-80", 80, resize=92, crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))
_preset(EvalTransform("imagenet-84-noresize", 84, mean=IMAGENET_MEAN, std=IMAGENET_STD))


def get_transform(name_or_obj: str | EvalTransform) -> EvalTransform:
    """A preset by name (close matches on typos) or an :class:`EvalTransform` as is."""
    if isinstance(name_or_obj, EvalTransform):
        return name_or_obj
    if not isinstance(name_or_obj, str):
        raise ConfigError(f"transform must be a name or EvalTransform, got {type(name_or_obj).__name__}")
    return TRANSFORMS.get(name_or_obj)


def list_transforms(pattern: str = "*") -> list[str]:
    return TRANSFORMS.list(pattern)


# ---------------------------------------------------------------------------------------------
# training augmentation

_GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights


def train_augment(
    images: np.ndarray | torch.Tensor,
    generator: torch.Generator,
    pad: int,
    *,
    flip: bool = True,
    jitter: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Random crop with zero padding, horizontal flip and colour jitter, vectorised.

    MetaOptNet/RFS recipe: ``RandomCrop(S, padding=pad)`` + ``ColorJitter(j, j, j)`` +
    ``RandomHorizontalFlip`` (FACTS.md §6: pad 4 and j=0.4 for CIFAR, pad 8 for 84 px).

    Parameters
    ----------
    images: uint8 ``(B, H, W, 3)``, numpy or torch (any device).
    generator: a *CPU* ``torch.Generator``; every random draw comes from it, so a seed gives
        the same batch on CPU and GPU.
    pad: zero padding on each side before the random ``H × W`` crop (0 disables cropping).
    flip: flip each image left-right with probability 1/2.
    jitter: brightness, contrast, saturation strengths (one float for all three); factors are
        drawn uniformly from ``[1 - j, 1 + j]`` and applied in that fixed order (torchvision
        shuffles the order per call; no hue jitter).

    Returns
    -------
    uint8 tensor ``(B, H, W, 3)`` on the device of ``images``.
    """
    x = to_uint8_tensor(images)
    if pad < 0:
        raise ConfigError(f"pad must be >= 0, got {pad}")
    b, dev = x.shape[0], x.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    j = (float(jitter),) * 3 if isinstance(jitter, (int, float)) else tuple(float(v) for v in jitter)
    if len(j) != 3 or min(j) < 0:
        raise ConfigError(f"jitter must be one or three non-negative numbers, got {jitter!r}")
    factors = 1.0 + (torch.rand(b, 3, generator=generator) * 2.0 - 1.0) * torch.tensor(j)
    offsets, flips, factors = offsets.to(dev), flips.to(dev), factors.to(dev)
    x = _crop_flip(x, offsets, flips, pad)
    if any(j):
        x = _color_jitter(x, factors)
    return x.contiguous()


def _crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop + flip as one gather from the zero-padded batch ``x (B, H, W, 3)``: rows (B, H), cols (B, W);
    ``offsets (B, 2)`` are the crop's top-left corners in the padded images, ``flips (B,)`` bool."""
    b, h, w, _ = x.shape
    dev = x.device
    if pad:
        x = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = offsets[:, :1] + ar_h
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)
    return x[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation of uint8 ``x (B, H, W, 3)`` by ``factors (B, 3)``, in that order."""
    y = x.to(torch.float32) / 255.0
    gray_w = torch.tensor(_GRAY, device=x.device)
    y = (y * factors[:, 0, None, None, None]).clamp_(0, 1)  # brightness
    mean = (y @ gray_w).mean(dim=(1, 2))[:, None, None, None]
    c = factors[:, 1, None, None, None]
    y = (c * y + (1 - c) * mean).clamp_(0, 1)  # contrast
    gray = (y @ gray_w)[..., None]
    s = factors[:, 2, None, None, None]
    y = (s * y + (1 - s) * gray).clamp_(0, 1)  # saturation
    return (y * 255.0).round_().to(torch.uint8)
