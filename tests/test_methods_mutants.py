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
import typing
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


@pytest.mark.parametrize(("name", "seed"), [("svm", 4), ("logistic", 21)])
def test_convergence_warning_points_at_the_caller_of_scores(warning_sites, name, seed):
    support, labels, query, _ = episodes(2, 3, 2, 2, 8, 0.3, seed=seed)
    method = create(name, max_iter=1)
    with pytest.warns(RuntimeWarning, match=f"{name}: not converged") as record:
        line = sys._getframe().f_lineno + 1
        method.scores(support, labels, query)
    assert [(f, n) for m, f, n in warning_sites if m.startswith(f"{name}:")] == [(__file__, line)]
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


# -- harvested survivors (issue 15) ----------------------------------------------------------------
def test_features_on_two_devices_are_refused():
    """Two distinct devices (CPU and meta) already make the inputs inconsistent."""
    support, labels, query, _ = episodes(1, 2, 2, 1, 3, 1.0, seed=13)
    message = r"^support, support_labels and query are on different devices \(cpu, cpu, meta\); move them"
    with pytest.raises(MethodError, match=message):
        create("protonet").scores(support, labels, query.to("meta"))


def test_a_missing_method_file_names_the_methods_flag():
    from fewshot_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--methods 'nope\.py:Foo': file nope\.py does not exist; give "
                                          r"path/to/file\.py:ClassName or a name from `fewshot-bench methods`$"):
        create("nope.py:Foo")


def test_a_preset_with_an_unknown_parameter_names_the_method_and_preset():
    from fewshot_bench.errors import ConfigError
    from fewshot_bench.methods._loading import _preset_class

    class Preset(SimpleShot):
        presets: typing.ClassVar[dict] = {"Bad": {"nope": 1}}

    with pytest.raises(ConfigError, match=r"^method 'mine:bad' has no parameter 'nope'; its parameters: "):
        _preset_class(Preset, "mine", "bad")


@pytest.mark.parametrize("key", ["lr", "temperature", "entropy_weight"])
def test_transductive_ft_refuses_bools_as_numbers(key):
    with pytest.raises(MethodError, match=rf"^transductive-ft: {key} must be a finite number >?=? ?0?"):
        create("transductive-ft", **{key: True})


def test_logistic_is_invariant_to_the_scale_of_small_features():
    """The head L2-normalises support and query: features of norm << 1 give the same logits."""
    support, labels, query, _ = episodes(2, 3, 2, 2, 5, 1.0, seed=14)
    method = create("logistic", preprocess="none")
    ref = method.scores(support, labels, query)
    small = method.scores(1e-3 * support, labels, 1e-2 * query)
    torch.testing.assert_close(small, ref, rtol=1e-9, atol=1e-9)


def test_laplacianshot_defaults_and_a_zero_tolerance():
    method = create("laplacianshot", base_mean=torch.zeros(3))
    assert (method.lam, method.knn, method.n_iter, method.tol) == (1.0, 3, 20, 1e-6)
    assert (method.rectification, method.rect_temperature) == ("official", 10.0)
    assert create("laplacianshot", tol=0.0, base_mean=torch.zeros(3)).tol == 0.0  # 0: stop on an unchanged energy


def _counting_neighbour_sums(monkeypatch):
    from fewshot_bench.methods import laplacianshot

    calls, orig = [], laplacianshot._neighbour_sum
    monkeypatch.setattr(laplacianshot, "_neighbour_sum", lambda y, f: calls.append(1) or orig(y, f))
    return calls


def test_bound_update_runs_20_steps_by_default_and_stops_on_an_unchanged_energy(monkeypatch):
    """One ``W Y`` per step (plus the initial one): 20 steps by default when the energy keeps moving;
    with lam = 0 the energy is the same from the first step, so tol = 0 stops at the third step."""
    from fewshot_bench.methods.laplacianshot import bound_update

    calls = _counting_neighbour_sums(monkeypatch)
    g = torch.Generator().manual_seed(15)
    query = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    unary = torch.rand(2, 6, 3, generator=g, dtype=torch.float64)
    neighbours = knn_neighbours(query, 3)
    bound_update(unary, neighbours, 1.0, tol=-1.0)
    assert len(calls) == 1 + 20
    calls.clear()
    bound_update(unary, neighbours, 1.0)  # tol = 1e-6 by default
    steps = len(calls)
    calls.clear()
    bound_update(unary, neighbours, 1.0, 20, 1e-6)
    assert len(calls) == steps > 1 + 3
    calls.clear()
    out = bound_update(unary, neighbours, 0.0, n_iter=10, tol=0.0)
    assert len(calls) == 1 + 3
    torch.testing.assert_close(out, (-unary).log_softmax(-1), rtol=1e-14, atol=1e-14)


def test_sinkhorn_keeps_the_plain_domain_at_the_underflow_threshold():
    """``exp(-lam * cost)`` exactly at ``sqrt(tiny)`` does not underflow: the plain domain is used."""
    from fewshot_bench.methods.ptmap import sinkhorn

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
    cost[:, :, 0] = 0.0
    cost[0, 0, 1] = -0.5 * math.log(torch.finfo(torch.float64).tiny)
    plain = sinkhorn(cost, 1.0, 4 / 3, log_domain=False)
    log = sinkhorn(cost, 1.0, 4 / 3, log_domain=True)
    assert not torch.equal(plain, log)  # the domains round differently on this plan
    assert torch.equal(sinkhorn(cost, 1.0, 4 / 3), plain)


def _svm_problem(seed, e=3, n=6, d=8, n_way=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(e, n, d, generator=g, dtype=torch.float64)
    labels = torch.stack([torch.randperm(n, generator=g) % n_way for _ in range(e)])
    return x @ x.transpose(1, 2), labels, torch.nn.functional.one_hot(labels, n_way).double(), g


def test_svm_dual_objective_is_the_documented_quadratic():
    """``1/2 tr(alpha^T K alpha) - sum_i alpha_{i, y_i}``, one episode, sample and class at a time."""
    from fewshot_bench.methods.svm import _dual_objective

    kernel, labels, y, g = _svm_problem(16)
    alpha = torch.randn(y.shape, generator=g, dtype=torch.float64)
    want = [0.5 * sum(float(alpha[e, i, m] * kernel[e, i, j] * alpha[e, j, m])
                      for i in range(6) for j in range(6) for m in range(3))
            - sum(float(alpha[e, i, int(labels[e, i])]) for i in range(6)) for e in range(3)]
    np.testing.assert_allclose(_dual_objective(alpha, kernel, y).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e-6])  # 1e-6: the jitter must scale with the kernel
def test_svm_polish_solves_the_equality_constrained_qp_of_the_active_set(scale):
    """Entries at their bound stay; the free ones minimise the dual under ``sum_m alpha_im = 0``
    (a KKT system solved by numpy, variables ordered class-major)."""
    from fewshot_bench.methods.svm import _polish, _polish_in_chunks

    kernel, labels, y, g = _svm_problem(17)
    kernel = scale * kernel
    e, n, n_way = y.shape
    bound = 0.3 * y
    free = torch.rand(y.shape, generator=g) < 0.6
    free[:, :, 0] = True  # every sample has a free entry
    alpha = torch.where(free, torch.randn(y.shape, generator=g, dtype=torch.float64), bound)
    ours = _polish(kernel, y, alpha, bound)
    for ep in range(e):
        k, f = kernel[ep].numpy(), free[ep].numpy()
        idx = [(i, m) for m in range(n_way) for i in range(n)]
        hess = np.kron(np.eye(n_way), k)
        lin = np.array([float(y[ep, i, m]) for i, m in idx])
        rows = [[1.0 if i2 == i else 0.0 for i2, _ in idx] for i in range(n)]
        rhs = [0.0] * n
        for v, (i, m) in enumerate(idx):
            if not f[i, m]:
                rows.append([1.0 if w == v else 0.0 for w in range(len(idx))])
                rhs.append(float(bound[ep, i, m]))
        a = np.array(rows)
        kkt = np.block([[hess, a.T], [a, np.zeros((len(a), len(a)))]])
        sol = np.linalg.solve(kkt, np.concatenate([lin, rhs]))[: len(idx)]
        want = np.array([[sol[m * n + i] for m in range(n_way)] for i in range(n)])
        np.testing.assert_allclose(ours[ep].numpy(), want, rtol=1e-7, atol=1e-8)
        assert torch.equal(ours[ep][~free[ep]], bound[ep][~free[ep]])
    from fewshot_bench.methods import svm

    per_two = 2 * n_way * n * n
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(svm, "_POLISH_ELEMENTS", per_two)  # chunks of 2 episodes: [0, 2), [2, 3)
        torch.testing.assert_close(_polish_in_chunks(kernel, y, alpha, bound), ours, rtol=1e-12, atol=1e-12)


def test_svm_dual_ridge_is_added_to_the_gram_diagonal_in_float64():
    kernel, labels, _, _ = _svm_problem(18)
    ridge = 0.3  # not a float32 number
    with_ridge = crammer_singer_dual(kernel, labels, 0.1, ridge, 1e-6, 7)
    added = crammer_singer_dual(kernel + ridge * torch.eye(6, dtype=torch.float64), labels, 0.1, 0.0, 1e-6, 7)
    assert torch.equal(with_ridge[0], added[0]) and with_ridge[1] == added[1]
    no_ridge = crammer_singer_dual(kernel, labels, 0.1, 0.0, 1e-6, 7)
    default = crammer_singer_dual(kernel, labels, 0.1, tol=1e-6, max_iter=7)  # ridge 0 by default
    assert torch.equal(default[0], no_ridge[0]) and not torch.allclose(no_ridge[0], with_ridge[0])


@pytest.mark.parametrize(("scale", "C"), [(1.0, 0.1), (1e-3, 10.0)])  # 1e-3: lambda_max < 1, step > 1
def test_svm_one_iteration_is_one_fista_step_then_one_polish(scale, C):
    from fewshot_bench.methods.svm import _polish_step, _relative_gaps

    kernel, labels, y, _ = _svm_problem(19)
    kernel = scale * kernel
    alpha, gap = crammer_singer_dual(kernel, labels, C, 0.0, 1e-6, 1)
    bound, zero = C * y, torch.zeros_like(y)
    step = 1.0 / torch.linalg.eigvalsh(kernel)[:, -1][:, None, None]
    want = _polish_step(kernel, y, bound, *_fista_step(kernel, y, bound, step, zero, zero, torch.ones_like(step)))[0]
    torch.testing.assert_close(alpha, want, rtol=1e-12, atol=1e-14)
    assert gap == float(_relative_gaps(want, kernel @ want, y, C).max())


def logistic_mm_loop(support, labels, query, C, steps):
    """Böhning's majorise-minimise steps for RFS's objective in the primal (numpy, one episode at a time):
    on L2-normalised support centred on its mean ``X``, ``W <- W - (R^T X + W / C) (X^T X / 2 + I / C)^-1``,
    ``b <- b - 2 / |S| sum_i r_i`` with ``R = softmax(X W^T + b) - Y``; logits ``(q/|q| - mean) W^T + b``."""
    out = []
    for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy()):
        sn = s / np.linalg.norm(s, axis=1, keepdims=True)
        x = sn - sn.mean(0)
        n, d, n_way = len(x), x.shape[1], int(y.max()) + 1
        onehot = np.eye(n_way)[y]
        w, b = np.zeros((n_way, d)), np.zeros(n_way)
        curvature = np.linalg.inv(0.5 * x.T @ x + np.eye(d) / C)
        for _ in range(steps):
            logits = x @ w.T + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            r = p / p.sum(1, keepdims=True) - onehot
            w, b = w - (r.T @ x + w / C) @ curvature, b - 2.0 / n * r.sum(0)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        out.append((qn - sn.mean(0)) @ w.T + b)
    return np.stack(out)


@pytest.mark.parametrize("steps", [1, 3])
def test_logistic_iterates_are_boehnings_primal_steps(steps):
    """After ``max_iter`` steps (not converged: warns), the logits equal the primal MM loop's."""
    support, labels, query, _ = episodes(2, 3, 2, 2, 8, 1.0, seed=20)
    method = create("logistic", C=3.0, max_iter=steps, preprocess="none")  # 1/C: not a float32 number
    with pytest.warns(RuntimeWarning, match=rf"^logistic: not converged after {steps} iterations"):
        ours = method.scores(support, labels, query)
    np.testing.assert_allclose(ours.numpy(), logistic_mm_loop(support, labels, query, 3.0, steps), rtol=1e-11,
                               atol=1e-12)


def test_tim_loss_defaults_are_tims():
    """Keyword defaults: temperature 15, l2 classifier, weights (0.1, 1.0, 0.1), Shannon entropies."""
    from fewshot_bench.methods.tim import tim_loss

    support, labels, query, _ = episodes(2, 3, 2, 3, 4, 1.0, seed=22)
    onehot = torch.nn.functional.one_hot(labels).double()
    weights = class_means_loop(support[0], labels[0])[None].repeat(2, 1, 1) + 0.1
    explicit = tim_loss(weights, support, onehot, query, temperature=15.0, classifier="l2", ce_weight=0.1,
                        marginal_weight=1.0, conditional_weight=0.1, alpha=None)
    assert torch.equal(tim_loss(weights, support, onehot, query), explicit)
    for key, value in (("temperature", 16.0), ("ce_weight", 1.1), ("marginal_weight", 2.0),
                       ("conditional_weight", 1.1)):
        assert not torch.allclose(tim_loss(weights, support, onehot, query, **{key: value}), explicit)


def knn_scores_loop(support, labels, query, k, tie_break):
    """k nearest support samples (squared Euclidean), one vote each, plus the documented tie-break."""
    out = []
    for s, y, q in zip(support.tolist(), labels.tolist(), query.tolist()):
        n_way, rows = max(y) + 1, []
        for x in q:
            dist = [sum((a - b) ** 2 for a, b in zip(x, f)) for f in s]
            order = sorted(range(len(s)), key=lambda j: dist[j])[:k]
            votes = [sum(y[j] == n for j in order) for n in range(n_way)]
            if tie_break == "nearest":
                ranks = [min((r for r, j in enumerate(order) if y[j] == n), default=None) for n in range(n_way)]
                rows.append([v + ((k - r) / (k + 1) if r is not None else 0.0) for v, r in zip(votes, ranks)])
            else:
                rows.append([v + (n_way - 1 - n) / n_way for n, v in enumerate(votes)])
        out.append(rows)
    return np.array(out)


@pytest.mark.parametrize("tie_break", ["nearest", "sklearn"])
def test_knn_scores_are_votes_plus_the_documented_tie_break(tie_break):
    """Scores, not only predictions: ``v_n + (k - r) / (k + 1)`` or ``v_n + (N - 1 - n) / N`` (N = 3:
    thirds, not float32 numbers)."""
    support, labels, query, _ = episodes(2, 3, 3, 3, 4, 0.5, seed=23)
    ours = create("knn", k=4, tie_break=tie_break).scores(support, labels, query)
    np.testing.assert_allclose(ours.numpy(), knn_scores_loop(support, labels, query, 4, tie_break), rtol=1e-15,
                               atol=0)


def test_laplacianshot_prototypes_defaults_and_a_class_with_one_member():
    """Official rectification by default, temperature 10; a class with exactly one pseudo-labelled sample
    gets that sample times its weight (divided by 1), not its mean."""
    s = torch.tensor([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.0], [-1.0, 0.2], [0.0, 1.0], [1.0, 0.05]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [0.9, 0.12]], dtype=torch.float64)
    support, labels, query = s[None], torch.tensor([[0, 0, 1, 1, 2, 2]]), q[None]
    protos, shifted = laplacianshot_prototypes(support, labels, query)
    ref_protos, ref_shifted = official_rectification_loop(support, labels, query, 10.0)
    torch.testing.assert_close(protos, ref_protos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shifted, ref_shifted, rtol=1e-12, atol=1e-12)
    weight = 1 / sum(math.exp(10.0 * (cos(s[4], m) - cos(s[4], class_means_loop(s, labels[0])[2])))
                     for m in class_means_loop(s, labels[0]))
    torch.testing.assert_close(protos[0, 2], weight * s[4], rtol=1e-12, atol=1e-12)  # the one member of class 2
    assert not torch.allclose(laplacianshot_prototypes(support, labels, query, "official", 11.0)[0], protos)


def test_svm_solver_polishes_every_5_steps_and_stops_at_the_gap_or_5000_steps(monkeypatch):
    """Loop control with the steps stubbed: a polish and a gap test after every 5th FISTA step; stop at
    ``gap <= tol`` (default 1e-6) or after ``max_iter`` (default 5000) steps, returning that gap."""
    from fewshot_bench.methods import svm

    calls = {"fista": 0, "polish": 0}

    def fista(kernel, y, bound, step, alpha, ahead, momentum):
        calls["fista"] += 1
        return alpha, ahead, momentum

    def polish(kernel, y, bound, alpha, ahead, momentum):
        calls["polish"] += 1
        return alpha, ahead, momentum

    kernel, labels, _, _ = _svm_problem(24, e=1)
    monkeypatch.setattr(svm, "_fista_step", fista)
    monkeypatch.setattr(svm, "_polish_step", polish)
    for gap, steps in ((1e-6, 5), (2e-6, 5000)):
        monkeypatch.setattr(svm, "_relative_gaps", lambda *a, gap=gap: torch.full((len(a[0]),), gap, dtype=torch.float64))
        calls.update(fista=0, polish=0)
        assert crammer_singer_dual(kernel, labels, 0.1)[1] == gap
        assert calls == {"fista": steps, "polish": steps // 5}
    calls.update(fista=0, polish=0)
    crammer_singer_dual(kernel, labels, 0.1, max_iter=7)
    assert calls == {"fista": 7, "polish": 2}  # after steps 5 and 7 (the last)


def _inputs(e=1, nk=4, q=2, d=3, labels=None):
    support, query = torch.zeros(e, nk, d), torch.zeros(e, q, d)
    return support, torch.arange(nk).remainder(2).repeat(e, 1) if labels is None else labels, query


_SINGLE = "; for a single episode add a leading axis, e.g. support[None]"


@pytest.mark.parametrize(("args", "message"), [
    ((torch.zeros(4, 3), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 2, 3)),
     "support must be 3-D (episodes, N*K, D), got shape (4, 3)" + _SINGLE),
    ((torch.zeros(1, 4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(1, 2, 3)),
     "support_labels must be 2-D (episodes, N*K), got shape (4,)" + _SINGLE),
    ((torch.zeros(1, 4, 3), torch.zeros(1, 4, dtype=torch.long), torch.zeros(2, 3)),
     "query must be 3-D (episodes, Q, D), got shape (2, 3)" + _SINGLE),
    (_inputs(labels=torch.zeros(1, 4)), "support_labels must be integers in 0..N-1, got dtype torch.float32"),
    (_inputs(labels=torch.zeros(1, 4, dtype=torch.complex64)),
     "support_labels must be integers in 0..N-1, got dtype torch.complex64"),
    (_inputs(labels=torch.zeros(1, 4, dtype=torch.bool)),
     "support_labels must be integers in 0..N-1, got dtype torch.bool"),
    (_inputs(labels=torch.zeros(1, 3, dtype=torch.long)),
     "support has shape (1, 4, 3) but support_labels has shape (1, 3); expected (1, 4)"),
    ((torch.zeros(1, 4, 3), torch.tensor([[0, 1, 0, 1]]), torch.zeros(2, 2, 3)), "support has 1 episodes but query has 2"),
    ((torch.zeros(1, 4, 3), torch.tensor([[0, 1, 0, 1]]), torch.zeros(1, 2, 5)), "support has 3 features but query has 5"),
    ((torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 2, 3)),
     "support has no samples (shape (1, 0, 3))"),
    (_inputs(e=2, labels=torch.tensor([[0, 1, 0, 1], [0, -1, 1, 0]])),
     "support_labels must be in 0..N-1, found -1 in episode 1"),
    (_inputs(e=3, labels=torch.tensor([[0, 1, 2, 2], [0, 0, 2, 0], [0, 2, 0, 0]])),
     "episode 1 has no support sample of class 1; support_labels must use every class 0..2 in every episode "
     "(2 (episode, class) pairs missing)"),
])
def test_bad_inputs_are_refused_with_the_exact_message(args, message):
    with pytest.raises(MethodError, match=f"^{re.escape(message)}$"):
        create("protonet").scores(*args)


@pytest.mark.parametrize(("support", "query", "want"), [
    (torch.float16, torch.float16, torch.float32), (torch.bfloat16, torch.float32, torch.float32),
    (torch.float16, torch.float64, torch.float64), (torch.float64, torch.float32, torch.float64),
])
def test_checked_inputs_compute_in_float32_or_wider_with_int64_labels(support, query, want):
    from fewshot_bench.methods.base import FewShotMethod

    s, y, q = _inputs(labels=torch.tensor([[0, 1, 0, 1]], dtype=torch.int32))
    s, y, q = FewShotMethod._check_inputs(s.to(support), y, q.to(query))
    assert (s.dtype, q.dtype, y.dtype) == (want, want, torch.int64)
    s, y, q = FewShotMethod._check_inputs(*_inputs(e=0, labels=torch.zeros(0, 4, dtype=torch.long)))  # no episodes
    assert (s.shape, y.shape, q.shape) == ((0, 4, 3), (0, 4), (0, 2, 3))


def test_sinkhorn_defaults_are_ptmaps_tol_and_1000_iterations():
    """``tol=1e-6``, ``max_iter=1000``: at lam = 30 this plan still moves after 1000 iterations."""
    from fewshot_bench.methods.ptmap import sinkhorn

    g = torch.Generator().manual_seed(4)
    cost = torch.rand(2, 6, 3, generator=g, dtype=torch.float64) * 2
    capped = sinkhorn(cost, 30.0, 2.0, tol=-1.0)  # never converged: runs max_iter iterations
    assert torch.equal(capped, sinkhorn(cost, 30.0, 2.0, -1.0, 1000))
    assert not torch.equal(capped, sinkhorn(cost, 30.0, 2.0, -1.0, 1001))
    assert torch.equal(sinkhorn(cost, 30.0, 2.0), sinkhorn(cost, 30.0, 2.0, 1e-6, 1000))
    assert not torch.equal(sinkhorn(cost, 30.0, 2.0), sinkhorn(cost, 30.0, 2.0, 1e-5, 1000))


@pytest.mark.parametrize("knn", [2, 3, 4, 9])
def test_knn_neighbours_are_the_nearest_other_queries_ties_to_the_lower_index(knn):
    """``min(knn - 1, Q - 1)`` nearest others, nearest first, equal distances to the lower index
    (integer coordinates: exact distances, many ties)."""
    query = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [1.0, 1.0], [5.0, 0.0]],
                          [[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, -2.0], [-2.0, 0.0], [1.0, 1.0]]],
                         dtype=torch.float64)
    want = []
    for points in query.tolist():
        rows = []
        for p, x in enumerate(points):
            others = sorted((sum((a - b) ** 2 for a, b in zip(x, y)), r) for r, y in enumerate(points) if r != p)
            rows.append([r for _, r in others[: min(knn - 1, len(points) - 1)]])
        want.append(rows)
    assert torch.equal(knn_neighbours(query, knn), torch.tensor(want))
    assert torch.equal(knn_neighbours(query.float(), knn), torch.tensor(want))


def test_ptmap_passes_its_sinkhorn_iteration_cap():
    """``n_epochs=0, sinkhorn_max_iter=1``: log of one Sinkhorn step (total 1, rows 1, columns Q/N) on
    ``exp(-lam ||q - m_c||^2)`` with the class means, written out per episode."""
    support, labels, query, _ = episodes(2, 3, 2, 4, 5, 1.0, seed=25)
    method = create("ptmap", n_epochs=0, sinkhorn_max_iter=1, episode_centering=False, preprocess="none")
    want = []
    for cost in (-neg_sq_distances_loop(support, labels, query)).tolist():
        p = [[math.exp(-10.0 * v) for v in row] for row in cost]
        total = sum(map(sum, p))
        p = [[v / total / (sum(row) / total) for v in row] for row in p]
        cols = [sum(row[c] for row in p) for c in range(3)]
        want.append([[math.log(v * (12 / 3) / cols[c]) for c, v in enumerate(row)] for row in p])
    torch.testing.assert_close(method.scores(support, labels, query), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-10, atol=1e-10)


def test_sinkhorn_divides_each_row_by_its_largest_entry_first():
    """A per-row offset of the cost (here 400 on one row, lam = 1: exp(-400) is tiny but normal) does not
    change the plan, and the plain domain is kept: each row is shifted to max 0 before ``exp``."""
    from fewshot_bench.methods.ptmap import sinkhorn

    g = torch.Generator().manual_seed(26)
    cost = torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
    offset = torch.zeros(2, 4, 1, dtype=torch.float64)
    offset[1, 2] = 400.0
    plan = sinkhorn(cost + offset, 1.0, 4 / 3)
    assert torch.equal(plan, sinkhorn(cost + offset, 1.0, 4 / 3, log_domain=False))
    torch.testing.assert_close(plan, sinkhorn(cost, 1.0, 4 / 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("log_domain", [False, True])
def test_sinkhorn_first_stopping_test_compares_with_the_plan_normalised_to_total_1(log_domain):
    """Row sums of ``exp(-lam cost)`` (each row divided by its largest entry) normalised to total 1,
    before the first iteration against after it: with ``tol`` just above that change (a literal loop)
    every episode stops after one iteration."""
    from fewshot_bench.methods.ptmap import sinkhorn

    g = torch.Generator().manual_seed(27)
    cost = torch.rand(2, 4, 2, generator=g, dtype=torch.float64)
    changes = []
    for episode in cost.tolist():
        p = [[math.exp(-10.0 * (v - min(row))) for v in row] for row in episode]
        total = sum(map(sum, p))
        before = [sum(row) / total for row in p]
        p = [[v / sum(row) for v in row] for row in p]
        cols = [sum(row[c] for row in p) for c in range(2)]
        after = [sum(v * 2.0 / cols[c] for c, v in enumerate(row)) for row in p]
        changes.append(max(abs(a - b) for a, b in zip(before, after)))
    one = sinkhorn(cost, 10.0, 2.0, max_iter=1, log_domain=log_domain)
    stopped = sinkhorn(cost, 10.0, 2.0, max(changes) * (1 + 1e-9), log_domain=log_domain)
    torch.testing.assert_close(stopped, one, rtol=0, atol=0)
    assert not torch.allclose(sinkhorn(cost, 10.0, 2.0, min(changes) * (1 - 1e-9), log_domain=log_domain), one)



# -- survivors of the seed-3 sample ----------------------------------------------------------------
def test_preset_class_signature_shows_the_preset_defaults():
    """``ridge:r2d2``'s ``__init__`` signature shows the preset's values as defaults (what ``--help``
    and ``inspect`` report); the other parameters keep the method's own."""
    import inspect

    from fewshot_bench.methods import get_method_class

    plain = inspect.signature(get_method_class("ridge").__init__).parameters
    preset = inspect.signature(get_method_class("ridge:r2d2").__init__).parameters
    assert (preset["alpha"].default, preset["normalize"].default) == (50.0, False)
    assert {k: p.default for k, p in preset.items() if k not in ("alpha", "normalize")} == {
        k: p.default for k, p in plain.items() if k not in ("alpha", "normalize")}


def test_knn_unknown_tie_break_message():
    with pytest.raises(MethodError, match=re.escape("knn: tie_break must be one of sklearn, nearest, got 'random'")):
        create("knn", tie_break="random").scores(*episodes(1, 3, 1, 4, 3, 1.0, seed=0)[:3])


@pytest.mark.parametrize("key", ["ce_weight", "marginal_weight", "conditional_weight"])
def test_tim_loss_weights_may_be_zero(key):
    """TIM's three loss weights are ``>= 0``: 0 switches a term off and is accepted; -1 is not."""
    s, y, q = episodes(1, 3, 2, 4, 5, 2.0, seed=1)[:3]
    assert create("tim", iterations=2, **{key: 0.0}).scores(s, y, q).shape == (1, 12, 3)
    with pytest.raises(MethodError, match=re.escape(f"tim: {key} must be a finite number >= 0, got -1.0")):
        create("tim", iterations=2, **{key: -1.0}).scores(s, y, q)


def test_base_mean_missing_message():
    with pytest.raises(MethodError, match=re.escape(
            "preprocessing 'cl2n' needs base_mean, the mean feature of the train (base) split (D,); "
            "the CLI computes it from the train split's cached features")):
        parse_preprocessing("cl2n")(torch.zeros(1, 2, 3))
