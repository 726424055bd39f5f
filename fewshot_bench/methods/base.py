"""The few-shot method contract, its single input-validation path and the ``METHODS`` registry.

A method maps a batch of episodes to class scores::

    support (E, N*K, D) float, support_labels (E, N*K) int64 in 0..N-1, query (E, Q, D) float
        -> scores (E, Q, N) float, on the tensors' device; argmax over the last axis predicts.

Subclasses implement :meth:`FewShotMethod.batch_scores` (batched over episodes) or, more simply,
:meth:`FewShotMethod.episode_scores` (one episode; the base class loops). Inputs reach them
validated: tensors on one device, float32/float64 features, int64 labels that cover every class
``0..N-1`` in every episode. ``__init__`` only stores hyper-parameters (the scikit-learn habit).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodError
from ..preprocess import Preprocessing, parse_preprocessing
from ..registry import Registry, init_param_names

__all__ = [
    "FewShotMethod",
    "METHODS",
    "class_means",
    "cosine_scores",
    "neg_sq_euclidean",
    "one_hot",
    "register_method",
]

METHODS: Registry[type[FewShotMethod]] = Registry("method", flag="--methods")


class FewShotMethod:
    """Base class of few-shot classification heads on frozen features.

    Class attributes
    ----------------
    name: registry name (``"protonet"``). description: one line. paper: citation + link.
    transductive: ``True`` if the scores of a query depend on the other queries of its episode.
    preprocessing: the feature preprocessing chain its paper applies before the head (see
        :mod:`fewshot_bench.preprocess`), e.g. ``"cl2n"``; :meth:`scores` applies it (or the
        instance's ``preprocess`` when :func:`create` was given one) before :meth:`batch_scores`.
    needs_base_mean: ``True`` if ``preprocessing`` needs ``base_mean`` (D,), the train split's mean
        feature (derived from ``preprocessing``; do not set it by hand).
    nonfinite_propagates: ``True`` if any NaN/Inf input always yields a non-finite score, so the
        upfront NaN/Inf scan of the inputs can be skipped (the scores are checked instead).
    batch_invariant: ``True`` if an episode's scores do not depend on the other episodes of the
        batch (closed-form heads), so the evaluator may pick smaller, cache-friendly batches;
        ``False`` (the safe default) for e.g. iterative solvers with one stopping test per batch.
    cpu_batch_bytes: features per ``scores`` call on the CPU for a ``batch_invariant`` head, in bytes
        (``None``: the evaluator's ~4 MiB; see :func:`fewshot_bench.evaluate.default_batch_episodes`).
    presets: named sets of defaults, ``{"r2d2": {"alpha": 50.0, "normalize": False}}``; the name
        ``"ridge:r2d2"`` builds the method with them (explicit parameters still win). A preset may
        also set ``preprocessing``. See :func:`fewshot_bench.methods.create`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    transductive: ClassVar[bool] = False
    preprocessing: ClassVar[str] = "none"
    needs_base_mean: ClassVar[bool] = False
    nonfinite_propagates: ClassVar[bool] = False
    batch_invariant: ClassVar[bool] = False
    cpu_batch_bytes: ClassVar[int | None] = None
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.needs_base_mean = parse_preprocessing(cls.preprocessing).needs_base_mean

    # -- hyper-parameters -------------------------------------------------------------------
    def __init__(self) -> None:
        """Subclasses take hyper-parameters as keyword arguments and only store them."""

    @property
    def preprocess_chain(self) -> Preprocessing:
        """The chain :meth:`scores` applies: the instance's ``preprocess`` if set, else the class's."""
        return parse_preprocessing(getattr(self, "preprocess", None) or type(self).preprocessing)

    @classmethod
    def _param_names(cls) -> list[str]:
        return init_param_names(cls)

    @property
    def params(self) -> dict[str, Any]:
        """Hyper-parameters as JSON-ready values (arrays summarised by shape and sha256)."""
        return {k: _jsonable(getattr(self, k, None)) for k in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        """Raise :class:`MethodError` if a hyper-parameter is invalid (called before scoring)."""

    # -- scoring ----------------------------------------------------------------------------
    def scores(self, support: Any, support_labels: Any, query: Any) -> torch.Tensor:
        """Validate the inputs (tensors or numpy arrays) and return class scores ``(E, Q, N)``."""
        self._check_params()
        support, support_labels, query = self._check_inputs(support, support_labels, query)
        if not self.nonfinite_propagates:
            _check_finite(support, "support")
            _check_finite(query, "query")
        raw = support, query
        chain = self.preprocess_chain
        if chain.steps:
            base_mean = getattr(self, "base_mean", None)
            if chain.needs_base_mean and base_mean is None:
                raise MethodError(_needs_base_mean(self.name or type(self).__name__, chain.spec))
            support, query = chain(support, base_mean), chain(query, base_mean)
        with torch.no_grad():
            out = torch.as_tensor(self.batch_scores(support, support_labels, query), device=support.device)
        expected = (query.shape[0], query.shape[1], int(support_labels.max()) + 1)
        if tuple(out.shape) != expected:
            raise MethodError(f"{self!r} returned scores of shape {tuple(out.shape)}, expected {expected}")
        if not bool(torch.isfinite(out).all()):
            _check_finite(raw[0], "support")
            _check_finite(raw[1], "query")
            raise MethodError(f"{self!r} produced non-finite scores on finite features; check its parameters")
        return out

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``(E, Q, N)`` for validated inputs; by default loops over :meth:`episode_scores`."""
        return torch.stack(
            [
                torch.as_tensor(self.episode_scores(s, y, q), device=s.device)
                for s, y, q in zip(support, support_labels, query, strict=True)
            ]
        )

    def episode_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``(Q, N)`` of one episode: support ``(N*K, D)``, labels ``(N*K,)``, query ``(Q, D)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_scores or episode_scores")

    @staticmethod
    def _check_inputs(
        support: Any, support_labels: Any, query: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The one validation path: convert, then check shapes, dtypes, devices and labels."""
        support, query = _as_tensor(support, "support"), _as_tensor(query, "query")
        labels = _as_tensor(support_labels, "support_labels")
        for t, what, shape in (
            (support, "support", "(episodes, N*K, D)"),
            (labels, "support_labels", "(episodes, N*K)"),
            (query, "query", "(episodes, Q, D)"),
        ):
            want = 2 if what == "support_labels" else 3
            if t.ndim != want:
                raise MethodError(
                    f"{what} must be {want}-D {shape}, got shape {tuple(t.shape)}; "
                    "for a single episode add a leading axis, e.g. support[None]"
                )
        for t, what in ((support, "support"), (query, "query")):
            if not (
                t.is_floating_point()
                and t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
            ):
                raise MethodError(f"{what} must hold floating-point features, got dtype {t.dtype}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise MethodError(f"support_labels must be integers in 0..N-1, got dtype {labels.dtype}")
        if len({support.device, query.device, labels.device}) > 1:
            raise MethodError(
                f"support, support_labels and query are on different devices "
                f"({support.device}, {labels.device}, {query.device}); move them to one device"
            )
        (e, nk, d), (eq, _, dq) = support.shape, query.shape
        if labels.shape != (e, nk):
            raise MethodError(
                f"support has shape {tuple(support.shape)} but support_labels has shape "
                f"{tuple(labels.shape)}; expected ({e}, {nk})"
            )
        if eq != e:
            raise MethodError(f"support has {e} episodes but query has {eq}")
        if dq != d:
            raise MethodError(f"support has {d} features but query has {dq}")
        if nk == 0:
            raise MethodError(f"support has no samples (shape {tuple(support.shape)})")
        dtype = torch.promote_types(torch.promote_types(support.dtype, query.dtype), torch.float32)
        labels = labels.long()
        if e:
            _check_labels(labels)
        return support.to(dtype), labels, query.to(dtype)


def register_method(cls: type[FewShotMethod]) -> type[FewShotMethod]:
    """Class decorator: register a :class:`FewShotMethod` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, FewShotMethod)):
        raise TypeError(f"register_method expects a FewShotMethod subclass, got {cls!r}")
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if not implements_scores(cls):
        raise TypeError(f"{cls.__name__} must implement batch_scores or episode_scores")
    METHODS.register(cls.name, cls)
    return cls


def implements_scores(cls: type[FewShotMethod]) -> bool:
    """Whether ``cls`` overrides ``batch_scores`` or ``episode_scores``."""
    return (
        cls.batch_scores is not FewShotMethod.batch_scores
        or cls.episode_scores is not FewShotMethod.episode_scores
    )


# -- building blocks shared by the built-in methods ---------------------------------------------
def one_hot(labels: torch.Tensor, dtype: torch.dtype, n_way: int = -1) -> torch.Tensor:
    """``(E, M)`` int64 labels in 0..N-1 -> ``(E, M, N)`` one-hot of ``dtype`` (N = max + 1 by default)."""
    return F.one_hot(labels, n_way).to(dtype)


def class_means(support: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
    """Per-class mean of ``support (E, N*K, D)`` -> ``(E, N, D)``; any class order or shot count."""
    onehot = one_hot(support_labels, support.dtype)
    return (onehot.transpose(1, 2) @ support) / onehot.sum(1).unsqueeze(-1)


def neg_sq_euclidean(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``-||q - p||^2`` for query ``(E, Q, D)`` and points ``(E, M, D)`` -> ``(E, Q, M)``."""
    q2 = torch.linalg.vector_norm(query, dim=-1, keepdim=True).square_()  # no (E, Q, D) temporary
    p2 = torch.linalg.vector_norm(points, dim=-1).square_().unsqueeze(1)
    return torch.baddbmm(q2 + p2, query, points.transpose(1, 2), alpha=-2.0).neg_()


def cosine_scores(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of query ``(E, Q, D)`` and points ``(E, M, D)`` -> ``(E, Q, M)``."""
    qn = torch.linalg.vector_norm(query, dim=-1).clamp_min(1e-12).unsqueeze(-1)
    pn = torch.linalg.vector_norm(points, dim=-1).clamp_min(1e-12).unsqueeze(1)
    return (query @ points.transpose(1, 2)) / qn / pn


# -- private helpers ----------------------------------------------------------------------------
def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise MethodError(
            f"{what} must be a torch tensor or numpy array, got {type(x).__name__}: {exc}"
        ) from None


def _check_labels(labels: torch.Tensor) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        ep = int((labels < 0).any(1).nonzero()[0])
        raise MethodError(f"support_labels must be in 0..N-1, found {low} in episode {ep}")
    counts = F.one_hot(labels, high + 1).sum(1)  # (E, N)
    missing = (counts == 0).nonzero()
    if len(missing):
        ep, c = (int(v) for v in missing[0])
        raise MethodError(
            f"episode {ep} has no support sample of class {c}; support_labels must use every "
            f"class 0..{high} in every episode ({len(missing)} (episode, class) pairs missing)"
        )


def _needs_base_mean(name: str, spec: str) -> str:
    return (f"{name} needs base_mean, the mean feature of the train split (D,), for its preprocessing "
            f"{spec!r}; the CLI computes it from the train split's cached features, in Python pass "
            f"create({name!r}, base_mean=train_features.mean(0))")


def _check_finite(x: torch.Tensor, what: str) -> None:
    if bool(torch.isfinite(x.sum())):  # one fast reduction; NaN/Inf always survive a sum
        return
    bad = ~torch.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        ep, row = (int(v) for v in bad.any(-1).nonzero()[0])
        raise MethodError(
            f"{what} has {n_bad} NaN/Inf values (first in episode {ep}, row {row}); "
            "clean the features or drop those samples"
        )


def _jsonable(v: Any) -> Any:
    if isinstance(v, (torch.Tensor, np.ndarray)):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
        return f"array(shape={tuple(a.shape)}, dtype={a.dtype}, sha256={digest})"
    if isinstance(v, np.generic):
        return v.item()
    return v
