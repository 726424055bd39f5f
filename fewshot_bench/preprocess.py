"""Feature preprocessing: a composable chain applied to frozen features before a few-shot head.

A chain is written as steps joined by ``+`` and applied left to right::

    none                  no change
    l2n                   x / ||x||                                   (L2N)
    center                x - mu_base                                 (base-class mean)
    cl2n                  (x - mu_base) / ||x - mu_base||             (CL2N = center + l2n)
    power[:beta]          (x + 1e-6) ** beta, beta = 0.5 by default   (power transform)

e.g. ``power:0.5+l2n`` (PT-MAP's input), ``cl2n`` (SimpleShot's). ``mu_base (D,)`` is the mean
feature of the *base* (train) split of the same backbone, never of the novel classes scored.

Sources: L2N / CL2N from Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning", 2019, https://arxiv.org/abs/1911.04623 (Sec. 3.1); the power transform from
Hu et al., "Leveraging the Feature Distribution in Transfer-based Few-Shot Learning" (PT-MAP),
ICANN 2021, https://arxiv.org/abs/2006.03806 (Eq. 2: ``f(v) = (v + eps) ** beta``, eps = 1e-6 in
their code). The power transform needs non-negative features (ReLU outputs), as in the paper.

Every method declares the chain its paper applies (``FewShotMethod.preprocessing``);
``--preprocess`` replaces it for every method, and the chain used is recorded per result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import MethodError

__all__ = ["POWER_EPS", "Preprocessing", "Step", "parse_preprocessing"]

POWER_EPS = 1e-6  # PT-MAP's code: torch.pow(x + 1e-6, beta)
_NAMES = ("l2n", "center", "cl2n", "power")
_GRAMMAR = "steps joined by '+': none, l2n, center, cl2n, power or power:BETA (e.g. 'power:0.5+l2n')"


@dataclass(frozen=True)
class Step:
    """One step of a chain: ``name`` in ``l2n | center | cl2n | power``; ``beta`` for ``power``."""

    name: str
    beta: float | None = None

    @property
    def spec(self) -> str:
        return f"power:{self.beta:g}" if self.name == "power" else self.name

    def describe(self) -> str:
        return {"l2n": "L2N", "center": "centred on the base-class mean", "cl2n": "CL2N",
                "power": f"power transform (beta={self.beta:g})"}[self.name]


@dataclass(frozen=True)
class Preprocessing:
    """A chain of :class:`Step`; call it on support and query features of one batch of episodes."""

    steps: tuple[Step, ...] = ()

    @property
    def spec(self) -> str:
        """Canonical text, parseable by :func:`parse_preprocessing` (``"none"`` for the empty chain)."""
        return "+".join(s.spec for s in self.steps) or "none"

    @property
    def needs_base_mean(self) -> bool:
        return any(s.name in ("center", "cl2n") for s in self.steps)

    def describe(self) -> str:
        """Human text for table captions, e.g. ``"power transform (beta=0.5), then L2N"``."""
        return ", then ".join(s.describe() for s in self.steps) or "none"

    def __call__(self, x: torch.Tensor, base_mean: Any = None) -> torch.Tensor:
        """Apply the chain to features ``(..., D)``; ``base_mean (D,)`` for ``center``/``cl2n``."""
        for step in self.steps:
            if step.name == "power":
                if bool((x < 0).any()):
                    raise MethodError(
                        f"preprocessing {self.spec!r}: the power transform needs non-negative features "
                        f"(ReLU outputs), found a minimum of {float(x.min()):.3g}; drop 'power' from the chain"
                    )
                x = (x + POWER_EPS).pow(step.beta)
            if step.name in ("center", "cl2n"):
                x = x - _base_mean(base_mean, x, self.spec)
            if step.name in ("l2n", "cl2n"):
                x = F.normalize(x, dim=-1)
        return x


def parse_preprocessing(spec: str | Preprocessing | None) -> Preprocessing:
    """``"power:0.5+l2n"`` -> :class:`Preprocessing`; ``None``/``"none"``/``""`` -> the empty chain."""
    if isinstance(spec, Preprocessing):
        return spec
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return Preprocessing()
    steps = []
    for token in str(spec).lower().replace(" ", "").split("+"):
        name, _, arg = token.partition(":")
        if name not in _NAMES or (arg and name != "power"):
            raise MethodError(f"preprocessing {spec!r}: unknown step {token!r}; use {_GRAMMAR}")
        beta = 0.5 if name == "power" else None
        if arg:
            try:
                beta = float(arg)
            except ValueError:
                raise MethodError(f"preprocessing {spec!r}: power needs a number, got {arg!r}") from None
        if beta is not None and not 0 < beta <= 1:
            raise MethodError(f"preprocessing {spec!r}: power beta must be in (0, 1], got {beta:g}")
        steps.append(Step(name, beta))
    return Preprocessing(tuple(steps))


def _base_mean(base_mean: Any, x: torch.Tensor, spec: str) -> torch.Tensor:
    if base_mean is None:
        raise MethodError(
            f"preprocessing {spec!r} needs base_mean, the mean feature of the train (base) split (D,); "
            "the CLI computes it from the train split's cached features"
        )
    mean = torch.as_tensor(base_mean).to(x)
    if mean.shape != x.shape[-1:]:
        raise MethodError(
            f"base_mean has shape {tuple(mean.shape)} but support has {x.shape[-1]} features; "
            "compute it from the train split of the same backbone"
        )
    return mean
