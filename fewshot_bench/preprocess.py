"""Feature preprocessing: a composable chain applied to frozen features before a few-shot head.

A chain is written as steps joined by ``+`` and applied left to right::

    none                  no change
    l2n                   x / ||x||                                   (L2N)
    center                x - mu_base                                 (base-class mean)
    cl2n                  (x - mu_base) / ||x - mu_base||             (CL2N = center + l2n)
    power[:beta]          (x + 1e-6) ** beta, beta = 0.5 by default   (power transform)

e.g. ``power:0.5+l2n`` (PT-MAP's input), ``cl2n`` (SimpleShot's). ``mu_base (D,)`` is the mean
feature of the *base* (train) split of the same backbone, never of the novel classes scored, taken
after the steps that come before the centring step (:meth:`Preprocessing.base_mean_from`): for
``power:0.5+cl2n`` it is the mean of the power-transformed base features, so centring subtracts a
mean of the same scale. A chain centres at most once (``center`` or ``cl2n``).

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

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MethodError

__all__ = ["GRAMMAR", "POWER_EPS", "Preprocessing", "Step", "parse_preprocessing"]

POWER_EPS = 1e-6  # PT-MAP's code: torch.pow(x + 1e-6, beta)
_NAMES = ("l2n", "center", "cl2n", "power")
GRAMMAR = "steps joined by '+': none, l2n, center, cl2n, power or power:BETA (e.g. 'power:0.5+l2n')"


@dataclass(frozen=True)
class Step:
    """One step of a chain: ``name`` in ``l2n | center | cl2n | power``; ``beta`` for ``power``."""

    name: str
    beta: float | None = None

    @property
    def spec(self) -> str:
        return f"power:{self.beta:g}" if self.name == "power" else self.name

    def describe(self) -> str:
        if self.name == "power":
            return f"power transform (beta={self.beta:g})"
        return {"l2n": "L2N", "center": "centred on the base-class mean", "cl2n": "CL2N (base-class mean)"}[self.name]


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
        """Human text for table captions, e.g. ``"power transform (beta=0.5), then L2N"``,
        ``"CL2N (base-class mean)"``; ``"none (features as extracted)"`` for the empty chain."""
        return ", then ".join(s.describe() for s in self.steps) or "none (features as extracted)"

    def base_mean_from(self, base_features: Any, chunk: int = 8192) -> np.ndarray:
        """``mu_base (D,)`` float64 for this chain from the base (train) split's features ``(N, D)``:
        the mean of the features after the steps before the centring step (the raw mean for
        ``cl2n`` or ``center`` first, as in SimpleShot). Read in chunks of ``chunk`` rows (memmaps)."""
        if not self.needs_base_mean:
            raise MethodError(f"preprocessing {self.spec!r} does not centre; it needs no base_mean")
        prefix = Preprocessing(self.steps[: next(i for i, s in enumerate(self.steps)
                                                 if s.name in ("center", "cl2n"))])
        n = len(base_features)
        if n == 0:
            raise MethodError(f"preprocessing {self.spec!r}: the base (train) split has no features to average")
        if not prefix.steps:
            return np.asarray(base_features, dtype=np.float64).mean(0)
        out = np.empty(np.shape(base_features), dtype=np.float64)
        for start in range(0, n, chunk):
            x = torch.from_numpy(np.asarray(base_features[start:start + chunk], dtype=np.float64))
            out[start:start + chunk] = prefix(x).numpy()
        return out.mean(0)

    def __call__(self, x: torch.Tensor, base_mean: Any = None) -> torch.Tensor:
        """Apply the chain to features ``(..., D)``; ``base_mean (D,)`` for ``center``/``cl2n``."""
        for step in self.steps:
            if step.name == "power":
                _check_non_negative(x, self.spec)
                x = (x + POWER_EPS).pow_(step.beta)  # in place on the new tensor: bit-identical to pow
            if step.name in ("center", "cl2n"):
                x = x - _base_mean(base_mean, x, self.spec)
            if step.name in ("l2n", "cl2n"):
                x = F.normalize(x, dim=-1)
        return x


def _check_non_negative(x: torch.Tensor, spec: str) -> None:
    """Refuse negative features before the power transform (NaNs pass through, as in every step)."""
    if not x.numel() or bool(x.amin() >= 0):  # one reduction, no (..., D) bool temporary
        return
    negative = x[x < 0]  # amin was negative, or NaN: look past the NaNs
    if negative.numel():
        raise MethodError(
            f"preprocessing {spec!r}: the power transform needs non-negative features "
            f"(ReLU outputs), found a minimum of {float(negative.min()):.3g}; drop 'power' from the chain"
        )


def parse_preprocessing(spec: str | Preprocessing | None, *, what: str = "preprocessing") -> Preprocessing:
    """``"power:0.5+l2n"`` -> :class:`Preprocessing`; ``None``/``"none"``/``""`` -> the empty chain.

    Raises :class:`~fewshot_bench.errors.MethodError` naming ``what`` (e.g. ``"--preprocess"``)
    and the grammar for an unknown step, a bad beta, or two centring steps.
    """
    if isinstance(spec, Preprocessing):
        return spec
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return Preprocessing()
    steps = []
    for token in str(spec).lower().replace(" ", "").split("+"):
        name, _, arg = token.partition(":")
        if name not in _NAMES or (arg and name != "power"):
            raise MethodError(f"{what} {spec!r}: unknown step {token!r}; use {GRAMMAR}")
        beta = 0.5 if name == "power" else None
        if arg:
            try:
                beta = float(arg)
            except ValueError:
                raise MethodError(f"{what} {spec!r}: power needs a number, got {arg!r}; use {GRAMMAR}") from None
        if beta is not None and not 0 < beta <= 1:
            raise MethodError(f"{what} {spec!r}: power beta must be in (0, 1], got {beta:g}; use {GRAMMAR}")
        steps.append(Step(name, beta))
    if sum(s.name in ("center", "cl2n") for s in steps) > 1:
        raise MethodError(f"{what} {spec!r}: centres twice; a chain takes one 'center' or 'cl2n' ({GRAMMAR})")
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
