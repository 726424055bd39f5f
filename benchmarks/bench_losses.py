"""Time the training losses and check SupCon against pytorch-metric-learning, in one run (not a test).

    python benchmarks/bench_losses.py --batch-sizes 128 512 2048 --json bench_losses.json

For every batch size B of ``--batch-sizes`` and class count of ``--classes``: ``z (B, --dim)``
standard normal, ``labels (B,)`` uniform over the classes and, for CLCE, ``logits (B, classes)``
standard normal, all from a ``torch.Generator`` seeded with ``--seed`` (+ B + classes).

Agreement (float64): ours ``create_loss("supcon", temperature=tau)(None, z, labels).contrastive``
and, per anchor, ``supcon_loss(z, labels, tau, reduction="none")`` against pytorch-metric-learning's
``losses.SupConLoss(temperature=tau)`` with its default reducer (``AvgNonZeroReducer``) and, per
anchor, with ``reducers.DoNothingReducer()``. Its conventions (read from pml 2.9.0's source):
``CosineSimilarity`` (L2-normalised rows, ``s = z z^T``) divided by ``tau`` -- the same as ours, and
no ``tau / base_temperature`` factor (which SupContrast has); the row max, diagonal included, is
subtracted before the log-softmax (a shift that cancels); the denominator runs over positives and
negatives, i.e. every row but the anchor, as ours; anchor *i*'s loss is
``-sum_p log_prob_ip / (|P(i)| + tiny)``, so equal to ours for anchors with a positive and 0 (ours:
NaN with ``reduction="none"``) for anchors without. The batch loss is the mean over anchors whose
loss is > 0 -- the anchors with a positive, as ours, unless an anchor's loss rounds to 0 (one
positive outweighs every other row by > ~37 nats in float64, ~17 in float32; needs 2 / tau above
that). pml returns 0 for a batch without any positive pair (ours: 0 too) or without any negative
pair, e.g. one class (ours: the mean over the anchors, > 0).
Checked: the per-anchor values on anchors with a positive, pml's zeros elsewhere, the batch loss
and the gradient w.r.t. ``z`` (``rtol=--rtol``; gradients also ``atol = rtol * max|grad|``).

Timing (float32, ``--device``): median of ``--repeats`` calls after one warm-up, each of a
forward (inputs requiring grad, as in a training step) and of a forward + ``backward()``:
ours SupCon, LACLN, CLCE (``lam=0.9``, random logits) and H-SCL (``beta=1``), all at
``temperature=tau``, and pml's SupConLoss; each row also as a ratio to ours SupCon (for pml's row:
how much slower pml is). The loss objects are built once, outside the timed calls. ``--threads``
defaults to 1: with two threads on a loaded 2-core machine the times swing 5-50x. Exit status 1 if
an agreement check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import pandas as pd
import torch
from _common import command_line, timed

from fewshot_bench.train.losses import create_loss, supcon_loss


def make_batch(
    b: int, dim: int, n_classes: int, seed: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z (b, dim)``, ``labels (b,)`` int64 in ``[0, n_classes)``, ``logits (b, n_classes)``; seeded."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(n_classes, (b,), generator=g)
    logits = torch.randn(b, n_classes, generator=g, dtype=torch.float64)
    return z.to(device, dtype), labels.to(device), logits.to(device, dtype)


def import_pml():
    """pytorch-metric-learning's ``(losses, reducers, version)``, or ``None`` and the reason."""
    try:
        import pytorch_metric_learning
        from pytorch_metric_learning import losses, reducers
    except ImportError as e:
        return None, f"pytorch-metric-learning not importable ({e}); pip install pytorch-metric-learning"
    return (losses, reducers, pytorch_metric_learning.__version__), ""


def check_agreement(args: argparse.Namespace, b: int, n_classes: int, pml) -> dict:
    """SupCon of ours vs pml on one float64 batch: per anchor, batch loss, gradient."""
    losses, reducers, _ = pml
    z0, labels, _ = make_batch(b, args.dim, n_classes, args.seed + b + n_classes, torch.float64, "cpu")
    tau = args.temperature
    has_pos = (labels[:, None] == labels[None, :]).sum(1) > 1

    ours_anchor = supcon_loss(z0, labels, tau, reduction="none")
    pml_anchor = losses.SupConLoss(temperature=tau, reducer=reducers.DoNothingReducer())(z0, labels)
    pml_anchor = pml_anchor["loss"]["losses"]

    z_ours, z_pml = z0.clone().requires_grad_(), z0.clone().requires_grad_()
    ours = create_loss("supcon", temperature=tau)(None, z_ours, labels).contrastive
    peer = losses.SupConLoss(temperature=tau)(z_pml, labels)
    ours.backward()
    peer.backward()
    g_ours, g_pml = z_ours.grad, z_pml.grad

    def rel(a: torch.Tensor, b_: torch.Tensor) -> float:
        return float(((a - b_).abs() / b_.abs().clamp(min=1e-300)).max()) if a.numel() else 0.0

    anchors_ok = torch.allclose(ours_anchor[has_pos], pml_anchor[has_pos], rtol=args.rtol, atol=0.0)
    no_pos_ok = bool(ours_anchor[~has_pos].isnan().all() and (pml_anchor[~has_pos] == 0).all())
    batch_ok = torch.allclose(ours, peer, rtol=args.rtol, atol=0.0)
    grad_scale = float(g_pml.abs().max())
    grad_ok = torch.allclose(g_ours, g_pml, rtol=args.rtol, atol=args.rtol * grad_scale)
    return {
        "B": b, "classes": n_classes, "anchors_with_positive": int(has_pos.sum()),
        "ours": ours.item(), "pml": peer.item(),
        "anchor_max_rel_diff": rel(ours_anchor[has_pos], pml_anchor[has_pos]),
        "batch_rel_diff": rel(ours.detach()[None], peer.detach()[None]),
        "grad_max_diff_over_max_grad": float((g_ours - g_pml).abs().max()) / grad_scale,
        "agree": bool(anchors_ok and no_pos_ok and batch_ok and grad_ok),
    }  # fmt: skip


def median_time(fn, repeats: int, device: str) -> float:
    """Median wall time in seconds of ``repeats`` calls (``_common.timed`` one call at a time)."""
    return statistics.median(timed(fn, 1, device)[0] for _ in range(max(1, repeats)))


def time_losses(args: argparse.Namespace, b: int, n_classes: int, pml) -> list[dict]:
    """Forward and forward + backward medians of every contender on one float32 batch."""
    z0, labels, logits0 = make_batch(
        b, args.dim, n_classes, args.seed + b + n_classes, torch.float32, args.device
    )
    z, logits = z0.clone().requires_grad_(), logits0.clone().requires_grad_()
    tau = args.temperature
    supcon, lacln = create_loss("supcon", temperature=tau), create_loss("lacln", temperature=tau)
    clce, hscl = (
        create_loss("clce", lam=0.9, temperature=tau),
        create_loss("h-scl", temperature=tau, beta=1.0),
    )
    contenders = [
        ("supcon", "fewshot_bench", lambda: supcon(None, z, labels).total),
        ("lacln", "fewshot_bench", lambda: lacln(None, z, labels).total),
        ("clce", "fewshot_bench (random logits)", lambda: clce(logits, z, labels).total),
        ("h-scl", "fewshot_bench", lambda: hscl(None, z, labels).total),
    ]
    if pml is not None:
        losses, _, version = pml
        peer = losses.SupConLoss(temperature=tau).to(args.device)
        contenders.insert(1, ("supcon", f"pytorch-metric-learning {version}", lambda: peer(z, labels)))

    rows = []
    for loss_name, implementation, forward in contenders:

        def forward_backward():
            z.grad = logits.grad = None
            forward().backward()

        forward_backward()  # warm-up
        t_fwd = median_time(forward, args.repeats, args.device)
        t_bwd = median_time(forward_backward, args.repeats, args.device)
        rows.append(
            {"B": b, "classes": n_classes, "loss": loss_name, "implementation": implementation,
             "forward_ms": 1000 * t_fwd, "fwd_bwd_ms": 1000 * t_bwd}
        )  # fmt: skip
    ours = rows[0]
    for r in rows:
        r["fwd_vs_ours_supcon"] = r["forward_ms"] / ours["forward_ms"]
        r["fwd_bwd_vs_ours_supcon"] = r["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 2048], help="rows of z")
    p.add_argument("--classes", type=int, nargs="+", default=[64], help="class counts (e.g. 64 100)")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    p.add_argument("--temperature", type=float, default=0.1, help="tau of every loss")
    p.add_argument("--rtol", type=float, default=1e-5, help="agreement tolerance (float64)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steady under load; 0: torch's choice)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pml, why = import_pml()
    load_before = os.getloadavg()
    agreement, timings = [], []
    for b in args.batch_sizes:
        for n_classes in args.classes:
            if pml is not None:
                agreement.append(check_agreement(args, b, n_classes, pml))
            timings += time_losses(args, b, n_classes, pml)

    print(
        f"d={args.dim}, tau={args.temperature}, {args.repeats} repeats (median); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, device {args.device}, "
        f"load average before {load_before[0]:.1f}"
    )
    fmt = {"float_format": lambda v: f"{v:.3g}", "index": False}
    if pml is None:
        print(f"SKIP  agreement and pml rows: {why}")
    else:
        print("\nSupCon agreement, float64: ours vs pytorch-metric-learning SupConLoss")
        print(pd.DataFrame(agreement).to_string(**fmt))
        for a in agreement:
            print(
                f"{'PASS' if a['agree'] else 'FAIL'}  B={a['B']}, {a['classes']} classes: per-anchor SupCon, "
                f"batch loss and grad agree within rtol {args.rtol:g}"
            )
    print("\nTimes, float32, ms (median)")
    print(pd.DataFrame(timings).to_string(**fmt))
    if args.json:
        from fewshot_bench._io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "command": command_line("bench_losses.py", argv),
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "torch": torch.__version__,
                "pytorch_metric_learning": None if pml is None else pml[2],
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_before": load_before,
                "agreement": agreement,
                "timings": timings,
            },
        )
    return 0 if all(a["agree"] for a in agreement) else 1


if __name__ == "__main__":
    raise SystemExit(main())
