"""LaplacianShot: nearest-prototype unaries plus a kNN Laplacian term over the queries, bound updates."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MethodError, is_int, is_number
from .base import (
    FewShotMethod,
    _needs_base_mean,
    class_means,
    cosine_scores,
    neg_sq_euclidean,
    one_hot,
    register_method,
)
from .bdcspn import rectified_prototypes

__all__ = ["LaplacianShot", "bound_update", "knn_affinity", "knn_neighbours", "laplacianshot_prototypes"]

RECTIFICATIONS = ("official", "bdcspn", "none")


@register_method
class LaplacianShot(FewShotMethod):
    """LaplacianShot on frozen features. Transductive.

    Imtiaz Masud Ziko, Jose Dolz, Eric Granger, Ismail Ben Ayed. "Laplacian Regularized Few-Shot
    Learning", ICML 2020. https://arxiv.org/abs/2006.15486 ; official code
    https://github.com/imtiazziko/LaplacianShot (``src/train_lshot.py``, ``src/lshot_update.py``).

    Objective over the assignments ``y_q`` of the queries (Sec. 2): nearest-prototype unaries plus
    a Laplacian term ``(lam / 2) sum_{p,q} w_pq ||y_p - y_q||^2`` favouring equal labels for
    neighbouring queries. Relaxed to the simplex, its concave part linearised, it is minimised by
    bound optimisation (Algorithm 1), a closed-form step per iteration (softmax over classes)::

        a_qc = ||q - m_c||^2                                  (E, Q, N) unaries, prototypes m_c
        Y^0 = softmax(-a),   Y^{t+1} = softmax(-a + lam * W Y^t)

    stopped after ``n_iter`` steps or, from the third step on, when the bound's value
    ``B(Y) = sum(Y log Y + a Y - lam (W Y) Y)`` (the code's ``entropy_energy``) changes by at most
    ``tol * |B|``, per episode. Scores are ``log Y`` (``(E, Q, N)`` log-probabilities).

    Affinity ``W (Q, Q)``: ``w_pq = 1`` if ``q`` is among the ``knn - 1`` nearest other queries of
    ``p`` (Euclidean), else 0; not symmetrised. ``knn`` counts the point itself, as in the official
    code (sklearn ``NearestNeighbors(knn).kneighbors(X)[:, 1:]``) and easyfsl (``topk(knn)[:, 1:]``):
    ``knn=3`` links each query to its 2 nearest queries; with fewer than ``knn`` queries, all others.
    Equal distances go to the lower query index (deterministic; sklearn and ``topk`` leave it open). ``W``
    is kept as each query's neighbour indices, so ``W Y`` is a sum of ``knn - 1`` rows.

    Prototypes ``m_c`` (``rectification``):

    * ``"official"`` (default; the official code with ``--proto-rect True``, as in its ``run.sh``):
      queries are shifted by ``mean(support) - mean(query)``; every sample ``x`` of the
      support and the shifted queries is pseudo-labelled with its nearest class mean by cosine
      (support samples too, ignoring their labels), weighted by ``softmax_c(rect_temperature *
      cos(x, mean_c))``, and ``m_c = (1 / |X_c|) sum_{x in X_c} w_c(x) x`` (an average, not
      normalised by the weights, as in the code). The unaries use the *shifted* queries.
    * ``"bdcspn"``: BD-CSPN's rectification (:func:`fewshot_bench.methods.bdcspn.rectified_prototypes`,
      support with true labels, weights ``exp(rect_temperature * cos)`` normalised per class); the
      unaries use the unshifted queries. This is easyfsl's ``LaplacianShot``.
    * ``"none"``: class means (the code's ``--proto-rect False``).

    Hyper-parameters: ``lam=1.0`` (the code's default; the paper tunes it per dataset and shot on the
    validation split over {0.1, 0.3, 0.5, 0.7, 0.8, 1.0, 1.2, 1.5}), ``knn=3``, ``n_iter=20``,
    ``tol=1e-6``, ``rectification="official"``, ``rect_temperature=10``.
    easyfsl 1.5.0 ``LaplacianShot`` (with ``feature_centering=base_mean, feature_normalization=2``)
    is ``rectification="bdcspn", rect_temperature=1, lam=0.7``.

    Preprocessing ``cl2n`` (centre on the base-split mean, L2-normalise), as the official code
    (``norm_type='CL2N'``, the reported setting); needs ``base_mean``.

    Differences from the code: convergence is tested per episode (the code runs one episode at a
    time, so this is the same); if no sample is pseudo-labelled as some class, ``"official"`` keeps
    that class's mean (the code then silently misaligns prototypes and labels); energies use
    ``log max(y, 1e-20)`` as the code (easyfsl: ``log(y + 1e-12)``).
    support ``(E, N*K, D)``, support_labels ``(E, N*K)``, query ``(E, Q, D)`` -> ``(E, Q, N)``.
    """

    name = "laplacianshot"
    description = "nearest prototype + kNN Laplacian regularisation over the queries, bound updates"
    paper = "Ziko et al., ICML 2020, https://arxiv.org/abs/2006.15486"
    transductive = True
    batch_invariant = True  # the stopping test is per episode
    preprocessing = "cl2n"
    nonfinite_propagates = True

    def __init__(
        self,
        lam: float = 1.0,
        knn: int = 3,
        n_iter: int = 20,
        tol: float = 1e-6,
        rectification: str = "official",
        rect_temperature: float = 10.0,
        base_mean: Any = None,
    ) -> None:
        self.lam = lam
        self.knn = knn
        self.n_iter = n_iter
        self.tol = tol
        self.rectification = rectification
        self.rect_temperature = rect_temperature
        self.base_mean = base_mean

    def _check_params(self) -> None:
        for key, low in (("knn", 2), ("n_iter", 1)):
            value = getattr(self, key)
            if not is_int(value, low):
                raise MethodError(f"laplacianshot: {key} must be an integer >= {low}, got {value!r}")
        if not (is_number(self.lam) and self.lam >= 0):
            raise MethodError(f"laplacianshot: lam must be a number >= 0, got {self.lam!r}")
        if not (is_number(self.tol) and self.tol >= 0):
            raise MethodError(f"laplacianshot: tol must be a number >= 0, got {self.tol!r}")
        if self.rectification not in RECTIFICATIONS:
            raise MethodError(
                f"laplacianshot: rectification must be one of {', '.join(RECTIFICATIONS)}, "
                f"got {self.rectification!r}"
            )
        if not (is_number(self.rect_temperature) and self.rect_temperature > 0):
            raise MethodError(f"laplacianshot: rect_temperature must be > 0, got {self.rect_temperature!r}")
        if self.base_mean is None and self.preprocess_chain.needs_base_mean:
            raise MethodError(_needs_base_mean(self.name, self.preprocess_chain.spec))

    def batch_scores(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        prototypes, query = laplacianshot_prototypes(
            support, support_labels, query, self.rectification, self.rect_temperature
        )
        unary = -neg_sq_euclidean(query, prototypes)  # (E, Q, N)
        return bound_update(unary, knn_neighbours(query, self.knn), self.lam, self.n_iter, self.tol)


def laplacianshot_prototypes(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    rectification: str = "official",
    temperature: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes ``(E, N, D)`` and the queries the unaries use ``(E, Q, D)`` (see :class:`LaplacianShot`)."""
    if rectification == "none":
        return class_means(support, support_labels), query
    if rectification == "bdcspn":
        return rectified_prototypes(support, support_labels, query, temperature), query
    means = class_means(support, support_labels)  # (E, N, D)
    shifted = query + (support.mean(1, keepdim=True) - query.mean(1, keepdim=True))
    samples = torch.cat([support, shifted], 1)  # (E, N*K + Q, D): the augmented set
    cos = cosine_scores(samples, means)  # (E, M, N)
    member = one_hot(cos.argmax(-1), cos.dtype, cos.shape[-1])  # pseudo-labels, support included
    weights = member * (temperature * cos).softmax(-1)
    counts = member.sum(1).unsqueeze(-1)  # (E, N, 1)
    rectified = (weights.transpose(1, 2) @ samples) / counts.clamp_min(1)
    return torch.where(counts > 0, rectified, means), shifted


def knn_neighbours(query: torch.Tensor, knn: int) -> torch.Tensor:
    """Indices ``(E, Q, k)`` of the ``k = min(knn - 1, Q - 1)`` nearest other queries of each query.

    Nearest first; equal distances go to the lower index (each pick is an ``argmax``, whose ties do).
    """
    k = min(knn - 1, query.shape[1] - 1)
    gram = query @ query.transpose(1, 2)  # (E, Q, Q)
    sq = gram.diagonal(dim1=1, dim2=2)  # |q|^2
    closeness = (2 * gram).sub_(sq.unsqueeze(1)).sub_(sq.unsqueeze(2))  # -||q_p - q_r||^2
    closeness.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # never its own neighbour
    picks = []
    for _ in range(max(k, 0)):  # k argmax passes: cheaper than topk for the usual k = 2
        picks.append(closeness.argmax(-1, keepdim=True))
        closeness.scatter_(-1, picks[-1], -torch.inf)
    return torch.cat(picks, -1) if picks else query.new_empty(query.shape[:2] + (0,), dtype=torch.int64)


def knn_affinity(query: torch.Tensor, knn: int) -> torch.Tensor:
    """``W (E, Q, Q)``: ``W[e, p, q] = 1`` if query q is one of the ``knn - 1`` nearest others of p."""
    n = query.shape[1]
    w = torch.zeros(query.shape[0], n, n, dtype=query.dtype, device=query.device)
    return w.scatter_(2, knn_neighbours(query, knn), 1.0)


def _neighbour_sum(y: torch.Tensor, flat_neighbours: torch.Tensor) -> torch.Tensor:
    """``W Y`` ``(E, Q, N)``: each query's sum of its neighbours' rows of ``y``; ``flat_neighbours``
    ``(E, k, Q)`` indexes the rows of ``y`` flattened to ``(E*Q, N)``."""
    e, q, n = y.shape
    return y.reshape(e * q, n).index_select(0, flat_neighbours.reshape(-1)).view(e, -1, q, n).sum(1)


def bound_update(
    unary: torch.Tensor, neighbours: torch.Tensor, lam: float, n_iter: int = 20, tol: float = 1e-6
) -> torch.Tensor:
    """``log Y (E, Q, N)`` after LaplacianShot's bound updates (Algorithm 1), stopped per episode.

    unary ``a (E, Q, N)``; ``neighbours`` ``(E, Q, k)``: the affinity ``W`` as the indices of each query's
    neighbours (:func:`knn_neighbours`); ``Y <- softmax(-a + lam * W Y)``, from ``Y = softmax(-a)``, at
    most ``n_iter`` times, until the relative change of the energy ``sum(Y log Y + a Y - lam (W Y) Y)``
    is ``<= tol`` (tested from the third step on, as the code).
    """
    e, q, _ = unary.shape
    flat = neighbours.transpose(1, 2) + q * torch.arange(e, device=neighbours.device).view(e, 1, 1)
    log_y = (-unary).log_softmax(-1)
    y = log_y.exp()
    wy = _neighbour_sum(y, flat)  # W Y of the current Y (the previous step's W Y^{t+1})
    old = torch.full(unary.shape[:1], torch.inf, dtype=unary.dtype, device=unary.device)
    active = torch.ones(unary.shape[:1], dtype=torch.bool, device=unary.device)
    for i in range(n_iter):
        logits = lam * wy - unary
        new_log_y = logits - logits.logsumexp(-1, keepdim=True)
        new_y = new_log_y.exp()
        wy = _neighbour_sum(new_y, flat)  # stale for stopped episodes, whose Y no longer changes
        energy = (new_y * new_y.clamp_min(1e-20).log() + unary * new_y - lam * wy * new_y).sum((1, 2))
        log_y = torch.where(active[:, None, None], new_log_y, log_y)
        converged = (energy - old).abs() <= tol * old.abs() if i > 1 else torch.zeros_like(active)
        old = torch.where(active, energy, old)
        active = active & ~converged
        if not bool(active.any()):
            break
    return log_y
