"""Input protocols: how images become a feature vector, and the presets of published papers.

A :class:`Protocol` is everything between the stored uint8 pixels and the ``(N, D)`` features
besides the weights: the eval transform (size, resize/crop rule, mean/std), the pooling of the
final feature map and the feature layer. It travels with the checkpoint (our fine-tuned
checkpoints store it under ``meta["protocol"]``, like timm's ``pretrained_cfg``) or comes from a
named :data:`PRESETS` entry that reproduces how a paper evaluated its backbone.

:func:`resolve_protocol` picks the protocol of one evaluation, in this order: ``--preset``, else
the checkpoint's stored protocol, else the dataset's documented transform. A flag that
contradicts the preset or the checkpoint (``--transform``, ``--pool``, ``--arch``) is refused
unless ``force=True`` (``--force-protocol``): features taken under another protocol are another
number, and that must never happen silently.

=====================  ==========================================================================
preset                 source, and what it sets
=====================  ==========================================================================
rfs-resnet12           Tian et al., ECCV 2020 (RFS), ``dataset/transform_cfg.py`` transforms A / D:
                       ResNet-12, average pool (640-d); CIFAR-FS/FC100 32 px with RFS-CIFAR stats;
                       mini/tiered 84 px with MetaOptNet-mini stats; no resize, no crop.
rfs-seresnet12         the same with RFS's squeeze-and-excitation ResNet-12 (``use_se=True``).
metaoptnet-resnet12    Lee et al., CVPR 2019 (MetaOptNet): ResNet-12 feature map **flattened**
                       (``pool="none"``: 640·5·5 = 16,000-d at 84 px, 2,560-d at 32 px);
                       MetaOptNet-CIFAR stats at 32 px, MetaOptNet-mini stats at 84 px.
feat-resnet12          Ye et al., CVPR 2020 (FEAT): ResNet-12, average pool; miniImageNet
                       Resize(92) + CenterCrop(84) with MetaOptNet-mini stats; tieredImageNet
                       84 px, no resize, CIFAR-10 stats. No CIFAR protocol (FEAT has none).
s2m2-wrn28             Mangla et al., WACV 2020 (S2M2), ``save_features.py`` + CloserLook's
                       ``TransformLoader``: WRN-28-10, average pool (640-d), ImageNet stats;
                       mini/tiered Resize(92) + CenterCrop(80); CIFAR Resize(36) + CenterCrop(32).
protonet-conv4         Snell et al., NeurIPS 2017: Conv-4 (64 channels), flattened (1,600-d at
                       84 px); 84 px, no resize; ImageNet stats (the paper gives none; FEAT's and
                       CloserLook's Conv-4 use them).
=====================  ==========================================================================

Differences from the papers' pipelines that remain: resizing is done on float tensors from the
stored arrays (see :mod:`fewshot_bench.transforms`), and where a paper resized the raw JPEG
(FEAT, S2M2 on miniImageNet) we resize the stored 84-px image, which is not the same pixels.
S2M2/CloserLook resize to a square ``(s, s)``; we resize the shorter side, identical for the
square images every benchmark stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .registry import Registry
from .transforms import EvalTransform, get_transform

__all__ = ["POOLS", "PRESETS", "Preset", "Protocol", "check_arch_agrees", "resolve_protocol", "transform_from_meta"]

#: pooling of the final feature map: global average, or flatten (MetaOptNet, Conv-4)
POOLS = ("avg", "none")
#: benchmark -> family, for presets that differ between 32-px CIFAR and 84-px ImageNet benchmarks
_FAMILY = {"cifar-fs": "cifar", "fc100": "cifar", "miniimagenet": "mini", "tieredimagenet": "tiered"}

@dataclass(frozen=True)
class Protocol:
    """The input protocol of one evaluation.

    transform: uint8 ``(B, H, W, 3)`` -> float ``(B, 3, S, S)``.
    pool: ``"avg"`` (global average pool, ``(B, C)``) or ``"none"`` (flattened map, ``(B, C·h·w)``).
    feature_layer: which layer's output is the feature; ``"final"`` (the last block) for every
        backbone here.
    source: where it came from: ``"preset <name>"``, ``"checkpoint"``, ``"flags"``, ``"dataset default"``.
    forced: a flag overrode the preset's or the checkpoint's protocol (``--force-protocol``).
    """

    transform: EvalTransform
    pool: str | None = None
    feature_layer: str = "final"
    source: str = "dataset default"
    forced: bool = False
    overridden: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        t = self.transform
        return {"transform": t.name, "transform_key": t.key, "image_size": t.size, "resize": t.resize,
                "crop": t.crop, "mean": list(t.mean) if t.mean else None, "std": list(t.std) if t.std else None,
                "pool": self.pool, "feature_layer": self.feature_layer, "source": self.source,
                "forced": self.forced, "overridden": list(self.overridden)}

    def describe(self) -> str:
        """One line: ``84 px (resize 92, crop), mean/std (0.472, ...), avg pool, final layer [preset x]``."""
        t = self.transform
        geo = f"{t.size} px" if t.size else "native size"
        if t.resize:
            geo += f" (resize {t.resize}{', center crop' if t.crop else ''})"
        norm = (f"mean ({', '.join(f'{v:.4f}' for v in t.mean)}) std ({', '.join(f'{v:.4f}' for v in t.std)})"
                if t.mean else "no normalisation")
        pool = {"avg": "average pool", "none": "flattened map", None: "model's own pooling"}[self.pool]
        forced = f"; FORCED over {', '.join(self.overridden)}" if self.forced else ""
        return f"{t.name}: {geo}, {norm}, {pool}, {self.feature_layer} layer [{self.source}{forced}]"


@dataclass(frozen=True)
class Preset:
    """A paper's evaluation protocol for its backbone.

    transforms: benchmark family (``cifar``, ``mini``, ``tiered``) -> transform; a benchmark
        outside them is refused (use ``--transform`` without ``--preset``).
    """

    name: str
    arch: str
    arch_kwargs: Mapping[str, Any]
    pool: str
    transforms: Mapping[str, EvalTransform]
    source: str

    def transform_for(self, dataset: str) -> EvalTransform:
        family = _FAMILY.get(dataset)
        if family not in self.transforms:
            covered = sorted(d for d, f in _FAMILY.items() if f in self.transforms)
            raise ConfigError(f"--preset {self.name} has no protocol for --dataset {dataset} (it covers "
                              f"{', '.join(covered)}); drop --preset and give --arch and --transform")
        return self.transforms[family]


PRESETS: Registry[Preset] = Registry("preset", flag="--preset")


def _tf(**by_family: str) -> dict[str, EvalTransform]:
    return {family: get_transform(name) for family, name in by_family.items()}


_RFS = _tf(cifar="rfs-cifar", mini="metaoptnet-mini", tiered="metaoptnet-mini")
for _p in (
    Preset("rfs-resnet12", "resnet12", {}, "avg", _RFS,
           "Tian et al., ECCV 2020, https://arxiv.org/abs/2003.11539 (WangYueFt/rfs)"),
    Preset("rfs-seresnet12", "seresnet12", {}, "avg", _RFS,
           "Tian et al., ECCV 2020, RFS models/resnet.py with use_se=True"),
    Preset("metaoptnet-resnet12", "resnet12", {}, "none",
           _tf(cifar="metaoptnet-cifar", mini="metaoptnet-mini", tiered="metaoptnet-mini"),
           "Lee et al., CVPR 2019, https://arxiv.org/abs/1904.03758 (kjunelee/MetaOptNet)"),
    Preset("feat-resnet12", "resnet12", {}, "avg", _tf(mini="feat-mini", tiered="feat-tiered"),
           "Ye et al., CVPR 2020, https://arxiv.org/abs/1812.03664 (Sha-Lab/FEAT)"),
    Preset("s2m2-wrn28", "wrn28_10", {}, "avg", _tf(cifar="s2m2-cifar", mini="s2m2-80", tiered="s2m2-80"),
           "Mangla et al., WACV 2020, https://arxiv.org/abs/1907.12087 (nupurkmr9/S2M2_fewshot)"),
    Preset("protonet-conv4", "conv4", {"hidden": 64}, "none",
           _tf(mini="imagenet-84-noresize", tiered="imagenet-84-noresize"),
           "Snell et al., NeurIPS 2017, https://arxiv.org/abs/1703.05175"),
):
    PRESETS.register(_p.name, _p)


def transform_from_meta(proto: Mapping[str, Any]) -> EvalTransform:
    """The :class:`EvalTransform` a checkpoint's ``meta["protocol"]`` describes (same key as in training)."""
    try:
        return EvalTransform(str(proto["transform"]), proto.get("image_size"), resize=proto.get("resize"),
                             crop=bool(proto.get("crop", False)),
                             mean=tuple(proto["mean"]) if proto.get("mean") else None,
                             std=tuple(proto["std"]) if proto.get("std") else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the checkpoint's stored protocol is malformed ({exc}); pass --transform and "
                          f"--force-protocol") from None


def resolve_protocol(dataset: str, default_transform: str, *, preset: str | None = None,
                     meta: Mapping[str, Any] | None = None, transform: str | None = None,
                     pool: str | None = None, force: bool = False) -> Protocol:
    """The protocol for ``dataset``: ``preset``, else ``meta["protocol"]``, else ``default_transform``.

    ``transform`` / ``pool`` (the ``--transform`` / ``--pool`` flags) fill in what the base leaves
    open and must agree with what it sets, unless ``force``.
    """
    if pool is not None and pool not in POOLS:
        raise ConfigError(f"--pool {pool!r} is not one of {', '.join(POOLS)}")
    meta = meta or {}
    stored = _stored_protocol(meta)
    over_stored = None
    if preset:
        p = PRESETS.get(preset)
        base_tf, base_pool, source = p.transform_for(dataset), p.pool, f"preset {p.name}"
        if stored:  # a preset must not silently replace what the checkpoint was trained with
            tf_stored, pool_stored = stored
            if (tf_stored.key != base_tf.key or pool_stored != base_pool) and force:
                over_stored = (f"--preset {p.name}", f"{tf_stored.name}, pool {pool_stored}")
            elif tf_stored.key != base_tf.key or pool_stored != base_pool:
                raise ConfigError(
                    f"--preset {p.name} ({base_tf.name}, pool {base_pool}) contradicts the checkpoint's own protocol "
                    f"({tf_stored.name}, pool {pool_stored}); drop --preset to evaluate as it was trained, or add "
                    f"--force-protocol")
    elif stored:
        (base_tf, base_pool), source = stored, "checkpoint"
    elif meta.get("transform") and meta.get("dataset") == dataset:  # checkpoints written before protocols
        base_tf, base_pool, source = get_transform(meta["transform"]), None, "checkpoint"
    else:
        tf = get_transform(transform or default_transform)
        return Protocol(tf, pool, source="flags" if (transform or pool) else "dataset default")

    overridden = [over_stored] if over_stored else []  # (flag, what the base says)
    tf = base_tf
    if transform is not None and not _agrees(get_transform(transform), base_tf):
        overridden.append((f"--transform {transform}", base_tf.name))
        tf = get_transform(transform)
    if pool is not None and base_pool is not None and pool != base_pool:
        overridden.append((f"--pool {pool}", base_pool))
    if overridden and not force:  # (a forced preset over the checkpoint has raised above otherwise)
        flag, says = overridden[0]
        raise ConfigError(f"{flag} contradicts the {source}, which says {says}; drop the flag to evaluate as the "
                          f"{source} says, or add --force-protocol to override it (recorded in summary.json)")
    return Protocol(tf, pool if pool is not None else base_pool, source=source, forced=bool(overridden),
                    overridden=tuple(flag for flag, _ in overridden))


def _stored_protocol(meta: Mapping[str, Any]) -> tuple[EvalTransform, str | None] | None:
    """``(transform, pool)`` of a checkpoint's ``meta["protocol"]``; refuses one that cannot be rebuilt
    exactly (a custom training transform, a pooling we do not know)."""
    stored = meta.get("protocol")
    if not isinstance(stored, Mapping):
        return None
    tf = transform_from_meta(stored)
    recorded = meta.get("transform_key")
    if recorded and recorded != tf.key:
        raise ConfigError(f"the checkpoint was trained with transform {stored.get('transform')!r}, which its stored "
                          f"protocol cannot rebuild exactly (a custom callable?); pass --transform with the matching "
                          f"preset and --force-protocol")
    pool = stored.get("pool")
    if pool is not None and pool not in POOLS:
        raise ConfigError(f"the checkpoint's stored pooling {pool!r} is not one of {', '.join(POOLS)}; pass --pool and "
                          f"--force-protocol")
    return tf, pool


def _agrees(flag: EvalTransform, base: EvalTransform) -> bool:
    """``flag`` names ``base``: the same transform, or a size-free preset (``unit``) that ``base`` pins
    to the size it was trained at."""
    if flag.size is None and base.size is not None:
        flag = dataclasses.replace(flag, size=base.size)
    return flag.key == base.key


def check_arch_agrees(arch: str | None, *, preset: str | None, meta: Mapping[str, Any] | None,
                      force: bool = False) -> str:
    """The architecture to build: ``--arch``, else the preset's, else the checkpoint's ``meta["arch"]``.

    An ``--arch`` contradicting the preset or the checkpoint's own metadata is refused unless ``force``.
    """
    meta = meta or {}
    base, source = (PRESETS.get(preset).arch, f"--preset {preset}") if preset else (meta.get("arch"), "checkpoint")
    if arch is None:
        if not base:
            raise ConfigError("--arch is needed: the checkpoint does not name its architecture and no --preset "
                              "was given (e.g. --arch resnet12, or --preset rfs-resnet12)")
        return str(base)
    if base and arch.strip().lower() != str(base).lower() and not force:
        raise ConfigError(f"--arch {arch} contradicts the {source} ({base}); drop --arch, or add --force-protocol")
    return arch.strip()
