"""The per-epoch JSONL training log: one JSON object per line, one line per finished epoch.

Fields (``None`` where the loss has no such term or no validation ran that epoch):

``epoch``           1-based epoch number
``loss``            mean over the epoch's steps of the λ-weighted total that was backpropagated
``ce``              mean unweighted cross-entropy term
``contrastive``     mean unweighted contrastive term
``lr``              learning rate of the epoch's last step
``grad_norm``       mean over steps of the total L2 norm of all gradients before the step
                    (after unscaling under AMP, before any weight decay)
``images_per_s``    training images (global batch × steps) per second of training time
``seconds``         training time of the epoch (validation excluded)
``val_accuracy``    ProtoNet accuracy on the fixed val episodes, when validated this epoch
``val_ci95``        its 95 % confidence half-width
``val_seconds``     time spent validating

The file is rewritten whole (temp file + rename) after every epoch from the records kept in the
resume state, so it never holds a torn line and, after ``--resume``, holds exactly the epochs of
the run that produced the checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write

__all__ = ["LOG_FIELDS", "format_record", "read_log", "write_log"]

LOG_FIELDS = ("epoch", "loss", "ce", "contrastive", "lr", "grad_norm", "images_per_s", "seconds")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_log(path: str | Path, records: list[dict]) -> Path:
    """Write ``records`` as JSON lines to ``path`` atomically; return the path."""
    path = Path(path)
    text = "".join(json.dumps({k: _clean(v) for k, v in r.items()}, sort_keys=False) + "\n" for r in records)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def format_record(record: dict) -> str:
    """One readable line for a log record (what ``fewshot-bench finetune`` prints after each epoch), e.g.
    ``seed 0 epoch 3/10  loss 1.2345 (ce 1.1000, contrastive 2.3456)  lr 1.00e-03  val 45.20 ± 1.10 %  12.3 s``.

    Uses the fields of the module docstring plus the optional ``seed`` and ``epochs`` of the
    ``log`` callback of :func:`~fewshot_bench.train.finetune`.
    """
    epoch = f"epoch {record['epoch']}" + (f"/{record['epochs']}" if record.get("epochs") else "")
    parts = [(f"seed {record['seed']} " if record.get("seed") is not None else "") + epoch]
    terms = [f"{k} {record[k]:.4f}" for k in ("ce", "contrastive") if record.get(k) is not None]
    parts.append(f"loss {record['loss']:.4f}" + (f" ({', '.join(terms)})" if terms else ""))
    parts.append(f"lr {record['lr']:.2e}")
    if record.get("val_accuracy") is not None:
        parts.append(f"val {100 * record['val_accuracy']:.2f} ± {100 * (record.get('val_ci95') or 0):.2f} %")
    seconds = record.get("seconds", 0.0) + (record.get("val_seconds") or 0.0)
    parts.append(f"{seconds:.1f} s ({record.get('images_per_s', 0.0):.0f} img/s)")
    return "  ".join(parts)


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSONL log written by :func:`write_log`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
