"""Logistic-regression head as in RFS: L2-normalised features, multinomial L2-regularised LR."""

from __future__ import annotations

import warnings

import torch

from ..errors import MethodError, is_int, is_number
from .base import FewShotMethod, one_hot, register_method

__all__ = ["LogisticRegressionHead"]


@register_method
class LogisticRegressionHead(FewShotMethod):
    """RFS logistic-regression head, solved for all episodes at once. Inductive.

    Yonglong Tian, Yue Wang, Dilip Krishnan, Joshua B. Tenenbaum, Phillip Isola. "Rethinking
    Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020.
    https://arxiv.org/abs/2003.11539

    On L2-normalised features minimises scikit-learn's ``LogisticRegression(C)`` objective
    (multinomial, intercept unpenalised): ``sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C)``.
    ``W`` lies in the span of the support, so the problem is solved on the (N*K x N*K) Gram matrix
    by majorise-minimise steps with Böhning's curvature bound (monotone; tens of iterations),
    until no support logit moves more than ``tol``.
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> logits ``(E, Q, N)``.
    """

    name = "logistic"
    description = "RFS head: L2-normalise, multinomial L2-regularised logistic regression (batched)"
    paper = "Tian et al., ECCV 2020, https://arxiv.org/abs/2003.11539"
    transductive = False
    nonfinite_propagates = True

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-5) -> None:
        self.C, self.max_iter, self.tol = C, max_iter, tol

    def _check_params(self) -> None:
        if not (is_number(self.C) and is_number(self.tol) and is_int(self.max_iter, 1)
                and self.C > 0 and self.tol > 0):
            raise MethodError(f"logistic: need C > 0, max_iter >= 1, tol > 0; got {self!r}")

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        # Gram matrix of the L2-normalised support (E, n, n), and of the centred one (exact reparametrisation:
        # the intercept is unpenalised), without materialising normalised copies of the features
        norms = torch.linalg.vector_norm(support, dim=-1).clamp_min(1e-12)
        gram = (support @ support.transpose(1, 2)) / norms.unsqueeze(-1) / norms.unsqueeze(1)
        centred = gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True)
        centred += gram.mean((1, 2), keepdim=True)
        y = one_hot(support_labels, support.dtype).transpose(1, 2)  # (E, N, n): classes first, fast on CPU
        n, lam = y.shape[2], 1.0 / self.C
        # Böhning's bound on the Hessian, inverted once; one product gives the step and its effect on logits
        bound = 0.5 * centred + lam * torch.eye(n, dtype=gram.dtype, device=gram.device)
        precond = torch.cholesky_inverse(torch.linalg.cholesky_ex(bound).L)  # NaN in, NaN out
        both = torch.cat([precond, precond @ centred], 2)
        coef, bias, logits = torch.zeros_like(y), y.new_zeros(y.shape[0], y.shape[1], 1), torch.zeros_like(y)
        for _ in range(self.max_iter):  # W = centred_support^T coef^T, logits^T = coef @ centred + bias
            resid = torch.softmax(logits, 1) - y
            step, moved_logits = ((resid + lam * coef) @ both).split(n, 2)
            bias_step = resid.sum(2, keepdim=True) * (2.0 / n)
            coef, bias, logits = coef - step, bias - bias_step, logits - moved_logits - bias_step
            moved = max(float(moved_logits.abs().max()), float(bias_step.abs().max()))
            if not moved > self.tol:
                break
        else:
            warnings.warn(
                f"logistic: not converged after {self.max_iter} iterations (logits still move "
                f"{moved:.2g} > tol={self.tol}); raise max_iter",
                RuntimeWarning,
                stacklevel=3,
            )
        # back to weights on the raw features: logits = (q/|q| - mean_i s_i/|s_i|) . W + b
        coef = coef - coef.mean(2, keepdim=True)
        bias = bias - (coef @ gram).mean(2, keepdim=True)
        weights = (coef / norms.unsqueeze(1)) @ support  # (E, N, D)
        qnorms = torch.linalg.vector_norm(query, dim=-1, keepdim=True).clamp_min(1e-12)
        return (query @ weights.transpose(1, 2)) / qnorms + bias.transpose(1, 2)
