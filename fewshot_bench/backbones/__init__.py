"""Backbones: few-shot classics and any timm model, behind one build path.

>>> model = create_backbone("resnet12")            # (B, 3, H, W) -> (B, 640)
>>> model = create_backbone("resnet12", pool="none", image_size=84)  # MetaOptNet: (B, 16000)
>>> model = create_backbone("conv4", image_size=32) # flattened: out_dim 256
>>> model = create_backbone("timm:resnet18")        # timm, num_classes=0, out_dim 512

Few-shot archs: ``conv4`` (ProtoNet), ``resnet12`` (RFS/MetaOptNet/FEAT), ``seresnet12`` (RFS
with SE), ``wrn28_10`` (S2M2), ``resnet18`` (torchvision keys; ``stem="small"`` for FEAT/easyfsl).

Every model has ``.out_dim`` (feature size D), ``.arch`` (the name it was built from),
``.pool`` and ``forward(x (B, 3, H, W)) -> (B, D)``; the few-shot archs also have
``forward_features(x) -> (B, C, h, w)``. ``pool="avg"`` is the global average of that map
(``(B, C)``), ``pool="none"`` flattens it (``(B, C·h·w)``; needs ``image_size``). ``None``
keyword arguments are dropped (timm habit), so CLI defaults never override a model's own;
unknown keywords are refused. ``image_size`` is accepted by every arch: it sets ``out_dim``
when flattening (``conv4``'s default, as in its paper) and is otherwise unused.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..registry import Registry

BACKBONES: Registry = Registry("architecture", flag="--arch")

from . import conv4, resnet12, resnet18, wrn  # noqa: E402, F401  (register themselves)
from .checkpoint import LoadReport, load_checkpoint, read_checkpoint_meta, save_checkpoint  # noqa: E402
from .timm_models import TIMM_PREFIX, create_timm  # noqa: E402

__all__ = [
    "BACKBONES",
    "LoadReport",
    "check_arch",
    "create_backbone",
    "list_architectures",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]


def create_backbone(arch: str, **kw: Any) -> nn.Module:
    """Build ``arch`` (a registered name such as ``resnet12``, or ``timm:<name>``) with keyword ``kw``.

    Raises :class:`UnknownNameError` (with close matches) for unknown names and
    :class:`ConfigError` for keywords the architecture does not take.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"--arch must be a non-empty name, got {arch!r}")
    arch = arch.strip()
    kw = {k: v for k, v in kw.items() if v is not None}
    if arch.lower().startswith(TIMM_PREFIX):
        model = create_timm(arch[len(TIMM_PREFIX) :], **kw)
        name = TIMM_PREFIX + arch[len(TIMM_PREFIX) :]
    else:
        factory = _lookup(arch)
        name = arch.lower()
        params = inspect.signature(factory).parameters
        extra = sorted(set(kw) - set(params))
        if extra:
            takes = ", ".join(params) or "nothing"
            raise ConfigError(f"architecture {name!r} does not take {', '.join(extra)}; it takes {takes}")
        model = factory(**kw)
    model.arch = name
    return model


def check_arch(arch: str) -> str:
    """Validate an ``--arch`` name without building it; returns the canonical name.

    Raises :class:`UnknownNameError` with close matches (also for unknown timm models).
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"--arch must be a non-empty name, got {arch!r}")
    arch = arch.strip()
    if arch.lower().startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX) :]
        if not timm.is_model(name):
            create_timm(name)  # raises UnknownNameError with close timm names
        return TIMM_PREFIX + name
    _lookup(arch)
    return arch.lower()


def _lookup(arch: str) -> Any:
    try:
        return BACKBONES.get(arch)
    except UnknownNameError as exc:
        msg = str(exc)
    if ":" not in arch:
        import timm

        if timm.is_model(arch):
            raise UnknownNameError(
                f"unknown architecture {arch!r} (--arch); did you mean: {TIMM_PREFIX}{arch}?"
            ) from None
    raise UnknownNameError(f"{msg} (any timm model: --arch {TIMM_PREFIX}<name>)") from None


def list_architectures(pattern: str = "*", *, timm_models: bool = False) -> list[str]:
    """Registered architectures matching ``pattern``; with ``timm_models``, also ``timm:<name>``."""
    names = BACKBONES.list(pattern)
    if timm_models:
        import timm

        pat = pattern[len(TIMM_PREFIX) :] if pattern.lower().startswith(TIMM_PREFIX) else pattern
        names += [TIMM_PREFIX + n for n in timm.list_models(pat)]
    return names
