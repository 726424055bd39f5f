"""The input protocol of a fine-tuning run: which transform feeds the network, at what size.

The transform that feeds training (before augmentation, which works on the uint8 images) is
chosen as follows, first match wins:

1. ``transform=`` given: that preset, :class:`~fewshot_bench.transforms.EvalTransform` or callable;
2. ``--pretrained`` weights with a timm ``pretrained_cfg``: timm's eval recipe for it,
   ``EvalTransform("pretrained-cfg", S, resize=floor(S / crop_pct), crop=True, mean, std)``
   with ``S`` the configured input size (no crop when ``crop_pct == 1``), as
   ``timm.data.create_transform(**resolve_data_config(model=m))`` resizes and crops (ours
   interpolates bilinearly with antialias; timm uses the configured interpolation, usually
   bicubic);
3. the dataset's registered ``eval_transform``, else ``"unit"`` (``/255``).

``image_size=S`` then makes the network input ``S × S``: if the chosen transform already
outputs ``S`` it is kept as is; otherwise an :class:`EvalTransform` that resizes to ``S`` with
**no crop** and the same normalisation replaces it (named ``"<name>@<S>"``). So ``--image-size
32`` on 84-px miniImageNet trains at 32 px. Only callables that are not ``EvalTransform`` cannot
be resized: that is a :class:`~fewshot_bench.errors.ConfigError`.

A preset that takes any input size (``"unit"``: ``size=None``) is pinned to the side it trains at
(``EvalTransform("unit", S)``, numerically the same), so the recorded ``transform_key`` is the key of
``EvalTransform(transform, image_size, resize, crop, mean, std)`` built from the checkpoint's
``"protocol"`` (:func:`input_protocol`): evaluation feeds the backbone exactly like training did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, FewshotBenchError

__all__ = ["input_protocol", "resolve_transform"]


def resolve_transform(
    transform: Any, split: Any, image_size: int | None = None, pretrained_cfg: dict | None = None
) -> tuple[Callable, int]:
    """The training input transform and its output side ``S`` (see the module docstring)."""
    from ..transforms import EvalTransform, get_transform

    if transform is None and pretrained_cfg:
        side = int(pretrained_cfg["input_size"][-1])
        crop_pct = float(pretrained_cfg.get("crop_pct") or 1.0)
        crop = crop_pct < 1.0
        tf: Callable = EvalTransform(
            "pretrained-cfg", side, resize=int(math.floor(side / crop_pct)) if crop else side, crop=crop,
            mean=tuple(pretrained_cfg["mean"]), std=tuple(pretrained_cfg["std"]),
        )
    elif transform is None:
        name = "unit"
        try:
            from ..data import DATASETS

            name = DATASETS.get(split.dataset).eval_transform
        except (ImportError, FewshotBenchError, AttributeError):
            pass
        tf = get_transform(name)
    elif isinstance(transform, (str, EvalTransform)):
        tf = get_transform(transform)
    elif callable(transform):
        tf = transform
    else:
        raise ConfigError(
            f"transform must be a name, an EvalTransform or a callable, got {type(transform).__name__}"
        )
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ConfigError(f"--image-size {image_size!r} must be a positive integer")
        image_size = int(image_size)
        if _out_side(tf, split, check=False) != image_size:
            if not isinstance(tf, EvalTransform):
                raise ConfigError(
                    f"--image-size {image_size}: the custom transform {getattr(tf, 'name', type(tf).__name__)!r} "
                    f"cannot be resized; make it output {image_size} px or pass an EvalTransform"
                )
            tf = EvalTransform(f"{tf.name}@{image_size}", image_size, resize=image_size, crop=False,
                               mean=tf.mean, std=tf.std)
    side = _out_side(tf, split, check=True)
    if isinstance(tf, EvalTransform) and tf.size is None:  # "unit" takes any size: pin the one trained at
        tf = EvalTransform(tf.name, side, resize=tf.resize, crop=tf.crop, mean=tf.mean, std=tf.std)
    return tf, side


def _out_side(tf: Callable, split: Any, *, check: bool) -> int | None:
    """Side of ``tf``'s output on the split's first image (``None`` if it cannot take it and not ``check``)."""
    try:
        x = tf(torch.from_numpy(np.array(split.images[:1])))  # a writable copy
    except DataError:
        if check:
            raise
        return None
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise DataError(f"the transform gave shape {tuple(x.shape)}; it must give (B, 3, S, S)")
    return int(x.shape[-1])


def input_protocol(tf: Callable, side: int, backbone: nn.Module) -> dict[str, Any]:
    """The input protocol evaluation must use: transform parameters, input side, pooling, feature layer."""
    mean, std = getattr(tf, "mean", None), getattr(tf, "std", None)
    pool = getattr(backbone, "pool", None)
    return {
        "transform": str(getattr(tf, "name", type(tf).__name__)),
        "image_size": int(side),
        "resize": None if getattr(tf, "resize", None) is None else int(tf.resize),  # type: ignore[attr-defined]
        "crop": bool(getattr(tf, "crop", False)),
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "pool": pool if pool in ("avg", "none") else None,  # None: the architecture's own pooling
        "feature_layer": "final",
    }
