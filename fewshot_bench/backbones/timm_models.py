"""Any timm model as a feature extractor: ``--arch timm:<name>``.

``timm.create_model(name, pretrained=False, num_classes=0)``: the classifier is removed and
``forward`` returns pre-logits ``(B, D)``. The model is returned as is (no wrapper), so timm
checkpoints load with their own key names. Weights come from ``--checkpoint``; pass
``pretrained=True`` only to download timm's own.

Pooling (``pool``):

- unset: the model's own head pooling (``avg`` for CNNs, the class token for most ViTs), so
  features match what the weights were trained with; ``out_dim = head_hidden_size``.
- ``"avg"``: ``global_pool="avg"`` (timm's global average; the default of CNNs anyway).
- ``"none"``: ``global_pool=""`` and a forward hook that flattens the head's output:
  ``(B, C, h, w)`` → ``(B, C·h·w)`` for CNNs (``(B, N, C)`` → ``(B, N·C)`` tokens for ViTs).
  ``out_dim`` then depends on the input side: ``image_size`` is required, and ``out_dim`` is read
  off one forward pass of a ``(1, in_chans, S, S)`` zero image at construction.

Attributes: ``.out_dim``, ``.pool`` (``"avg"``, ``"none"``, or ``None`` for the model's own pooling,
which timm keeps in different places: ``global_pool``, ``head.global_pool``, a class token),
``.image_size``; ``forward_features`` is timm's own (``(B, C, h, w)`` for CNNs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..registry import close_matches
from ._base import check_pool

__all__ = ["TIMM_PREFIX", "create_timm"]

TIMM_PREFIX = "timm:"


def _flatten_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of ``pool="none"``: ``(B, ...)`` → ``(B, prod(...))``."""
    return output.flatten(1)


def create_timm(name: str, pool: str | None = None, image_size: int | None = None, **kw: Any) -> nn.Module:
    """Build timm model ``name`` without classifier, pooled as ``pool`` (see the module docstring)."""
    import timm

    if not name or not timm.is_model(name):
        hint = close_matches(name, timm.list_models(), n=5) if name else []
        msg = f"unknown timm model {name!r} (--arch {TIMM_PREFIX}{name})"
        msg += (
            f"; did you mean: {', '.join(TIMM_PREFIX + h for h in hint)}?"
            if hint
            else "; see timm.list_models()"
        )
        raise UnknownNameError(msg)
    arch = TIMM_PREFIX + name
    side = check_pool(arch, pool, image_size) if pool is not None else None
    if "global_pool" in kw and pool is not None:
        raise ConfigError(f"architecture {arch!r}: give --pool or global_pool, not both")
    if pool is not None:
        kw["global_pool"] = "avg" if pool == "avg" else ""
    kw.setdefault("pretrained", False)
    kw.setdefault("num_classes", 0)
    try:
        model = timm.create_model(name, **kw)
    except TypeError as exc:
        raise ConfigError(f"timm model {name!r} rejected its arguments {sorted(kw)}: {exc}") from exc
    model.image_size = side
    if pool == "none":
        model.register_forward_hook(_flatten_output)
        model.pool = "none"
        model.out_dim = _probe_dim(model, arch, int(kw.get("in_chans", 3)), side)
    else:
        # None: the model's own head pooling (timm keeps it in different places: global_pool,
        # head.global_pool, a class token); only a pooling we asked for is named
        model.pool = pool
        model.out_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def _probe_dim(model: nn.Module, arch: str, in_chans: int, side: int) -> int:
    """Feature size of ``model`` for ``side`` px inputs, from one forward pass (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(torch.zeros(1, in_chans, side, side))
    except Exception as exc:  # noqa: BLE001 - e.g. ViTs built for another input size
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"architecture {arch!r} cannot take {side} px inputs (--image-size): {why}"
        ) from exc
    finally:
        model.train(was_training)
    return int(y.shape[1])
