"""Checkpoint loading (forgiving, explicit, safe) and saving (with metadata).

Loading follows ``timm/models/_helpers.py``: ``torch.load(weights_only=True)`` (no code in a
file ever runs), the usual nestings are unwrapped, ``module.`` / ``_orig_mod.`` / ``backbone.`` /
``encoder.`` prefixes are stripped when that makes keys match, classifier heads are ignored,
and a :class:`LoadReport` lists what did not match instead of failing silently.

Files written by :func:`save_checkpoint` hold ``{"state_dict": ..., "fewshot_bench": meta}``
with ``meta`` made of plain types, so they load with ``weights_only=True`` anywhere.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .._io import atomic_write
from ..errors import CheckpointError, ConfigError

__all__ = ["LoadReport", "load_checkpoint", "read_checkpoint_meta", "save_checkpoint", "extract_state_dict"]

#: nesting keys tried in order (EMA ones first when ``use_ema=True``)
NESTING_KEYS = ("state_dict", "model", "net", "network", "embedding", "params", "encoder", "backbone")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
#: prefixes stripped when that makes more keys match the model
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.")
#: first key components of classifier heads, ignored (and reported) when the model lacks them
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "cls_head.", "linear.")
#: the standard metadata keys (filled with ``None`` when not given)
META_KEYS = ("arch", "loss", "dataset", "epochs", "seed", "data_fingerprint")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    missing: model keys the checkpoint lacks (left at their initial values).
    unexpected: checkpoint keys the model lacks (besides classifier heads).
    meta: the ``fewshot_bench`` metadata block, ``{}`` for foreign checkpoints.
    ignored: classifier-head keys dropped (``fc.``, ``head.``, ``classifier.``...).
    mismatched: ``(key, checkpoint shape, model shape)`` for keys of the wrong shape.
    nesting: the key path the state dict was found under (``"model_ema"``), ``""`` if top-level.
    stripped: prefixes removed from checkpoint keys.
    loaded: number of tensors copied into the model.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    nesting: str = ""
    stripped: list[str] = field(default_factory=list)
    loaded: int = 0

    def summary(self) -> str:
        """One line for logs: ``loaded 62 tensors from 'model' (stripped module.); ignored 2 head keys``."""
        s = f"loaded {self.loaded} tensors from {self.nesting or 'top level'!r}"
        if self.stripped:
            s += f" (stripped {', '.join(self.stripped)})"
        for what, items in (
            ("head keys ignored", self.ignored),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if items:
                s += f"; {len(items)} {what}"
        return s


# ------------------------------------------------------------------------------------------ reading


def _torch_load(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a one-line CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} not found; check --checkpoint")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; pass the .pt/.pth file inside it")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-download or re-save it")
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        hit = re.search(r"GLOBAL (\S+)", text) or re.search(
            r"[Uu]nsupported global:? (?:GLOBAL )?(\S+)", text
        )
        if hit:
            raise CheckpointError(
                f"checkpoint {p} holds Python objects ({hit.group(1).rstrip('.,')}), refused for safety "
                f"(weights_only=True); if you trust its source, re-save only its tensors: "
                f"torch.save(model.state_dict(), 'clean.pt')"
            ) from None
        raise CheckpointError(
            f"checkpoint {p} is not a PyTorch checkpoint (unreadable pickle); "
            f"re-download it or re-save it with torch.save"
        ) from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        # (EOFError, RuntimeError, BadZipFile, IndexError from a text file, UnicodeDecodeError, ...)
        raise CheckpointError(
            f"checkpoint {p} is not a PyTorch checkpoint or is truncated ({_describe_bytes(p, exc)}); "
            f"re-download it or re-save it with torch.save"
        ) from None


def _describe_bytes(p: Path, exc: BaseException) -> str:
    """What the file looks like, from its first bytes, for the error message."""
    with open(p, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive torch cannot read: truncated or damaged"
    if head[:1] == b"\x80":
        return "a pickle that ends early or holds no checkpoint"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return "an HTML page, probably a failed download"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"unknown binary content; torch said: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def extract_state_dict(
    obj: Any, *, use_ema: bool = False, path: str | os.PathLike = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict in a loaded checkpoint; return it and its nesting path (``""``: top level)."""
    keys = (*EMA_KEYS, *NESTING_KEYS) if use_ema else (*NESTING_KEYS, *EMA_KEYS)

    def search(o: Any, trail: str, depth: int) -> tuple[dict[str, torch.Tensor], str] | None:
        if _is_state_dict(o):
            return dict(o), trail
        if not isinstance(o, Mapping) or depth > 2:
            return None
        for k in keys:
            if k in o:
                found = search(o[k], f"{trail}.{k}" if trail else k, depth + 1)
                if found:
                    return found
        # a state dict with some non-tensor entries mixed in (e.g. "epoch") at the top level
        tensors = {k: v for k, v in o.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if depth == 0 and len(tensors) >= max(1, len(o) // 2):
            return tensors, trail
        return None

    found = search(obj, "", 0)
    if found is None:
        what = (
            f"keys: {', '.join(map(str, list(obj)[:8]))}"
            if isinstance(obj, Mapping)
            else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"checkpoint {path} holds no state dict ({what}); expected a dict of tensors, "
            f"possibly under one of {', '.join(NESTING_KEYS + EMA_KEYS)}"
        )
    return found


def _peel(key: str) -> list[tuple[str, list[str]]]:
    """``key`` with known prefixes removed one at a time: ``[(rest, removed), ...]``."""
    out, removed = [], []
    while (p := next((p for p in PREFIXES if key.startswith(p)), None)) is not None:
        key, removed = key[len(p) :], [*removed, p]
        out.append((key, removed))
    return out


def _bare(key: str) -> str:
    """``key`` with every known prefix removed."""
    peeled = _peel(key)
    return peeled[-1][0] if peeled else key


def _strip_prefixes(
    sd: dict[str, torch.Tensor], model_keys: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename each key to its least-peeled form that the model has (``module.backbone.x`` → ``x``).

    Keys the model already has are kept (and win collisions); keys no peeling makes match
    are kept as they are (they end up unexpected or ignored).
    """
    out: dict[str, torch.Tensor] = {}
    stripped: list[str] = []
    for k in sorted(sd, key=lambda k: k not in model_keys):
        new, removed = k, []
        if k not in model_keys:
            new, removed = next(((r, rm) for r, rm in _peel(k) if r in model_keys), (k, []))
        if new in out:
            new, removed = k, []
        out[new] = sd[k]
        stripped += [p for p in removed if p not in stripped]
    return out, stripped


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``fewshot_bench`` metadata of a checkpoint; ``{}`` for checkpoints from elsewhere."""
    obj = _torch_load(path, mmap=True)
    meta = obj.get("fewshot_bench") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, strict: bool = True, use_ema: bool = False
) -> LoadReport:
    """Load the weights in ``path`` into ``model``; return a :class:`LoadReport`.

    ``strict`` raises :class:`CheckpointError` when backbone keys are missing or have the
    wrong shape (classifier heads and unexpected extras never fail a load; read the report).
    Non-strict loads whatever fits, but a checkpoint sharing no key with the model always
    fails. ``use_ema`` prefers EMA weights (``model_ema``, ``state_dict_ema``, ``ema``) when present.
    """
    obj = _torch_load(path)
    meta = obj.get("fewshot_bench") if isinstance(obj, Mapping) else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    sd, nesting = extract_state_dict(obj, use_ema=use_ema, path=path)
    target = (
        model.module
        if isinstance(getattr(model, "module", None), nn.Module) and hasattr(model, "no_sync")
        else model
    )
    own = target.state_dict()
    sd, stripped = _strip_prefixes(sd, set(own))

    report = LoadReport(meta=meta, nesting=nesting, stripped=stripped)
    usable: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in own:
            if tuple(v.shape) == tuple(own[k].shape):
                usable[k] = v
            else:
                report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        elif _bare(k).startswith(HEAD_PREFIXES):
            report.ignored.append(k)
        else:
            report.unexpected.append(k)
    # BatchNorm counters are absent from very old checkpoints; harmless.
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]

    arch = getattr(model, "arch", None) or type(target).__name__
    if not usable or (strict and (report.missing or report.mismatched)):
        raise CheckpointError(_misfit_message(path, arch, report, meta, sd, len(usable)))
    target.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def _misfit_message(path: Any, arch: str, r: LoadReport, meta: dict, sd: dict, n_ok: int) -> str:
    parts = []
    if r.missing:
        parts.append(f"{len(r.missing)} missing keys (e.g. {r.missing[0]})")
    if r.mismatched:
        k, a, b = r.mismatched[0]
        parts.append(
            f"{len(r.mismatched)} shape mismatches (e.g. {k}: {list(a)} in checkpoint, {list(b)} in model)"
        )
    if not n_ok:
        parts.append(f"no key in common (checkpoint has e.g. {next(iter(sd), '?')})")
    guess = meta.get("arch") or _guess_arch(set(sd), exclude=arch)
    hint = f"; is it a {guess} checkpoint?" if guess else "; check --arch"
    return f"checkpoint {path} does not fit --arch {arch}: {', '.join(parts)}{hint}"


def _guess_arch(keys: set[str], exclude: str) -> str | None:
    """The registered architecture whose parameter names best overlap ``keys`` (built on the meta device)."""
    from . import BACKBONES

    best, best_score = None, 0.5
    for name, factory in BACKBONES.items():
        if name == exclude:
            continue
        try:
            with torch.device("meta"):
                names = set(factory().state_dict())
        except Exception:  # pragma: no cover - a factory that cannot build bare
            continue
        score = len(names & {_bare(k) for k in keys}) / max(
            1, len(names | {k for k in keys if not _bare(k).startswith(HEAD_PREFIXES)})
        )
        if score > best_score:
            best, best_score = name, score
    return best


# ------------------------------------------------------------------------------------------ writing

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj: Any, where: str) -> Any:
    """Return ``obj`` with tuples as lists; refuse anything ``weights_only`` loading could not read back."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_check_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"checkpoint metadata {where}: keys must be strings, got {k!r}")
            out[k] = _check_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return obj.item()
    raise ConfigError(
        f"checkpoint metadata {where} is a {type(obj).__name__}; use str, int, float, bool, list or dict"
    )


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"state_dict": ..., "fewshot_bench": meta}`` atomically; return the path.

    ``meta`` always holds ``arch`` (default: ``model.arch``), ``loss``, ``dataset``,
    ``epochs``, ``seed``, ``data_fingerprint`` (``None`` when not given) and
    ``fewshot_bench_version``, plus anything else given. Wrappers (DDP ``module``,
    ``torch.compile``'s ``_orig_mod``) are unwrapped so keys are the plain model's.
    """
    target = model
    while True:
        inner = getattr(target, "_orig_mod", None) or (
            getattr(target, "module", None) if hasattr(target, "no_sync") else None
        )
        if not isinstance(inner, nn.Module):
            break
        target = inner
    full: dict[str, Any] = {k: None for k in META_KEYS}
    full["arch"] = getattr(model, "arch", None) or getattr(target, "arch", None)
    full.update(_check_plain(dict(meta or {}), "meta"))
    full["fewshot_bench_version"] = __version__
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in target.state_dict().items()}
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"state_dict": state, "fewshot_bench": full}, f)
    return path
