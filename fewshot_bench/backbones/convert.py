"""``fewshot-bench convert``: re-save a checkpoint the safe loader refuses as a plain state dict.

The one place in fewshot-bench that unpickles with ``weights_only=False``. A whole pickled
``nn.Module`` (``torch.save(model)``, as the original ProtoNet code saves ``best_model.pt``)
or a checkpoint holding other Python objects can only be read by running the code it names,
so this refuses unless the caller vouches for the file (``trust_source=True``,
``--trust-source``), and writes a plain ``{name: tensor}`` file that every other command
then loads with ``weights_only=True``. See SECURITY.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write, atomic_write_bytes
from ..errors import CheckpointError, ConfigError
from .checkpoint import EMA_KEYS, NESTING_KEYS, _check_file, _is_safetensors, _locate, _read_safetensors

__all__ = ["convert_checkpoint"]



def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, trust_source: bool = False) -> Path:
    """Re-save a checkpoint the safe loader refuses (a whole pickled ``nn.Module``, custom objects)
    as a plain ``{name: tensor}`` state dict; return ``dst``.

    This unpickles ``src`` with ``weights_only=False``, which runs whatever code the file
    names: it refuses unless ``trust_source=True``. The state dict is taken from an
    ``nn.Module`` (``torch.save(model)``), a module or state dict nested in a dict, or a plain
    state dict; its key names are kept (prefixes are stripped when it is loaded). ``dst`` is
    written atomically, with safetensors when it ends in ``.safetensors``, else ``torch.save``.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        raise CheckpointError(f"SRC {src} is a folder; pass the checkpoint file inside it")
    if not src.exists():
        raise CheckpointError(f"SRC {src} not found; check the path of the file to convert")
    if dst.is_dir():
        raise ConfigError(f"--out {dst} is a folder; give a file name such as {dst / (src.stem + '.safetensors')}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"--out {dst} is the source file; write the converted state dict to another path")
    if not trust_source:
        raise CheckpointError(
            f"converting {src} unpickles it with weights_only=False, which runs any code the file holds; "
            f"pass --trust-source only if you trust where {src.name} came from"
        )
    _check_file(src)
    if _is_safetensors(src):
        obj: Any = _read_safetensors(src)
    else:
        try:
            obj = torch.load(src, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            raise CheckpointError(
                f"cannot convert {src}: unpickling it needs the Python module {exc.name!r}, which is not "
                f"importable here; run the command where the code that saved it is importable "
                f"(e.g. PYTHONPATH=path/to/its/repository)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - arbitrary files fail in arbitrary ways
            first = str(exc).splitlines()[0][:100] if str(exc) else ""
            raise CheckpointError(
                f"cannot convert {src}: torch.load failed ({type(exc).__name__}{': ' + first if first else ''}); "
                f"is it a PyTorch checkpoint?"
            ) from None
    sd = _module_tensors(obj, src)
    if dst.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(dst, save(sd, metadata={"converted_from": src.name}))
    else:
        with atomic_write(dst, "wb") as f:
            torch.save(sd, f)
    return dst


def _module_tensors(obj: Any, src: Path) -> dict[str, torch.Tensor]:
    """The state dict of an unpickled object: an ``nn.Module``, one nested in a dict, or tensors."""
    if isinstance(obj, Mapping):
        for key in (*NESTING_KEYS, *EMA_KEYS):
            if isinstance(obj.get(key), nn.Module):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        raw: Mapping[str, Any] = obj.state_dict()
    else:
        raw = _locate(obj, use_ema=False, path=src).sd
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"cannot convert {src}: it holds no tensors")
    return sd
