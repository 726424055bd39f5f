"""Any timm model as a feature extractor: ``--arch timm:<name>``.

``timm.create_model(name, pretrained=False, num_classes=0)``: the classifier is removed and
``forward`` returns pooled pre-logits ``(B, D)``. The model is returned as is (no wrapper),
so timm checkpoints load with their own key names. ``out_dim`` is ``head_hidden_size``
(what ``num_classes=0`` forward returns; equals ``num_features`` for most models).
Weights come from ``--checkpoint``; pass ``pretrained=True`` only to download timm's own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..registry import close_matches

__all__ = ["TIMM_PREFIX", "create_timm"]

TIMM_PREFIX = "timm:"


def create_timm(name: str, **kw: Any) -> nn.Module:
    """Build timm model ``name`` without classifier; ``image_size`` is ignored (timm defaults)."""
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
    kw.pop("image_size", None)
    kw.setdefault("pretrained", False)
    kw.setdefault("num_classes", 0)
    try:
        model = timm.create_model(name, **kw)
    except TypeError as exc:
        raise ConfigError(f"timm model {name!r} rejected its arguments {sorted(kw)}: {exc}") from exc
    model.out_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model
