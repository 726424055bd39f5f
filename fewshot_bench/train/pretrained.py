"""Pretrained starting points for fine-tuning: weights from a local file, loaded strictly.

The CLCE paper fine-tunes ImageNet-pretrained ResNet-101 and BEiT models; here any backbone
(``conv4``, ``resnet12``, ``timm:<name>``) can start from a local file (``--pretrained PATH``,
nothing is downloaded). The file goes through the same strict loader as every checkpoint
(:func:`fewshot_bench.backbones.load_checkpoint`): safetensors or ``torch.load(weights_only=True)``,
the usual nestings and wrapper prefixes, every key consumed or dropped by a named rule (an
ImageNet classifier head is ``classifier-head``: the backbone is built without one), anything
else a one-line :class:`~fewshot_bench.errors.CheckpointError` (a half-loaded backbone would
silently fine-tune from a partly random start).

For timm models the model's ``pretrained_cfg`` (input size, mean, std, crop_pct, interpolation,
as resolved by ``timm.data.resolve_data_config``) is returned with the file's SHA-256 and the
load report, so the input protocol travels with the weights into the fine-tuned checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .._io import sha256_file
from ..errors import CheckpointError

__all__ = ["load_pretrained", "pretrained_cfg"]


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``path`` into ``model`` strictly; return ``{"path", "sha256", "format", "ignored_head_keys",
    "load_report", "pretrained_cfg"}``."""
    from ..backbones import load_checkpoint

    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"--pretrained {p} is a folder; pass the .safetensors or .pt/.pth file inside it")
    if not p.is_file():
        raise CheckpointError(f"--pretrained {p} does not exist; give a .safetensors or .pt/.pth weights file")
    try:
        report = load_checkpoint(p, model)
    except CheckpointError as exc:
        raise CheckpointError(f"--pretrained: {exc}") from None
    return {
        "path": str(p),
        "sha256": sha256_file(p),
        "format": report.format,
        "ignored_head_keys": len(report.dropped.get("classifier-head", [])),
        "load_report": report.to_json(),
        "pretrained_cfg": pretrained_cfg(model),
    }


def pretrained_cfg(model: nn.Module) -> dict[str, Any] | None:
    """The input protocol of a timm model (``resolve_data_config``); ``None`` for other modules."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg:
        return None
    from timm.data import resolve_data_config

    data = resolve_data_config(model=model)
    return {
        "architecture": cfg.get("architecture"),
        "tag": cfg.get("tag"),
        "input_size": [int(v) for v in data["input_size"]],
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "crop_pct": float(data.get("crop_pct", 1.0)),
        "crop_mode": str(data.get("crop_mode", "center")),
        "interpolation": str(data.get("interpolation", "bilinear")),
    }
