"""Checkpoint loading (forgiving about layout, strict about content, safe) and saving.

Loading (:func:`load_checkpoint`) unwraps the usual nestings (``state_dict``, ``model``,
``embedding``, ``params``, ``state``, EMA copies...) and strips the usual prefixes
(``module.``, ``_orig_mod.``, ``backbone.``, ``encoder.``, ``emb_func.``, ``model.``) as
timm's ``_helpers.py`` does, but accounts for **every** entry of the file: each tensor is
copied into the architecture or dropped by a named rule (:data:`~.formats.RULES`: classifier
head, optimizer state, training metadata...). Missing model keys, unexplained extra keys or
shape mismatches refuse the load with one line that names the count, the first keys and the
architecture (from the ``BACKBONES`` registry) or ``--arch-kw`` that would consume them;
``allow_partial=True`` loads what fits instead. The :class:`LoadReport` says what happened.

Reading is safe: ``torch.load(weights_only=True)`` with exactly one extra allowed global,
``argparse.Namespace`` (RFS ``opt``, FEAT/timm ``args``: a plain attribute bag whose
unpickling sets attributes and calls nothing), or ``safetensors`` for ``.safetensors``
files. A whole pickled ``nn.Module`` (``torch.save(model)``, e.g. the original ProtoNet) or
any other Python object is refused; :func:`~fewshot_bench.backbones.convert.convert_checkpoint`
(``fewshot-bench convert --trust-source``) re-saves such a file as a plain state dict, once,
for a source you trust.

Files written by :func:`save_checkpoint` hold ``{"state_dict": ..., "fewshot_bench": meta}``
with ``meta`` made of plain types, so they load with ``weights_only=True`` anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .._io import atomic_write
from ..errors import CheckpointError, ConfigError
from . import formats

__all__ = [
    "SAFE_GLOBALS",
    "LoadReport",
    "extract_state_dict",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]

#: the globals ``weights_only`` loading allows beyond torch's defaults, each with why it is safe:
#: ``argparse.Namespace`` -- RFS ``*_last.pth`` keep their options under ``opt``, FEAT and timm
#: ``train.py`` checkpoints under ``args``; unpickling one creates an empty Namespace and sets
#: its ``__dict__`` from already-safe values (strings, numbers, lists), calling no user code.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: nesting keys tried in order (EMA ones first when ``use_ema=True``)
NESTING_KEYS = (
    "state_dict", "model", "model_state_dict", "net", "network", "embedding", "params", "state",
    "encoder", "backbone",
)
EMA_KEYS = ("model_ema", "state_dict_ema", "ema", "params_ema")
#: prefixes stripped when that makes keys match the model
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "emb_func.", "model.")
#: the standard metadata keys (filled with ``None`` when not given)
META_KEYS = ("arch", "loss", "dataset", "epochs", "seed", "data_fingerprint")
_FIRST = 3  # keys quoted in a refusal
_JSON_KEYS = 20  # keys listed per group in LoadReport.to_json


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did with every entry of a checkpoint.

    format: the detected layout (:data:`~.formats.FORMATS`: ``rfs``, ``metaoptnet``, ``feat``...).
    nesting: the key path the state dict was found under (``"model"``), ``""`` if top-level.
    stripped: prefixes removed from checkpoint keys (``module.``, ``encoder.``...).
    consumed: number of tensors copied into the model.
    dropped: rule name → checkpoint entries that rule explains (not loaded).
    defaulted: rule name → model keys left at their initial value by a rule (``num-batches-tracked``).
    missing: model keys the checkpoint does not fill (a refusal unless ``allow_partial``).
    unexpected: checkpoint tensors no rule explains (a refusal unless ``allow_partial``).
    mismatched: ``(key, checkpoint shape, model shape)`` (a refusal unless ``allow_partial``).
    meta: the ``fewshot_bench`` metadata block, ``{}`` for foreign checkpoints.
    origin: provenance a foreign file carries (RFS ``opt``, FEAT/timm ``args``, timm ``arch``).
    partial: the load went through ``allow_partial`` with something missing, unexpected or mismatched.
    """

    format: str = "state-dict"
    nesting: str = ""
    stripped: list[str] = field(default_factory=list)
    consumed: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    defaulted: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    partial: bool = False

    @property
    def loaded(self) -> int:
        """Alias of :attr:`consumed`."""
        return self.consumed

    @property
    def ok(self) -> bool:
        """Every entry consumed or dropped by a rule, every model key filled."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: ``rfs format: 96 tensors loaded from 'model'; dropped 2 classifier-head,
        1 training-metadata; 0 missing, 0 unexpected``."""
        s = f"{self.format} format: {self.consumed} tensors loaded"
        if self.nesting:
            s += f" from {self.nesting!r}"
        if self.stripped:
            s += f" (stripped {', '.join(self.stripped)})"
        if self.dropped:
            s += "; dropped " + ", ".join(f"{len(v)} {rule}" for rule, v in self.dropped.items())
        if self.defaulted:
            s += "; left at init " + ", ".join(f"{len(v)} {rule}" for rule, v in self.defaulted.items())
        s += f"; {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        if self.mismatched:
            s += f", {len(self.mismatched)} shape mismatches"
        if self.partial:
            s += " (partial load, --allow-partial)"
        return s

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; key lists are cut to their first 20 (``count`` gives the length)."""

        def keys(items: list[str]) -> dict[str, Any]:
            return {"count": len(items), "keys": list(items[:_JSON_KEYS])}

        return {
            "format": self.format,
            "nesting": self.nesting,
            "stripped": list(self.stripped),
            "consumed": self.consumed,
            "dropped": {rule: keys(v) for rule, v in self.dropped.items()},
            "defaulted": {rule: keys(v) for rule, v in self.defaulted.items()},
            "missing": keys(self.missing),
            "unexpected": keys(self.unexpected),
            "mismatched": {
                "count": len(self.mismatched),
                "items": [{"key": k, "checkpoint": list(a), "model": list(b)}
                          for k, a, b in self.mismatched[:_JSON_KEYS]],
            },
            "meta": json.loads(json.dumps(self.meta, default=str)),
            "origin": json.loads(json.dumps(self.origin, default=str)),
            "partial": self.partial,
            "summary": self.summary(),
        }


# ------------------------------------------------------------------------------------------ reading


def _check_file(p: Path) -> None:
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} not found; check --checkpoint")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; pass the .pt/.pth/.safetensors file inside it")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-download or re-save it")


def _is_safetensors(p: Path) -> bool:
    if p.suffix.lower() == ".safetensors":
        return True
    with open(p, "rb") as f:  # 8-byte little-endian header size, then a JSON header
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 27)


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {p} is not a valid safetensors file ({first}); re-download it"
        ) from None


def _safe_globals() -> Any:
    ctx = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return ctx(list(SAFE_GLOBALS)) if ctx is not None else contextlib.nullcontext()


def _torch_load(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` (+ :data:`SAFE_GLOBALS`) or safetensors; failures → one line."""
    p = Path(path)
    _check_file(p)
    if _is_safetensors(p):
        return _read_safetensors(p)
    try:
        with _safe_globals():
            try:
                return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        hit = re.search(r"GLOBAL (\S+)", text) or re.search(r"[Uu]nsupported global:? (?:GLOBAL )?(\S+)", text)
        if hit:
            raise CheckpointError(_refuse_objects(p, hit.group(1).rstrip(".,"))) from None
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


def _convert_hint(p: Path) -> str:
    return f"fewshot-bench convert {p} --out {p.with_suffix('')}.state_dict.pt --trust-source"


def _refuse_objects(p: Path, first_global: str) -> str:
    """The one-line refusal of a file that pickles Python objects (names what it would import)."""
    names = _pickle_globals(p) or [first_global]
    if any(n.startswith(("torch.nn.modules.", "torch.nn.parallel.")) for n in names):
        own = [n for n in names if not n.startswith(("torch.", "collections.", "builtins."))]
        what = own[0] if own else next(n for n in names if n.startswith("torch.nn."))
        return (
            f"checkpoint {p} is a whole-module pickle (torch.save(model) of {what}), refused for safety: "
            f"unpickling it runs code named in the file (weights_only=True); if you trust its source, "
            f"convert it once to a plain state dict: {_convert_hint(p)}"
        )
    return (
        f"checkpoint {p} holds Python objects ({first_global}), refused for safety (weights_only=True); "
        f"if you trust its source, re-save its tensors: {_convert_hint(p)}"
    )


def _pickle_globals(p: Path) -> list[str]:
    """Globals the pickle in ``p`` would import, read with :mod:`pickletools` (nothing runs)."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            with open(p, "rb") as f:
                data = f.read(64 << 20)
        stream, out = io.BytesIO(data), []
        for _ in range(5):  # legacy files: magic number, protocol, sys info, object, storage keys
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        out.append(str(arg).replace(" ", "."))
                    elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                        strings.append(str(arg))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        out.append(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # noqa: BLE001 - raw storage bytes after the last pickle
                break
            if stream.tell() >= len(data):
                break
        return list(dict.fromkeys(out))
    except Exception:  # noqa: BLE001 - only used to word an error message
        return []


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


@dataclass
class _Found:
    sd: dict[str, torch.Tensor]
    nesting: str
    siblings: list[tuple[str, Any]]  # (dotted name, value) of every other entry on the way down
    picked_ema: bool


def _locate(obj: Any, *, use_ema: bool, path: Any) -> _Found:
    """Find the state dict in a loaded checkpoint, and everything next to it."""
    keys = (*EMA_KEYS, *NESTING_KEYS) if use_ema else (*NESTING_KEYS, *EMA_KEYS)

    def search(o: Any, trail: str, depth: int) -> _Found | None:
        if _is_state_dict(o):
            return _Found(dict(o), trail, [], False)
        if not isinstance(o, Mapping) or depth > 2:
            return None
        for k in keys:
            if k in o:
                found = search(o[k], f"{trail}.{k}" if trail else k, depth + 1)
                if found:
                    found.siblings += [(f"{trail}.{n}" if trail else str(n), v) for n, v in o.items() if n != k]
                    found.picked_ema = found.picked_ema or k in EMA_KEYS
                    return found
        # a state dict with some non-tensor entries mixed in (e.g. "epoch") at the top level
        tensors = {k: v for k, v in o.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if depth == 0 and tensors and len(tensors) >= len(o) // 2:
            return _Found(tensors, trail, [(str(n), v) for n, v in o.items() if n not in tensors], False)
        return None

    found = search(obj, "", 0)
    if found is None:
        what = (
            f"keys: {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"checkpoint {path} holds no state dict ({what}); expected a dict of tensors, "
            f"possibly under one of {', '.join(NESTING_KEYS + EMA_KEYS)}"
        )
    return found


def extract_state_dict(
    obj: Any, *, use_ema: bool = False, path: str | os.PathLike = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict in a loaded checkpoint; return it and its nesting path (``""``: top level)."""
    found = _locate(obj, use_ema=use_ema, path=path)
    return found.sd, found.nesting


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``fewshot_bench`` metadata of a checkpoint; ``{}`` for checkpoints from elsewhere."""
    obj = _torch_load(path, mmap=True)
    meta = obj.get("fewshot_bench") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


# ------------------------------------------------------------------------------------------ accounting


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


@dataclass
class _Accounting:
    usable: dict[str, torch.Tensor]
    stripped: list[str]
    dropped: dict[str, list[str]]
    defaulted: dict[str, list[str]]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def perfect(self) -> bool:
        return bool(self.usable) and not (self.missing or self.unexpected or self.mismatched)


def _account(sd: Mapping[str, torch.Tensor], own: Mapping[str, tuple[int, ...]]) -> _Accounting:
    """Match ``sd`` against a model's ``{key: shape}``: rename each key to its least-peeled form
    the model has (``module.encoder.x`` → ``x``), then consume, drop by rule, or report it."""
    renamed: dict[str, tuple[str, torch.Tensor]] = {}  # model-side name -> (stored name, tensor)
    stripped: list[str] = []
    leftovers: list[str] = []
    for k in sorted(sd, key=lambda k: k not in own):  # keys the model has verbatim win collisions
        new, removed = (k, []) if k in own else next(((r, rm) for r, rm in _peel(k) if r in own), (None, []))
        if new is None or new in renamed:
            leftovers.append(k)
            continue
        renamed[new] = (k, sd[k])
        stripped += [p for p in removed if p not in stripped]
    acc = _Accounting({}, stripped, {}, {}, [], [], [])
    for new, (_k, v) in renamed.items():
        if tuple(v.shape) == tuple(own[new]):
            acc.usable[new] = v
        else:
            acc.mismatched.append((new, tuple(v.shape), tuple(own[new])))
    order = {k: i for i, k in enumerate(sd)}
    for k in sorted(leftovers, key=order.__getitem__):
        rule = formats.key_rule(_bare(k))
        if rule:
            acc.dropped.setdefault(rule, []).append(k)
        else:
            acc.unexpected.append(k)
    for k in own:
        if k not in renamed:
            if k.endswith("num_batches_tracked"):
                acc.defaulted.setdefault("num-batches-tracked", []).append(k)
            else:
                acc.missing.append(k)
    return acc


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, allow_partial: bool = False, use_ema: bool = False,
    dry_run: bool = False,
) -> LoadReport:
    """Load the weights in ``path`` into ``model``, accounting for every entry; return a :class:`LoadReport`.

    Raises :class:`CheckpointError` (one line: counts, first keys, the ``--arch`` or
    ``--arch-kw`` that would fit) when a model key is missing, a checkpoint tensor is neither
    consumed nor dropped by a named rule, or a shape differs. ``allow_partial=True`` copies
    what fits instead and marks the report ``partial``; a checkpoint sharing no tensor with
    the model always fails. ``use_ema`` prefers EMA weights (``model_ema``, ``state_dict_ema``,
    ``ema``) when present. ``dry_run`` does the accounting (and the refusal) without copying any
    tensor, so ``model`` may live on the ``meta`` device (a report costs no weights in memory).
    """
    p = Path(path)
    obj = _torch_load(p)
    meta = obj.get("fewshot_bench") if isinstance(obj, Mapping) else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    found = _locate(obj, use_ema=use_ema, path=p)
    target = (
        model.module
        if isinstance(getattr(model, "module", None), nn.Module) and hasattr(model, "no_sync")
        else model
    )
    arch = getattr(model, "arch", None) or getattr(target, "arch", None) or type(target).__name__
    acc = _account(found.sd, _shapes(target))

    dropped = {rule: list(keys) for rule, keys in acc.dropped.items()}
    unexpected = list(acc.unexpected)
    for name, value in found.siblings:
        rule = formats.sibling_rule(name.rsplit(".", 1)[-1], value, ema_keys=EMA_KEYS, picked_ema=found.picked_ema)
        if rule:
            dropped.setdefault(rule, []).append(name)
        else:
            unexpected += list(formats.tensor_paths(value, name))
    report = LoadReport(
        format=formats.detect_format(obj, found.nesting, list(found.sd), suffix=p.suffix.lower(), arch=str(arch)),
        nesting=found.nesting,
        stripped=acc.stripped,
        dropped=dropped,
        defaulted=acc.defaulted,
        missing=acc.missing,
        unexpected=unexpected,
        mismatched=acc.mismatched,
        meta=meta,
        origin=formats.origin_meta(obj),
    )
    conflict = formats.layout_conflict(report.format, target, found.sd)
    if conflict:
        raise CheckpointError(f"checkpoint {p}: {conflict}")
    n_weights = sum(not k.endswith("num_batches_tracked") for k in acc.usable)  # BN counters alone load nothing
    if not n_weights or (not report.ok and not allow_partial):
        raise CheckpointError(_refusal(p, str(arch), report, found.sd, obj, n_usable=n_weights))
    if not dry_run:
        target.load_state_dict(acc.usable, strict=False)
    report.consumed = len(acc.usable)
    report.partial = not report.ok
    return report


# ------------------------------------------------------------------------------------------ refusals


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:_FIRST]) + (", ..." if len(keys) > _FIRST else "")


def _refusal(path: Path, arch: str, r: LoadReport, sd: Mapping[str, torch.Tensor], obj: Any, *, n_usable: int) -> str:
    parts = []
    if not n_usable and not r.mismatched:
        parts.append(f"no tensor in common (checkpoint has e.g. {next(iter(sd), '?')})")
    if r.missing:
        parts.append(f"{len(r.missing)} missing keys (e.g. {_first(r.missing)})")
    if r.unexpected:
        parts.append(f"{len(r.unexpected)} unexpected keys (e.g. {_first(r.unexpected)})")
    if r.mismatched:
        k, a, b = r.mismatched[0]
        parts.append(f"{len(r.mismatched)} shape mismatches (e.g. {k}: {list(a)} in checkpoint, {list(b)} in model)")
    hint = _suggest(arch, r, sd, obj)
    if n_usable:
        hint += " (or --allow-partial to load only what fits)"
    return f"checkpoint {path} ({r.format} format) does not fit --arch {arch}: {'; '.join(parts)}; {hint}"


_ARCH_SHAPES: dict[tuple[str, int, str], dict[str, tuple[int, ...]] | None] = {}


def _build_shapes(name: str, factory: Any, kw: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """``{key: shape}`` of ``factory(**kw)`` built on the meta device (no memory), ``None`` if it fails."""
    cache_key = (name, id(factory), json.dumps(kw, sort_keys=True, default=str))
    if cache_key not in _ARCH_SHAPES:
        shapes = None
        for extra in ({}, {"image_size": 84}):
            try:
                with torch.device("meta"):
                    shapes = _shapes(factory(**{**extra, **kw}))
                break
            except Exception:  # noqa: BLE001 - a factory that cannot build bare
                continue
        _ARCH_SHAPES[cache_key] = shapes
    return _ARCH_SHAPES[cache_key]


def _suggest(arch: str, r: LoadReport, sd: Mapping[str, torch.Tensor], obj: Any) -> str:
    """What to do: the ``--arch-kw`` (same architecture, other widths) or the registered
    architecture that consumes every key, else the one the file names, else the closest."""
    from . import BACKBONES

    if arch in BACKBONES and r.mismatched:
        kw = _infer_kwargs(arch, BACKBONES.get(arch), sd, r.mismatched)
        if kw:
            return f"the widths differ: use --arch {arch} {_kw_flags(kw)}"
    best, best_score = None, 0.5
    for name, factory in BACKBONES.items():
        if name == arch:
            continue
        shapes = _build_shapes(name, factory, {})
        if shapes is None:
            continue
        acc = _account(sd, shapes)
        if acc.perfect:
            return f"use --arch {name}, which consumes every key"
        if acc.mismatched and not (acc.missing or acc.unexpected):
            kw = _infer_kwargs(name, factory, sd, acc.mismatched)
            if kw:
                return f"use --arch {name} {_kw_flags(kw)}, which consumes every key"
        n_bad = len(acc.missing) + len(acc.unexpected) + len(acc.mismatched)
        score = len(acc.usable) / max(1, len(acc.usable) + n_bad)
        if score > best_score:
            best, best_score = name, score
    named = formats.arch_hint(obj, BACKBONES.list())
    if named and named != arch:
        return f"the file says it was saved from {named}: use --arch {named}"
    if best:
        return f"is it a {best} checkpoint? try --arch {best}"
    return "check --arch (see `fewshot-bench archs`)"


def _kw_flags(kw: Mapping[str, Any]) -> str:
    return " ".join(f"--arch-kw {k}={json.dumps(v, separators=(',', ':'))}" for k, v in kw.items())


def _infer_kwargs(
    arch: str, factory: Any, sd: Mapping[str, torch.Tensor], mismatched: list[tuple[str, tuple, tuple]]
) -> dict[str, Any] | None:
    """Integer / integer-tuple arguments of ``factory`` under which every shape fits (e.g. ``hidden=32``).

    The dimensions that differ map model values to checkpoint values (64 → 32); an argument
    whose default holds a mapped value is changed accordingly, and the result is verified.
    """
    mapping: dict[int, int] = {}
    for _k, a, b in mismatched:
        if len(a) != len(b):
            return None
        for m, c in zip(b, a):
            if m != c:
                if mapping.setdefault(m, c) != c:
                    return None
    cands: dict[str, Any] = {}
    for pname, param in inspect.signature(factory).parameters.items():
        d = param.default
        if isinstance(d, bool):
            continue
        if isinstance(d, int) and d in mapping:
            cands[pname] = mapping[d]
        elif (isinstance(d, (tuple, list)) and d and all(isinstance(v, int) and not isinstance(v, bool) for v in d)
              and any(v in mapping for v in d)):
            cands[pname] = [mapping.get(v, v) for v in d]
    if not cands:
        return None
    shapes = _build_shapes(arch, factory, cands)
    return cands if shapes is not None and _account(sd, shapes).perfect else None


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
