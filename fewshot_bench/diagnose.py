"""Feature-space diagnostics: positive/negative cosine similarities and isotropy.

Given a feature array ``(N, D)`` and labels ``(N,)`` (e.g. cached features of a test
split, see :func:`fewshot_bench.features.get_features`):

* :func:`pair_similarities` -- cosine similarities of *positive* pairs (same label)
  and *negative* pairs (different labels); all pairs for small ``N``, otherwise a
  uniform random sample of each kind drawn with an explicit seeded
  ``numpy.random.Generator``. Their histograms are the diagnostic of Figs. 3-4 of the
  CLCE paper: a good embedding separates the two distributions.
* :func:`isotropy` -- the isotropy score of Mu & Viswanath (2018), "All-but-the-Top",
  as used in Table 5 of the CLCE paper:

  ``I(W) = min_{c in C} Z(c) / max_{c in C} Z(c)``, ``Z(c) = sum_i exp(c . w_i)``,

  where ``w_i`` are the rows of ``W`` and ``C`` the unit eigenvectors of ``W^T W``.
  ``I`` lies in ``(0, 1]``; 1 means the features spread evenly in every principal
  direction, values near 0 that one direction dominates. ``log Z`` is computed with
  log-sum-exp, so large feature norms do not overflow; the ratio is
  ``exp(min log Z - max log Z)``.
* :func:`diagnose` -- both, as a dict of numbers, and the figure (PNG + PDF).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from .errors import ConfigError

__all__ = ["diagnose", "format_diagnosis", "isotropy", "pair_similarities"]

DEFAULT_MAX_PAIRS = 200_000


_CHUNK = 8192  # rows (or pairs) per block: memory stays O(chunk x D) for any N


def _check(features: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate without copying: ``features`` may be a large float32 memmap."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ConfigError(f"features: expected an (N, D) array with N >= 2, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ConfigError(f"features: expected numbers, got dtype {x.dtype}")
    for start in range(0, x.shape[0], _CHUNK):
        if not np.isfinite(x[start : start + _CHUNK]).all():
            raise ConfigError("features: contain NaN or infinite values; re-extract the features")
    if labels is None:
        return x, None
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ConfigError(f"labels: {y.shape[0]} labels for {x.shape[0]} feature rows; pass one label per row")
    return x, y


def _rows(x: np.ndarray, idx, norms: np.ndarray | None = None, mean: np.ndarray | None = None) -> np.ndarray:
    """``x[idx]`` as float64, centred and/or scaled to unit norm."""
    r = np.asarray(x[idx], dtype=np.float64)
    if mean is not None:
        r = r - mean
    if norms is not None:
        r = r / norms[idx, None]
    return r


def _norms(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    n = np.concatenate([
        np.linalg.norm(_rows(x, slice(s, s + _CHUNK), mean=mean), axis=1) for s in range(0, x.shape[0], _CHUNK)
    ])
    if np.any(n == 0):
        raise ConfigError(f"features: {int((n == 0).sum())} rows are all zeros; cosine similarity is undefined")
    return n


def isotropy(
    features: np.ndarray, center: bool = False, normalize: bool = False, both_signs: bool = True
) -> float:
    """Isotropy ``I(W)`` of Mu & Viswanath (2018) of the rows of ``features`` ``(N, D)``.

    ``I(W) = min_c Z(c) / max_c Z(c)`` with ``Z(c) = sum_i exp(c . w_i)`` over the unit
    eigenvectors ``c`` of ``W^T W`` (from ``numpy.linalg.eigh``). An eigenvector's sign
    is arbitrary, and ``Z(c) != Z(-c)`` when the features are not centred, so by
    default (``both_signs=True``) both ``c`` and ``-c`` enter the min and max: the
    score is deterministic and never above the one-sign score. ``both_signs=False``
    uses one sign per eigenvector, fixed so that its largest-magnitude component is
    positive (reference implementations use whatever sign the eigen-solver returns).
    ``log Z(c) = logsumexp(W c)``, accumulated over row blocks in float64, so no
    ``exp`` overflows and memory stays ``O(D^2)`` plus one block.

    ``center=True`` subtracts the mean feature first (the "all-but-the-top"
    post-processing removes it; the paper's score is on the raw vectors, the default).
    ``normalize=True`` scales rows to unit norm first, making the score independent of
    the feature scale (which it otherwise depends on).
    """
    x, _ = _check(features)
    n, d = x.shape
    blocks = [slice(s, s + _CHUNK) for s in range(0, n, _CHUNK)]
    mean = None
    if center:
        mean = sum(np.asarray(x[b], dtype=np.float64).sum(axis=0) for b in blocks) / n
    norms = _norms(x, mean) if normalize else None
    gram = np.zeros((d, d))
    for b in blocks:
        r = _rows(x, b, norms, mean)
        gram += r.T @ r
    _, vecs = np.linalg.eigh(gram)  # columns: unit eigenvectors of W^T W
    if not both_signs:
        big = np.argmax(np.abs(vecs), axis=0)
        vecs = vecs * np.sign(vecs[big, np.arange(d)])
    dirs = np.concatenate([vecs, -vecs], axis=1) if both_signs else vecs
    log_z = np.full(dirs.shape[1], -np.inf)
    for b in blocks:
        log_z = np.logaddexp(log_z, logsumexp(_rows(x, b, norms, mean) @ dirs, axis=0))
    return float(math.exp(log_z.min() - log_z.max()))


def _cosines(x: np.ndarray, norms: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows ``i[k]`` and ``j[k]``, in blocks of pairs."""
    out = np.empty(i.size)
    for s in range(0, i.size, _CHUNK):
        a, b = _rows(x, i[s : s + _CHUNK], norms), _rows(x, j[s : s + _CHUNK], norms)
        out[s : s + _CHUNK] = np.einsum("ij,ij->i", a, b)
    return out


def _pair_indices(n: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random pairs ``i != j`` (unordered, with replacement)."""
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)
    return i, j


def pair_similarities(
    features: np.ndarray,
    labels: np.ndarray,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive (same label) and negative (different label) pairs.

    When ``N (N - 1) / 2 <= max_pairs`` every unordered pair is used. Otherwise up to
    ``max_pairs`` pairs of each kind are drawn uniformly (with replacement) with
    ``numpy.random.default_rng(seed)``: positives by choosing a class with probability
    proportional to its number of pairs ``n_c (n_c - 1)`` and two distinct members,
    negatives by drawing two rows and keeping those with different labels.
    Returns ``(positive, negative)`` float64 arrays in ``[-1, 1]``.
    """
    x, y = _check(features, labels)
    if max_pairs < 1:
        raise ConfigError(f"max_pairs={max_pairs}: must be at least 1")
    norms = _norms(x)
    n = x.shape[0]
    if n * (n - 1) // 2 <= max_pairs:
        iu, ju = np.triu_indices(n, k=1)
        sim = _cosines(x, norms, iu, ju)
        same = y[iu] == y[ju]
        return sim[same], sim[~same]

    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    weights = counts * (counts - 1.0)
    if weights.sum() > 0:
        c = rng.choice(classes.size, size=max_pairs, p=weights / weights.sum())
        a = rng.integers(0, counts[c])
        b = rng.integers(0, np.maximum(counts[c] - 1, 1))
        b = b + (b >= a)
        pos = _cosines(x, norms, order[starts[c] + a], order[starts[c] + b])
    else:
        pos = np.empty(0)
    neg_i, neg_j, got = [], [], 0
    if classes.size > 1:
        for _ in range(100):
            i, j = _pair_indices(n, max_pairs, rng)
            keep = y[i] != y[j]
            neg_i.append(i[keep])
            neg_j.append(j[keep])
            got += int(keep.sum())
            if got >= max_pairs:
                break
    if neg_i:
        neg = _cosines(x, norms, np.concatenate(neg_i)[:max_pairs], np.concatenate(neg_j)[:max_pairs])
    else:
        neg = np.empty(0)
    return pos, neg


def _summary(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else math.nan, "n": int(x.size)}


def diagnose(
    features: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike | None = None,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
    bins: int = 100,
    title: str | None = None,
    stem: str = "similarity",
) -> dict[str, Any]:
    """Similarity histograms and isotropy of a feature set.

    Returns ``{"n_features", "dim", "n_classes", "pos_mean", "pos_std", "n_pos_pairs",
    "neg_mean", "neg_std", "n_neg_pairs", "separation" (pos_mean - neg_mean),
    "overlap" (area shared by the two normalised histograms, 0..1), "isotropy",
    "max_pairs", "seed"}``, and with ``out_dir`` also ``"files"``: the PNG and PDF of
    the two overlaid histograms (``out_dir/similarity.{png,pdf}``).
    """
    x, y = _check(features, labels)
    pos, neg = pair_similarities(x, y, max_pairs=max_pairs, seed=seed)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    hp = np.histogram(pos, bins=edges)[0] / max(pos.size, 1)
    hn = np.histogram(neg, bins=edges)[0] / max(neg.size, 1)
    ps, ns = _summary(pos), _summary(neg)
    result: dict[str, Any] = {
        "n_features": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "n_classes": int(np.unique(y).size),
        "pos_mean": ps["mean"], "pos_std": ps["std"], "n_pos_pairs": ps["n"],
        "neg_mean": ns["mean"], "neg_std": ns["std"], "n_neg_pairs": ns["n"],
        "separation": ps["mean"] - ns["mean"],
        "overlap": float(np.minimum(hp, hn).sum()) if pos.size and neg.size else math.nan,
        "isotropy": isotropy(x),
        "max_pairs": int(max_pairs),
        "seed": int(seed),
    }
    if out_dir is not None:
        result["files"] = [str(p) for p in _plot(pos, neg, edges, result, Path(out_dir), title, stem)]
    return result


def _plot(pos, neg, edges, result, out_dir: Path, title: str | None, stem: str) -> list[Path]:
    from .plots import plt, save_figure  # Agg backend set there

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(neg, bins=edges, density=True, alpha=0.6, color="C0",
            label=f"negative pairs (mean {result['neg_mean']:.3f})")
    ax.hist(pos, bins=edges, density=True, alpha=0.6, color="C3",
            label=f"positive pairs (mean {result['pos_mean']:.3f})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"isotropy I(W) = {result['isotropy']:.4f}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, stem)


def format_diagnosis(result: dict[str, Any]) -> str:
    """The dict from :func:`diagnose` as a few readable lines for a terminal."""
    lines = [
        f"features: {result['n_features']} x {result['dim']}, {result['n_classes']} classes",
        (
            f"positive pairs: mean cosine {result['pos_mean']:.4f} ± {result['pos_std']:.4f} (sd), "
            f"{result['n_pos_pairs']} pairs"
        ),
        (
            f"negative pairs: mean cosine {result['neg_mean']:.4f} ± {result['neg_std']:.4f} (sd), "
            f"{result['n_neg_pairs']} pairs"
        ),
        f"separation (pos - neg): {result['separation']:.4f}; histogram overlap: {result['overlap']:.4f}",
        f"isotropy I(W) (Mu & Viswanath 2018): {result['isotropy']:.6f}",
    ]
    if result.get("files"):
        lines.append("figure: " + ", ".join(result["files"]))
    return "\n".join(lines)
