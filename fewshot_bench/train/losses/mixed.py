"""The one λ-mix of cross-entropy and a contrastive term: ``(1 - λ)·CE + λ·contrastive``.

``ce+supcon``, ``clce``, ``clce-nohnm`` and ``ce+h-scl`` are subclasses that only name their
contrastive term (``term_class``) and fix some of its switches (``term_fixed``); every other
hyper-parameter except ``lam`` is passed on to the term.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import ContrastiveLoss, LossTerms, TrainingLoss, check_lam
from .ce import cross_entropy

__all__ = ["CEPlusContrastive"]


class CEPlusContrastive(TrainingLoss):
    """``total = (1 - lam) * CE(logits, labels) + lam * term(z, z_labels)``, both terms unweighted in
    :class:`LossTerms` for logging. ``logits (B, C)`` come from the linear head, ``z (B', d)`` from
    the projection (``B' = 2B`` with two views, more under DDP).

    Subclasses set ``term_class`` (a :class:`ContrastiveLoss`) and define ``__init__`` with ``lam``
    plus the term's hyper-parameters (``term_fixed`` holds term parameters they do not expose).
    """

    uses_ce: ClassVar[bool] = True
    uses_contrastive: ClassVar[bool] = True
    term_class: ClassVar[type[ContrastiveLoss]]
    term_fixed: ClassVar[dict[str, Any]] = {}

    lam: float

    def term_loss(self) -> ContrastiveLoss:
        """The contrastive term with this loss's parameters (all but ``lam``)."""
        term_class = getattr(type(self), "term_class", None)
        if not (isinstance(term_class, type) and issubclass(term_class, ContrastiveLoss)):
            raise TypeError(f"{type(self).__name__} must set term_class to a ContrastiveLoss subclass")
        kw = {k: v for k, v in self.params.items() if k != "lam"}
        return term_class(**kw, **self.term_fixed)

    def check_params(self) -> None:
        check_lam(self.lam)
        self.term_loss().check_params()

    def compute(self, logits, z, labels, z_labels) -> LossTerms:  # noqa: ANN001 (see TrainingLoss)
        ce = cross_entropy(logits, labels)
        con = self.term_loss().term(z, z_labels)
        total = (1.0 - self.lam) * ce + self.lam * con
        return LossTerms(total=total, ce=ce, contrastive=con)
