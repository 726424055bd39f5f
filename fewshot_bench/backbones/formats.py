"""The published checkpoint layouts, and the named rules that account for every key.

:func:`~fewshot_bench.backbones.checkpoint.load_checkpoint` is strict: each entry of a
checkpoint is either copied into the architecture or dropped by one of the :data:`RULES`
below; anything else (and any model key left unfilled) fails the load. This module holds
the knowledge of the public code that wrote the files: how each one saves, which of its
keys are not backbone weights, and how to tell the layouts apart (:func:`detect_format`).

Layouts (what the public training code writes; ``K`` = 1..4, ``*`` = BatchNorm's
``weight, bias, running_mean, running_var[, num_batches_tracked]``):

``rfs``  Tian et al., ECCV 2020, github.com/WangYueFt/rfs ``train_supervised.py`` /
    ``train_distillation.py``: ``ckpt_epoch_N.pth = {"epoch": int, "model": sd}``,
    ``<model>_last.pth = {"opt": argparse.Namespace, "model": sd}``. ``sd`` (``models/resnet.py``):
    ``layerK.0.conv{1,2,3}.weight``, ``layerK.0.bn{1,2,3}.*``, ``layerK.0.downsample.0.weight``,
    ``layerK.0.downsample.1.*`` (96 keys) + ``classifier.{weight,bias}``; ``seresnet12`` adds
    ``layerK.0.se.fc.{0,2}.{weight,bias}`` (16 keys). Multi-GPU runs save
    ``model.module.state_dict()``; forks that do not carry ``module.`` prefixes.
``metaoptnet``  Lee et al., CVPR 2019, github.com/kjunelee/MetaOptNet ``train.py``:
    ``{"embedding": sd, "head": {"scale": (1,)}}``; ``sd`` has ``module.`` prefixes
    (``DataParallel``) and the ResNet-12 keys above without ``classifier``; PyTorch 0.4.0 wrote
    no ``num_batches_tracked``.
``feat``  Ye et al., CVPR 2020, github.com/Sha-Lab/FEAT: ``{"params": sd}``; pre-training
    (``Classifier``) gives ``encoder.<ResNet-12 keys>`` + ``fc.{weight,bias}``, the FEAT
    model ``encoder.*`` + ``slf_attn.{w_qs,w_ks,w_vs}.weight``, ``slf_attn.fc.{weight,bias}``,
    ``slf_attn.layer_norm.{weight,bias}``.
``s2m2``  Mangla et al., WACV 2020, github.com/nupurkmr9/S2M2_fewshot ``train.py``:
    ``{"epoch": int, "state": sd[, "rotate": {"0.weight", "0.bias"}]}``; ``sd``
    (``wrn_mixup_model.py``, WRN-28-10, ``DataParallel`` → ``module.``): ``conv1.weight``,
    ``blockB.layer.L.{bn1,bn2}.*``, ``blockB.layer.L.{conv1,conv2}.weight``,
    ``blockB.layer.0.convShortcut.weight``, ``bn1.*``, and the cosine classifier
    ``linear.L.weight_g`` / ``linear.L.weight_v`` (weight norm).
``protonet``  Snell et al., NeurIPS 2017, github.com/jakesnell/prototypical-networks
    ``scripts/train/few_shot/train.py``: ``torch.save(model)``, a whole pickled
    ``Protonet`` module, refused by the safe loader; ``fewshot-bench convert --trust-source``
    turns it into ``encoder.{0..3}.0.{weight,bias}``, ``encoder.{0..3}.1.*`` (PyTorch 0.3: no
    ``num_batches_tracked``).
``easyfsl``  github.com/sicara/easy-few-shot-learning: ``torch.save(model.state_dict())`` of a
    ``FewShotClassifier`` (``PrototypicalNetworks(backbone)``...) → ``backbone.<keys>``; its
    ``FEAT`` adds ``attention_module.*``.
``libfewshot``  Li et al., github.com/RL-VIG/LibFewShot ``core/utils/utils.py`` ``save_model``:
    ``model_best.pth`` = ``emb_func.<keys>`` + ``classifier.*`` (``module`` components
    removed), ``model_last.pth = {"epoch", "model", "optimizer", "lr_scheduler"}``,
    ``emb_func_best.pth`` = the bare backbone.
``timm-state-dict`` / ``timm-checkpoint``  timm: hub weights are plain state dicts (classifier
    ``fc.`` / ``head.`` / ``classifier.``); ``train.py`` checkpoints hold ``{"epoch", "arch",
    "state_dict", "optimizer", "version", "args": Namespace, "state_dict_ema", "metric", ...}``.
``safetensors``  a ``.safetensors`` file (no pickle at all); ``fewshot-bench`` our own
    ``{"state_dict": sd, "fewshot_bench": meta}``; ``state-dict`` anything else.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "FORMATS",
    "RULES",
    "arch_hint",
    "detect_format",
    "key_rule",
    "origin_meta",
    "sibling_rule",
    "tensor_paths",
]

#: format name -> where it comes from (see the module docstring for the layouts)
FORMATS: dict[str, str] = {
    "fewshot-bench": "fewshot-bench save_checkpoint: {'state_dict', 'fewshot_bench': meta}",
    "rfs": "WangYueFt/rfs: {'model', 'opt' (argparse.Namespace) or 'epoch'}",
    "metaoptnet": "kjunelee/MetaOptNet: {'embedding' (module.), 'head'}",
    "feat": "Sha-Lab/FEAT: {'params'} with encoder. keys",
    "s2m2": "nupurkmr9/S2M2_fewshot: {'epoch', 'state' (module., WRN-28-10)[, 'rotate']}",
    "protonet": "jakesnell/prototypical-networks (converted): encoder.N.M keys",
    "easyfsl": "sicara/easy-few-shot-learning: FewShotClassifier state dict, backbone. keys",
    "libfewshot": "RL-VIG/LibFewShot: emb_func. keys, plain or under 'model'",
    "timm-state-dict": "a plain timm state dict",
    "timm-checkpoint": "timm train.py checkpoint: {'state_dict', 'arch', 'args', ...}",
    "safetensors": "a .safetensors file",
    "state-dict": "any other (nested) state dict",
}

#: rule name -> why entries it matches are not backbone weights
RULES: dict[str, str] = {
    "classifier-head": "the training classifier on top of the features (fc., head., classifier., linear. "
    "incl. S2M2's weight-normed linear.L.weight_g/v, MetaOptNet's 'head' scale); features never use it",
    "projection-head": "a contrastive projection head (projection., projector.); features are taken before it",
    "rotation-head": "S2M2's self-supervised rotation classifier ('rotate', rotate_classifier.)",
    "method-module": "a few-shot method's episode-level module applied after the backbone "
    "(FEAT's set-to-set attention slf_attn., easyfsl's attention_module.); features never use it",
    "optimizer-state": "optimizer, LR-scheduler and AMP-scaler states (resume-only)",
    "ema-copy": "the EMA copy of the weights, not selected (load it with use_ema=True)",
    "non-ema-copy": "the raw copy of the weights, not selected because use_ema=True picked the EMA copy",
    "training-metadata": "entries without tensors: epoch, argparse options (RFS 'opt', FEAT/timm 'args'), "
    "logs, metrics, fewshot-bench metadata",
    "num-batches-tracked": "BatchNorm step counters: absent from PyTorch < 0.4.1 files (MetaOptNet, ProtoNet), "
    "they only set the averaging factor of momentum=None BatchNorm in training; eval features never read them",
}

CLASSIFIER_HEADS = frozenset({"fc", "head", "heads", "classifier", "cls_head", "linear", "last_linear", "head_dist"})
PROJECTION_HEADS = frozenset({"projection", "projector", "proj_head", "projection_head", "head_proj"})
ROTATION_HEADS = frozenset({"rotate", "rotate_classifier", "rot_classifier", "rot_head"})
METHOD_MODULES = frozenset({"slf_attn", "attention_module"})
_OPTIMIZER_NAME = re.compile(r"optim|sched|scaler|^amp$", re.IGNORECASE)


def key_rule(bare_key: str) -> str | None:
    """The rule that drops state-dict key ``bare_key`` (prefixes already removed), or ``None``.

    Only applied to keys the architecture does not have: a ``head.norm.weight`` that a timm
    model keeps is consumed, not dropped.
    """
    first = bare_key.split(".", 1)[0]
    if first in CLASSIFIER_HEADS:
        return "classifier-head"
    if first in PROJECTION_HEADS:
        return "projection-head"
    if first in ROTATION_HEADS:
        return "rotation-head"
    if first in METHOD_MODULES:
        return "method-module"
    if bare_key.endswith("num_batches_tracked"):
        return "num-batches-tracked"
    return None


def _is_optimizer_state(value: Any) -> bool:
    return isinstance(value, Mapping) and "param_groups" in value and "state" in value


def tensor_paths(value: Any, prefix: str, depth: int = 0) -> Iterator[str]:
    """Dotted paths of the tensors inside ``value`` (mappings, lists, Namespaces), depth-limited."""
    if isinstance(value, torch.Tensor):
        yield prefix
    elif depth > 6:
        return
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from tensor_paths(v, f"{prefix}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from tensor_paths(v, f"{prefix}[{i}]", depth + 1)
    elif isinstance(value, argparse.Namespace):
        yield from tensor_paths(vars(value), prefix, depth + 1)


def sibling_rule(name: str, value: Any, *, ema_keys: tuple[str, ...], picked_ema: bool) -> str | None:
    """The rule that drops the top-level entry ``name`` next to the state dict, or ``None``.

    ``picked_ema``: the state dict came from an EMA entry (so a raw copy is ``non-ema-copy``).
    """
    low = name.lower()
    if low in ema_keys and not picked_ema:
        return "ema-copy"
    if picked_ema and low in ("model", "state_dict", "net", "network", "params", "state"):
        return "non-ema-copy"
    if _OPTIMIZER_NAME.search(low) or _is_optimizer_state(value):
        return "optimizer-state"
    if low in CLASSIFIER_HEADS:
        return "classifier-head"
    if low in ROTATION_HEADS:
        return "rotation-head"
    if low in PROJECTION_HEADS:
        return "projection-head"
    if next(tensor_paths(value, name), None) is None:
        return "training-metadata"
    return None


def detect_format(obj: Any, nesting: str, keys: list[str], *, suffix: str = "", arch: str = "") -> str:
    """Name the layout of a loaded checkpoint (one of :data:`FORMATS`).

    ``obj``: what was unpickled; ``nesting``: where the state dict was found (``"model"``,
    ``""``); ``keys``: its keys as stored; ``suffix``: the file suffix; ``arch``: the target.
    """
    if suffix == ".safetensors":
        return "safetensors"
    top = set(obj) if isinstance(obj, Mapping) else set()
    root = nesting.split(".", 1)[0]
    if "fewshot_bench" in top:
        return "fewshot-bench"
    if any(k.startswith(("emb_func.", "module.emb_func.")) for k in keys):
        return "libfewshot"
    if root == "embedding":
        return "metaoptnet"
    if root == "params":
        return "feat"
    if root == "state" and top <= {"epoch", "state", "rotate"}:
        return "s2m2"
    if root == "model" and ("opt" in top or top <= {"epoch", "model"}):
        return "rfs"
    if root.startswith("state_dict") and {"arch", "version"} <= top:
        return "timm-checkpoint"
    if not nesting:
        if keys and all(k.startswith("backbone.") for k in keys if not key_rule(k)):
            return "easyfsl"
        if keys and all(re.match(r"(module\.)?encoder\.\d+\.\d+\.", k) for k in keys):
            return "protonet"
        if arch.startswith("timm:"):
            return "timm-state-dict"
    return "state-dict"


def layout_conflict(fmt: str, model: Any, sd: Mapping[str, Any]) -> str | None:
    """A layout whose keys and shapes fit ``model`` but whose network computes something else.

    easyfsl's ``resnet18(big_kernel=True)`` has a 7×7/2 ``conv1`` with padding 1 and no max-pool:
    the paper stem's keys and shapes exactly, another network.
    """
    if fmt == "easyfsl" and getattr(model, "stem", None) == "imagenet":
        conv1 = next((v for k, v in sd.items() if k.split(".", 1)[-1] == "conv1.weight"), None)
        if conv1 is not None and tuple(conv1.shape[-2:]) == (7, 7):
            return ("an easyfsl ResNet-18 with a 7x7 conv1 is big_kernel=True (padding 1, no max-pool), not the "
                    "paper stem its shapes also fit; use --arch resnet18 --arch-kw stem=easyfsl-big")
    return None


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON types (scalars, lists, dicts); anything else becomes its ``repr`` (cut)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in list(value)[:50]]
    if depth < 3 and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:200]}
    if depth < 3 and isinstance(value, argparse.Namespace):
        return _plain(vars(value), depth)
    return repr(value)[:80]


def origin_meta(obj: Any) -> dict[str, Any]:
    """Provenance a foreign checkpoint carries, as plain JSON: RFS ``opt``, FEAT/timm ``args``,
    timm ``arch``/``epoch``/``metric`` (``{}`` when there is none)."""
    if not isinstance(obj, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name in ("opt", "args"):
        if isinstance(obj.get(name), (argparse.Namespace, Mapping)):
            out[name] = _plain(obj[name])
    for name in ("arch", "epoch", "metric", "version"):
        if isinstance(obj.get(name), (str, int, float)) and not isinstance(obj.get(name), bool):
            out[name] = obj[name]
    return out


def arch_hint(obj: Any, registered: list[str]) -> str | None:
    """The ``--arch`` a checkpoint says it was saved from, when it says so in a name we know.

    fewshot-bench metadata ``arch``; RFS ``opt.model`` when it is a registered name
    (``resnet12``, ``seresnet12``); timm ``train.py``'s ``arch`` → ``timm:<arch>``.
    """
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("fewshot_bench")
    if isinstance(meta, Mapping) and isinstance(meta.get("arch"), str):
        return meta["arch"]
    opt = obj.get("opt")
    model = getattr(opt, "model", None) if isinstance(opt, argparse.Namespace) else None
    if isinstance(model, str) and model.lower() in registered:
        return model.lower()
    if isinstance(obj.get("arch"), str) and {"state_dict", "version"} <= set(obj):
        return f"timm:{obj['arch']}"
    return None
