"""The training-loss contract, its validation helpers and the loss registry.

A loss maps one training step's network outputs to the scalar ``backward()`` is called on::

    loss(logits, z, labels, z_labels=None) -> LossTerms(total, ce, contrastive)

    logits (B, C) float   class scores of the linear head (losses with ``uses_ce``), or None
    z      (B', d) float  projection embeddings, L2-normalised inside (``uses_contrastive``), or None
    labels (B,) int64     labels of the rows of ``logits`` (and of ``z`` unless ``z_labels`` is given)
    z_labels (B',) int64  labels of the rows of ``z`` when they differ from ``labels`` (two augmented
                          views per image; under DDP the embeddings gathered from every rank)

Subclasses of :class:`TrainingLoss` take their hyper-parameters as keyword arguments of
``__init__`` and only store them (the scikit-learn habit); :meth:`TrainingLoss.check_params`
validates them with one-line :class:`~fewshot_bench.errors.ConfigError` messages naming the CLI
flag; :meth:`TrainingLoss.compute` does the arithmetic on validated inputs.

Names resolve like few-shot methods: built-ins register themselves with :func:`register_loss`,
other packages add losses through the ``fewshot_bench.losses`` entry-point group, and
``"path/to/file.py:ClassName"`` loads a class from a file (see docs/losses.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from ...errors import ConfigError, is_number
from ...registry import (
    Registry,
    check_params_known,
    init_param_names,
    load_class_from_file,
    load_entry_points,
    split_file_spec,
)

__all__ = [
    "ContrastiveLoss",
    "ENTRY_POINT_GROUP",
    "LOSS_REGISTRY",
    "LossInfo",
    "LossTerms",
    "TrainingLoss",
    "available_losses",
    "check_bool",
    "check_lam",
    "check_nonnegative",
    "check_temperature",
    "create_loss",
    "describe_losses",
    "get_loss_class",
    "register_loss",
]

ENTRY_POINT_GROUP = "fewshot_bench.losses"
LOSS_REGISTRY: Registry[type[TrainingLoss]] = Registry("loss", flag="--loss")
_WARNED: set[str] = set()


@dataclass
class LossTerms:
    """One step's loss: ``total`` is what ``backward()`` is called on; the terms are for logging.

    ``ce`` and ``contrastive`` are the *unweighted* terms (``None`` when the loss has no such
    term), so for the λ-mixes ``total == (1 - lam) * ce + lam * contrastive``.
    """

    total: torch.Tensor
    ce: torch.Tensor | None
    contrastive: torch.Tensor | None


class TrainingLoss:
    """Base class of training losses (see the module docstring for the call contract).

    Class attributes
    ----------------
    name: registry name (``"clce"``). description: one line. paper: citation + link.
    uses_ce: ``True`` if the loss needs ``logits`` from a linear head.
    uses_contrastive: ``True`` if the loss needs embeddings ``z``; training then feeds two
        augmented views of every image so that every anchor has a positive.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    uses_ce: ClassVar[bool] = False
    uses_contrastive: ClassVar[bool] = False

    def __init__(self) -> None:
        """Subclasses take hyper-parameters as keyword arguments and only store them."""

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the hyper-parameters (the keyword arguments of ``__init__``)."""
        return init_param_names(cls)

    @property
    def params(self) -> dict[str, Any]:
        """Hyper-parameters as given or defaulted, e.g. ``{"lam": 0.9, "temperature": 0.5}``."""
        return {k: getattr(self, k, None) for k in self.param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def check_params(self) -> None:
        """Raise :class:`ConfigError` (one line, naming the CLI flag) for an invalid hyper-parameter."""

    def __call__(
        self,
        logits: torch.Tensor | None,
        z: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        z_labels: torch.Tensor | None = None,
    ) -> LossTerms:
        """Validate parameters and inputs, then :meth:`compute` the loss of one step."""
        self.check_params()
        labels = _check_labels(labels, "labels")
        if self.uses_ce:
            if logits is None:
                raise ValueError(f"loss {self.name!r} needs logits (B, C) from a linear head, got None")
            if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"logits must be (B, C) with B = len(labels) = {labels.shape[0]}, got {tuple(logits.shape)}"
                )
        if self.uses_contrastive:
            if z is None:
                raise ValueError(f"loss {self.name!r} needs embeddings z (B, d) from a projection, got None")
            z_labels = labels if z_labels is None else _check_labels(z_labels, "z_labels")
            if z.ndim != 2 or z.shape[0] != z_labels.shape[0]:
                raise ValueError(
                    f"z must be (B', d) with B' = len(z_labels) = {z_labels.shape[0]}, got {tuple(z.shape)}"
                )
        return self.compute(logits, z, labels, z_labels)

    def compute(
        self,
        logits: torch.Tensor | None,
        z: torch.Tensor | None,
        labels: torch.Tensor,
        z_labels: torch.Tensor | None,
    ) -> LossTerms:
        """The loss on validated inputs (``z_labels`` is filled in when ``uses_contrastive``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute")


class ContrastiveLoss(TrainingLoss):
    """Base of losses on embeddings alone: ``total = contrastive = term(z, z_labels)``.

    Subclasses implement :meth:`term`; the λ-mixes of :mod:`.mixed` reuse it as their second term.
    """

    uses_contrastive: ClassVar[bool] = True

    def term(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scalar contrastive loss of embeddings ``z (B', d)`` with ``labels (B',)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement term")

    def compute(
        self,
        logits: torch.Tensor | None,
        z: torch.Tensor | None,
        labels: torch.Tensor,
        z_labels: torch.Tensor | None,
    ) -> LossTerms:
        assert z is not None and z_labels is not None  # guaranteed by __call__
        con = self.term(z, z_labels)
        return LossTerms(total=con, ce=None, contrastive=con)


class LossInfo(NamedTuple):
    """One row of the loss listing (docs/losses.md, ``describe_losses()``)."""

    name: str
    description: str
    paper: str
    params: dict[str, Any]


# -- registry ---------------------------------------------------------------------------------
def register_loss(cls: type[TrainingLoss]) -> type[TrainingLoss]:
    """Class decorator: register a :class:`TrainingLoss` subclass under its ``name``."""
    _checked(cls, repr(cls), error=TypeError)
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    LOSS_REGISTRY.register(cls.name, cls)
    return cls


def get_loss_class(name: str | type[TrainingLoss]) -> type[TrainingLoss]:
    """The class registered as ``name``, from an entry point, or ``"path/to/file.py:ClassName"``."""
    if isinstance(name, type):
        return _checked(name, repr(name))
    if split_file_spec(name):
        return load_class_from_file(
            name, flag="--loss", base=TrainingLoss, check=_checked, names_from=", ".join(LOSS_REGISTRY)
        )
    if name not in LOSS_REGISTRY:
        _load_entry_points()
    return LOSS_REGISTRY.get(name)


def create_loss(name: str | type[TrainingLoss], **params: Any) -> TrainingLoss:
    """Build a loss with validated hyper-parameters; ``None`` values are dropped (keep the defaults).

    >>> create_loss("clce", lam=0.9, temperature=0.5, beta=None)
    CLCE(lam=0.9, temperature=0.5)
    """
    cls = get_loss_class(name)
    params = {k: v for k, v in params.items() if v is not None}
    check_params_known("loss", name if isinstance(name, str) else cls.name, cls, params)
    loss = cls(**params)
    loss.check_params()
    return loss


def available_losses() -> list[str]:
    """Sorted names of every registered loss, entry points included."""
    _load_entry_points()
    return LOSS_REGISTRY.list()


def describe_losses() -> list[LossInfo]:
    """``(name, description, paper, default params)`` of every registered loss (``inspect.Parameter.empty``
    for a parameter without a default)."""
    rows = []
    for n in available_losses():
        cls = LOSS_REGISTRY.get(n)
        sig = inspect.signature(cls.__init__).parameters
        defaults = {k: sig[k].default for k in cls.param_names()}
        rows.append(LossInfo(n, cls.description, cls.paper, defaults))
    return rows


def _checked(obj: Any, where: str, error: type[Exception] = ConfigError) -> type[TrainingLoss]:
    if not (isinstance(obj, type) and issubclass(obj, TrainingLoss)):
        raise error(
            f"{where} is not a TrainingLoss subclass; derive it from fewshot_bench.train.losses.TrainingLoss"
        )
    if obj.compute is TrainingLoss.compute:
        raise error(f"{where} does not implement compute")
    if issubclass(obj, ContrastiveLoss) and obj.term is ContrastiveLoss.term:
        raise error(f"{where} does not implement term")
    if not (obj.uses_ce or obj.uses_contrastive):
        raise error(f"{where} sets neither uses_ce nor uses_contrastive; say which inputs it needs")
    return obj


def _load_entry_points() -> None:
    """Register every ``fewshot_bench.losses`` entry point not registered yet (import on demand)."""
    load_entry_points(LOSS_REGISTRY, ENTRY_POINT_GROUP, _checked, _WARNED)


# -- validation helpers (one-line errors naming the CLI flag) ---------------------------------
def check_temperature(value: Any, flag: str = "--temperature") -> None:
    """τ must be a finite number > 0."""
    if not (is_number(value, finite=True) and value > 0):
        raise ConfigError(f"{flag} {value!r} must be a positive number (e.g. 0.5)")


def check_lam(value: Any, flag: str = "--lam") -> None:
    """λ of a mix ``(1 - λ)·CE + λ·contrastive`` must lie in [0, 1]."""
    if not (is_number(value, finite=True) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{flag} {value!r} is outside [0, 1]; the loss is (1 - lam) * CE + lam * contrastive")


def check_nonnegative(value: Any, flag: str, example: str = "1.0") -> None:
    """A finite number >= 0 (e.g. H-SCL's concentration β)."""
    if not (is_number(value, finite=True) and value >= 0):
        raise ConfigError(f"{flag} {value!r} must be a number >= 0 (e.g. {example})")


def check_bool(value: Any, name: str) -> None:
    """A switch given as ``True`` / ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"loss parameter {name}={value!r} must be True or False")


def _check_labels(labels: Any, what: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{what} must be an int64 tensor (B,), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class labels, got dtype {labels.dtype}")
    return labels.reshape(-1)
