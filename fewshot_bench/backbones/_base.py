"""What every few-shot backbone shares: the ``pool`` option and the ``(B, D)`` forward.

A backbone maps ``(B, C_in, S, S)`` to a final feature map ``(B, C, h, w)``
(:meth:`FeatureBackbone.forward_features`) and then to features ``(B, D)``:

- ``pool="avg"``: global average pool, ``f = mean_{i,j} F[:, :, i, j]`` → ``(B, C)``, any input side;
- ``pool="none"``: flatten, ``f = vec(F)`` → ``(B, C·h·w)`` (MetaOptNet's protocol, Conv-4's paper
  output). ``h = w`` depend on the input side ``S``, so ``out_dim`` needs ``image_size`` at
  construction (a training head needs the size before the first batch) and ``forward`` refuses
  other sides.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["POOLS", "FeatureBackbone", "check_pool"]

POOLS = ("avg", "none")


def check_pool(arch: str, pool: str, image_size: int | None) -> int | None:
    """Validate ``pool`` / ``image_size`` for ``arch``; returns the side as an int (or None).

    Raises a one-line :class:`ConfigError` naming ``--pool`` / ``--image-size``.
    """
    if pool not in POOLS:
        raise ConfigError(f"architecture {arch!r}: --pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if image_size is None:
        if pool == "none":
            raise ConfigError(
                f"architecture {arch!r} with --pool none flattens the final feature map, whose size depends "
                f"on the input side: pass --image-size (e.g. 84), or use --pool avg"
            )
        return None
    try:
        side = operator.index(image_size)  # int, numpy int; not float or str
    except TypeError:
        side = 0
    if isinstance(image_size, bool) or side < 1:
        raise ConfigError(
            f"architecture {arch!r}: --image-size must be a positive integer, got {image_size!r}"
        )
    return side


class FeatureBackbone(nn.Module):
    """Base of the few-shot backbones: ``forward = pool ∘ forward_features``.

    Subclasses call :meth:`_set_output` (arch name, C of the final map, pool, image size) once
    built, and implement :meth:`forward_features` and :meth:`map_side` (``S`` → ``h`` of the map).
    """

    arch: str
    pool: str
    image_size: int | None
    out_dim: int

    def _set_output(self, arch: str, channels: int, pool: str, image_size: int | None) -> None:
        side = check_pool(arch, pool, image_size)
        self.arch, self.pool, self.image_size = arch, pool, side
        if side is not None:
            h = self.map_side(side)
            if h < 1:
                raise ConfigError(
                    f"architecture {arch!r} cannot take {side} px inputs (--image-size): "
                    f"its final feature map would be empty"
                )
        self.out_dim = int(channels) if pool == "avg" else int(channels) * h * h

    def _init_weights(self, nonlinearity: str) -> None:
        """He-normal (fan-out) convolutions for ``nonlinearity``, BatchNorm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def map_side(self, side: int) -> int:  # pragma: no cover - abstract
        """Side ``h`` of the final feature map for ``side`` px inputs."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``(B, C_in, S, S)`` → final feature map ``(B, C, h, w)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, S)`` → ``(B, out_dim)`` (``pool="avg"``: ``(B, C)``; ``"none"``: ``(B, C·h·w)``)."""
        if self.pool == "none" and (x.shape[-1] != self.image_size or x.shape[-2] != self.image_size):
            raise DataError(
                f"{self.arch} was built for {self.image_size} px inputs (out_dim {self.out_dim}) but got "
                f"{tuple(x.shape[-2:])}; build it with image_size={x.shape[-1]} or pool='avg'"
            )
        fmap = self.forward_features(x)
        return fmap.mean(dim=(2, 3)) if self.pool == "avg" else fmap.flatten(1)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, image_size={self.image_size}, out_dim={self.out_dim}"
