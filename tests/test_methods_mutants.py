"""Behaviour the method tests did not pin, found by surviving mutants of ``fewshot_bench/methods`` and
``preprocess.py``: literal Python loops over the documented formulas (Crammer–Singer gaps, one FISTA
step, LaplacianShot's and BD-CSPN's rectification with a class nobody is pseudo-labelled as),
defaults, dtypes, the convergence warning's site and exact error texts.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from method_episodes import episodes

from fewshot_bench.errors import MethodError
from fewshot_bench.methods import create
from fewshot_bench.methods.bdcspn import rectified_prototypes
from fewshot_bench.methods.laplacianshot import knn_affinity, knn_neighbours, laplacianshot_prototypes
from fewshot_bench.methods.simpleshot import SimpleShot
from fewshot_bench.methods.svm import _fista_step, _relative_gaps, crammer_singer_dual
from fewshot_bench.preprocess import parse_preprocessing

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"



pytestmark = pytest.mark.usefixtures("one_thread")




# -- literal references ----------------------------------------------------------------------------
def cos(a, b):
    return float(a @ b) / max(float(a.norm()), 1e-12) / max(float(b.norm()), 1e-12)


def class_means_loop(s, y):
    return torch.stack([s[y == c].mean(0) for c in range(int(y.max()) + 1)])


def neg_sq_distances_loop(support, labels, query):
    """``-||q - m_c||^2`` to the class means, one episode, query and class at a time ``(E, Q, N)``."""
    return torch.stack([torch.stack([torch.stack([-((x - m) ** 2).sum() for m in class_means_loop(s, y)])
                                     for x in q]) for s, y, q in zip(support, labels, query)])


def official_rectification_loop(support, labels, query, t):
    """LaplacianShot's ``--proto-rect``: pseudo-label every sample of S and the shifted Q by the nearest
    class mean (cosine), weight it by that class's softmax(t cos), average per class; no member: the mean."""
    protos, shifted_all = [], []
    for s, y, q in zip(support, labels, query):
        means = class_means_loop(s, y)
        shifted = q + (s.mean(0) - q.mean(0))
        members = {c: [] for c in range(len(means))}
        for x in torch.cat([s, shifted]):
            c_ = [cos(x, m) for m in means]
            best = max(range(len(means)), key=lambda c: (c_[c], -c))  # ties: the lower class
            weight = math.exp(t * c_[best]) / sum(math.exp(t * v) for v in c_)
            members[best].append(weight * x)
        protos.append(torch.stack([
            torch.stack(members[c]).sum(0) / len(members[c]) if members[c] else means[c]
            for c in range(len(means))
        ]))
        shifted_all.append(shifted)
    return torch.stack(protos), torch.stack(shifted_all)


def project_loop(v, c):
    """Euclidean projection of the row ``v`` onto ``{b : sum b = 0, b <= c}`` by bisection on theta:
    ``b = c - max(theta - (v - c), 0)`` with ``sum_m max(theta - u_m, 0) = sum_m c_m``."""
    u = [a - b for a, b in zip(v, c)]
    total = sum(c)
    lo, hi = min(u), min(u) + total
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(mid - x, 0.0) for x in u) < total:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return [cm - max(theta - x, 0.0) for cm, x in zip(c, u)]


def fista_step_loop(kernel, y, bound, step, alpha, ahead, momentum):
    """FISTA with gradient restart (O'Donoghue & Candès), one episode at a time, in Python floats."""
    out_new, out_ahead, out_m = [], [], []
    for e in range(len(kernel)):
        k, yy, c, a, z = (t[e].tolist() for t in (kernel, y, bound, alpha, ahead))
        n, n_way, h, m = len(k), len(yy[0]), float(step[e]), float(momentum[e])
        grad = [[sum(k[i][j] * z[j][w] for j in range(n)) - yy[i][w] for w in range(n_way)] for i in range(n)]
        new = [project_loop([z[i][w] - h * grad[i][w] for w in range(n_way)], c[i]) for i in range(n)]
        t_next = (1 + math.sqrt(1 + 4 * m * m)) / 2
        moved = [[new[i][w] - a[i][w] for w in range(n_way)] for i in range(n)]
        restart = sum((z[i][w] - new[i][w]) * moved[i][w] for i in range(n) for w in range(n_way)) > 0
        out_new.append(new)
        pushed = [[new[i][w] + (m - 1) / t_next * moved[i][w] for w in range(n_way)] for i in range(n)]
        out_ahead.append(new if restart else pushed)
        out_m.append(1.0 if restart else t_next)
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (out_new, out_ahead, out_m))


# -- svm -------------------------------------------------------------------------------------------
def test_relative_gaps_equal_the_crammer_singer_primal_and_dual_per_episode():
    """``(P - D) / P`` with P, D of the class docstring, each episode with its own slacks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    kernel = x @ x.transpose(1, 2)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [0, 0, 0, 1, 2, 1]])
    y = torch.nn.functional.one_hot(labels).double()
    alpha = 0.05 * torch.randn(3, 6, 3, generator=g, dtype=torch.float64)
    C = 0.3
    expected = []
    for e in range(3):
        w = alpha[e].T @ x[e]  # (N, D): w_m = sum_i alpha_im x_i
        norm2 = sum(float(w[m] @ w[m]) for m in range(3))
        slack = 0.0
        for i in range(6):
            yi = int(labels[e, i])
            margins = [(m != yi) + float(w[m] @ x[e, i]) - float(w[yi] @ x[e, i]) for m in range(3)]
            slack += max(0.0, max(margins))
        primal = 0.5 * norm2 + C * slack
        dual = sum(float(alpha[e, i, int(labels[e, i])]) for i in range(6)) - 0.5 * norm2
        expected.append((primal - dual) / primal)
    ours = _relative_gaps(alpha, kernel @ alpha, y, C)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)


def test_one_fista_step_equals_the_literal_update_with_and_without_restart():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    kernel = x @ x.transpose(1, 2)
    y = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 0, 1], [1, 0, 2, 2, 0]])).double()
    bound, step = 0.2 * y, 1.0 / torch.linalg.eigvalsh(kernel)[:, -1][:, None, None]
    ahead = 0.1 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    momentum = torch.tensor([3.0, 2.5], dtype=torch.float64)[:, None, None]
    new1 = fista_step_loop(kernel[1:], y[1:], bound[1:], step[1:], ahead[1:], ahead[1:], momentum[1:])[0][0]
    alpha = torch.stack([ahead[0], 2 * new1 - ahead[1]])  # episode 0: no restart; 1: moved along ahead - new
    ref = fista_step_loop(kernel, y, bound, step, alpha, ahead, momentum)
    assert ref[2].tolist() != [1.0, 1.0] and ref[2][1] == 1.0  # one episode of each kind
    for ours, want in zip(_fista_step(kernel, y, bound, step, alpha, ahead, momentum), ref, strict=True):
        np.testing.assert_allclose(ours.reshape(want.shape).numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


def _sklearn_crammer_singer(support, labels, query, C):
    from sklearn.svm import LinearSVC

    return np.stack([
        LinearSVC(multi_class="crammer_singer", C=C, fit_intercept=False, tol=1e-8, max_iter=100_000)
        .fit(s, y).decision_function(q)
        for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
    ])


def test_svm_default_C_is_metaoptnets_0_1_as_documented():
    pytest.importorskip("sklearn.svm")
    section = DOC.read_text(encoding="utf-8").split("### `svm`", 1)[1].split("### ", 1)[0]
    documented = float(re.search(r"Defaults: `C=([0-9.]+)`", section).group(1))
    assert documented == 0.1
    method = create("svm")
    assert method.C == documented and method.params["C"] == documented
    support, labels, query, _ = episodes(4, 5, 2, 3, 16, 0.3, seed=7)
    ours = method.scores(support, labels, query).numpy()
    np.testing.assert_allclose(ours, _sklearn_crammer_singer(support, labels, query, 0.1), atol=1e-5)
    np.testing.assert_array_equal(ours, create("svm", C=0.1).scores(support, labels, query).numpy())
    other = create("svm", C=1.0).scores(support, labels, query).numpy()
    assert np.abs(other - ours).max() > 1e-2  # C matters on these episodes


def test_svm_gap_equal_to_tol_is_converged():
    """The solver stops at ``gap <= tol``; a gap exactly at tol must not warn."""
    support, labels, query, _ = episodes(2, 3, 2, 2, 8, 0.3, seed=3)
    gram = support @ support.transpose(1, 2)
    _, gap = crammer_singer_dual(gram, labels, 0.1, 0.0, 1e-300, 5)
    assert gap > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create("svm", tol=gap, max_iter=5).scores(support, labels, query)
    with pytest.warns(RuntimeWarning, match="svm: not converged after 5 iterations"):
        create("svm", tol=gap * (1 - 1e-9), max_iter=5).scores(support, labels, query)


def test_svm_convergence_warning_points_at_the_caller_of_scores(warning_sites):
    support, labels, query, _ = episodes(2, 3, 2, 2, 8, 0.3, seed=4)
    method = create("svm", max_iter=1)
    with pytest.warns(RuntimeWarning, match="svm: not converged") as record:
        line = sys._getframe().f_lineno + 1
        method.scores(support, labels, query)
    assert [(f, n) for m, f, n in warning_sites if m.startswith("svm:")] == [(__file__, line)]
    if "MUTANT_UNDER_TEST" not in os.environ:
        assert [(r.filename, r.lineno) for r in record] == [(__file__, line)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["svm", "knn"])
def test_cuda_scores_equal_cpu_scores(name):
    support, labels, query, _ = episodes(3, 5, 3, 4, 16, 0.3, seed=8)
    cpu = create(name).scores(support, labels, query)
    gpu = create(name).scores(support.cuda(), labels.cuda(), query.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)  # placement, not precision


# -- LaplacianShot / BD-CSPN -----------------------------------------------------------------------
def _last_class_orphaned():
    """Episode 0: class 2's support samples lie nearer (cosine) to classes 0 and 1, and no (shifted)
    query is nearest to class 2's mean; episode 1: ordinary."""
    s0 = torch.tensor([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.0], [-1.0, 0.2], [1.0, 0.05], [-1.0, 0.05]])
    q0 = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [0.9, 0.12]])
    support1, _, query1, _ = episodes(1, 3, 2, 1, 2, 1.0, seed=5)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]])
    s1 = torch.stack([support1[0, labels[0] == c] for c in range(3)]).reshape(6, 2)
    return torch.stack([s0.double(), s1]), labels, torch.stack([q0.double(), query1[0]])


@pytest.mark.parametrize("n_episodes", [1, 2])  # 1: class 2 has no member in the whole batch
def test_laplacianshot_official_rectification_keeps_the_mean_of_a_class_nobody_is_labelled_as(n_episodes):
    support, labels, query = (t[:n_episodes] for t in _last_class_orphaned())
    protos, shifted = laplacianshot_prototypes(support, labels, query, "official", 10.0)
    ref_protos, ref_shifted = official_rectification_loop(support, labels, query, 10.0)
    torch.testing.assert_close(shifted, ref_shifted, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(protos, ref_protos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(protos[0, 2], support[0, 4:].mean(0), rtol=0, atol=0)  # class 2: its mean


@pytest.mark.parametrize("n_episodes", [1, 2])  # 1: no query of the whole batch is labelled 2
def test_bdcspn_rectification_with_no_query_pseudo_labelled_as_the_last_class(n_episodes):
    """P'_n = sum_x w(x) x / sum_x w(x), w = exp(t cos(x, P_n)), over S_n and the queries labelled n."""
    support, labels, query = (t[:n_episodes] for t in _last_class_orphaned())
    t = 10.0
    ours = rectified_prototypes(support, labels, query, t)
    for e in range(n_episodes):
        s, y, q = support[e], labels[e], query[e]
        means = class_means_loop(s, y)
        shifted = q + (s.mean(0) - q.mean(0))
        pseudo = [max(range(3), key=lambda c, x=x: (cos(x, means[c]), -c)) for x in shifted]
        if e == 0:
            assert 2 not in pseudo
        for c in range(3):
            xs = [x for x, yy in zip(s, y) if yy == c] + [x for x, p in zip(shifted, pseudo) if p == c]
            w = [math.exp(t * cos(x, means[c])) for x in xs]
            want = sum(wi * x for wi, x in zip(w, xs)) / sum(w)
            torch.testing.assert_close(ours[e, c], want, rtol=1e-12, atol=1e-12)


def test_laplacianshot_without_rectification_uses_class_means_and_the_raw_queries():
    support, labels, query, _ = episodes(2, 3, 2, 4, 5, 1.0, seed=6)
    protos, q = laplacianshot_prototypes(support, labels, query, "none")
    torch.testing.assert_close(protos, torch.stack([class_means_loop(s, y) for s, y in zip(support, labels)]),
                               rtol=1e-12, atol=1e-12)
    assert q is query
    method = create("laplacianshot", rectification="none", lam=0.0, preprocess="none")
    ref = neg_sq_distances_loop(support, labels, query).log_softmax(-1)
    torch.testing.assert_close(method.scores(support, labels, query), ref, rtol=1e-10, atol=1e-10)


def test_laplacianshot_one_query_has_no_neighbours():
    """With Q = 1, W = 0 and every bound update gives Y = softmax(-a): log Y = log_softmax(-||q - m||^2)."""
    support, labels, query, _ = episodes(2, 3, 2, 1, 4, 1.0, seed=9)
    query = query[:, :1]
    assert knn_neighbours(query, 3).shape == (2, 1, 0)
    assert torch.equal(knn_affinity(query, 3), torch.zeros(2, 1, 1, dtype=torch.float64))
    method = create("laplacianshot", rectification="none", lam=1.0, preprocess="none")
    ref = neg_sq_distances_loop(support, labels, query).log_softmax(-1)
    torch.testing.assert_close(method.scores(support, labels, query), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_affinity_has_the_query_dtype(dtype):
    query = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]], dtype=dtype)
    w = knn_affinity(query, 2)
    assert w.dtype == dtype
    want = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=dtype)
    assert torch.equal(w[0], want)


# -- SimpleShot, TIM, input checks, preprocessing --------------------------------------------------
def test_simpleshot_built_directly_keeps_its_base_mean():
    support, labels, query, _ = episodes(2, 3, 2, 2, 4, 1.0, seed=10, offset=2.0)
    base_mean = torch.full((4,), 2.0, dtype=torch.float64)
    method = SimpleShot(base_mean=base_mean)
    assert method.base_mean is base_mean
    def cl2n(x):
        return torch.nn.functional.normalize(x - base_mean, dim=-1)

    ref = neg_sq_distances_loop(cl2n(support), labels, cl2n(query))
    torch.testing.assert_close(method.scores(support, labels, query), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["tim", "alpha-tim"])
@pytest.mark.parametrize("value", [True, False, float("nan")])
def test_tim_refuses_bools_and_nan_as_numbers(name, value):
    for key, op in (("temperature", "> 0"), ("ce_weight", ">= 0")):
        with pytest.raises(MethodError, match=rf"^{name}: {key} must be a finite number {op}, got {value!r}$"):
            create(name, **{key: value})


def test_alpha_tim_alpha_error_text():
    message = ("alpha-tim: alpha must be a finite number > 0 and != 1 (or None: 2 for 1-shot, 7 for 5+ "
               "shots), got 1.0; alpha -> 1 is Shannon's entropy, use method 'tim'")
    with pytest.raises(MethodError, match=f"^{re.escape(message)}$"):
        create("alpha-tim", alpha=1.0)


def test_a_query_that_is_not_an_array_is_named_query():
    support, labels, query, _ = episodes(1, 2, 1, 1, 3, 1.0, seed=11)
    with pytest.raises(MethodError, match=r"^query must be a torch tensor or numpy array, got object: "):
        create("protonet").scores(support, labels, object())
    with pytest.raises(MethodError, match=r"^support must be a torch tensor or numpy array, got object: "):
        create("protonet").scores(object(), labels, query)


def test_base_mean_of_a_chain_with_a_power_step_is_computed_in_float64():
    """float32 base features: the power transform before the centring runs in float64 (pinned to numpy)."""
    rng = np.random.default_rng(12)
    base = np.concatenate([np.zeros((1, 6)), rng.random((4, 6)) * 1e-3 + 5.0]).astype(np.float32)
    ours = parse_preprocessing("power:0.5+cl2n").base_mean_from(base, chunk=2)
    assert ours.dtype == np.float64
    want = ((base.astype(np.float64) + 1e-6) ** 0.5).mean(0)
    np.testing.assert_allclose(ours, want, rtol=1e-14, atol=0)
    in_float32 = ((base + np.float32(1e-6)) ** np.float32(0.5)).astype(np.float64).mean(0)
    assert np.abs(in_float32 - want).max() > 1e-12  # float32 arithmetic would show


def test_every_argument_is_named_in_its_type_and_dtype_errors():
    support, labels, query, _ = episodes(1, 2, 1, 1, 3, 1.0, seed=11)
    head = create("protonet")
    with pytest.raises(MethodError, match=r"^support_labels must be a torch tensor or numpy array, got object: "):
        head.scores(support, object(), query)
    with pytest.raises(MethodError, match=r"^query must hold floating-point features, got dtype torch\.int64$"):
        head.scores(support, labels, query.long())
    with pytest.raises(MethodError, match=r"^support must hold floating-point features, got dtype torch\.int64$"):
        head.scores(support.long(), labels, query)
    # floating point, but not a dtype the heads compute in
    with pytest.raises(MethodError, match=r"^query must hold floating-point features, got dtype torch\.float8_e4m3fn$"):
        head.scores(support, labels, query.to(torch.float8_e4m3fn))


def test_a_bad_chain_names_preprocessing_by_default():
    with pytest.raises(MethodError, match=r"^preprocessing 'l3n': unknown step 'l3n'; use "):
        parse_preprocessing("l3n")
    with pytest.raises(MethodError, match=r"^--preprocess 'l3n': unknown step 'l3n'; use "):
        parse_preprocessing("l3n", what="--preprocess")
