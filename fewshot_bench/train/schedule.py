"""The learning-rate schedule of fine-tuning: linear warm-up, then cosine decay, per step.

For ``total`` optimisation steps of which the first ``warmup`` warm up, step ``t`` (counted
from 0 over the whole run, not per epoch) uses ``lr * lr_factor(t, total, warmup)``::

    t <  warmup:  (t + 1) / warmup                                   (linear, reaches 1 at t = warmup - 1)
    t >= warmup:  0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))   (cosine from 1 towards 0)

The last step's factor is ``0.5 * (1 + cos(pi * (n - 1) / n))`` with ``n = total - warmup``:
small but not zero, so no step is wasted. This is SGDR's cosine annealing without restarts
(Loshchilov & Hutter, ICLR 2017, Eq. 5 with η_min = 0), evaluated per step as in
``torch.optim.lr_scheduler.CosineAnnealingLR``; the warm-up is Goyal et al. (2017)'s linear
ramp. The loop sets the learning rate of every parameter group before each step, so a
resumed run continues the schedule exactly.

>>> [round(lr_factor(t, 6, 2), 6) for t in range(6)]
[0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]
"""

from __future__ import annotations

import math

__all__ = ["lr_factor", "lr_factors"]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def lr_factors(total: int, warmup: int) -> list[float]:
    """The factor of every step of a run: ``[lr_factor(t, total, warmup) for t in range(total)]``."""
    return [lr_factor(t, total, warmup) for t in range(total)]
