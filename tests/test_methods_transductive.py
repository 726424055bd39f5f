"""LaplacianShot, PT-MAP and soft k-means: agreement with easyfsl and with ports of the official code,
literal-loop references of their key equations, batch invariance and hyper-parameter errors.

easyfsl 1.5.0 classes run with ``backbone=nn.Identity()`` one episode at a time
(``process_support_set`` then ``forward``). The ports of the official scripts below follow
``imtiazziko/LaplacianShot`` (``src/train_lshot.py: metric_class_type``, ``src/lshot_update.py``) and
``yhu01/PT-MAP`` (``test_standard.py``) step by step, in numpy / plain torch.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from method_episodes import easyfsl_scores, episodes
from torch import nn

from fewshot_bench import methods
from fewshot_bench.errors import MethodError
from fewshot_bench.methods import create
from fewshot_bench.methods.laplacianshot import (
    bound_update,
    knn_affinity,
    knn_neighbours,
    laplacianshot_prototypes,
)
from fewshot_bench.methods.ptmap import map_update, sinkhorn
from fewshot_bench.methods.soft_kmeans import soft_kmeans_prototypes

easyfsl = pytest.importorskip("easyfsl.methods")
sk_neighbors = pytest.importorskip("sklearn.neighbors")

NAMES = ["laplacianshot", "ptmap", "soft-kmeans"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared machine (and not a result change)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same_predictions(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).double().mean())


# -- agreement with easyfsl ----------------------------------------------------------------------
@pytest.mark.parametrize("shots", [1, 5])
def test_laplacianshot_bdcspn_variant_equals_easyfsl(shots):
    """easyfsl's LaplacianShot = ours with ``rectification="bdcspn", rect_temperature=1, lam=0.7``,
    CL2N on both sides. easyfsl builds its kNN matrix with the default dtype, so it runs in float64
    here. Measured: 100 % equal predictions, probabilities within 3e-16; the 99 % bound leaves room
    for a near-tie flipped by rounding (cdist vs our matmul distances, log(y + 1e-12) vs
    log(max(y, 1e-20)) in the energy, which may move the stopping step by one)."""
    support, labels, query, _ = episodes(100, 5, shots, 15, 32, 0.4, seed=shots, offset=1.0)
    base_mean = episodes(1, 20, 30, 1, 32, 0.4, seed=99, offset=1.0)[0].reshape(-1, 32).mean(0)
    ours = create(
        "laplacianshot", base_mean=base_mean, rectification="bdcspn", rect_temperature=1.0, lam=0.7
    ).scores(support, labels, query)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = easyfsl.LaplacianShot(nn.Identity(), feature_centering=base_mean, feature_normalization=2)
        ref = easyfsl_scores(model, support, labels, query)
    finally:
        torch.set_default_dtype(dtype)
    assert same_predictions(ours, ref) >= 0.99
    assert float((ours.exp() - ref).abs().median()) < 1e-9


@pytest.mark.parametrize("shots", [1, 5])
def test_ptmap_easyfsl_variant_equals_easyfsl(shots):
    """easyfsl's PTMAP (power transform only, 10 steps) = ours with ``preprocess="power:0.5",
    episode_centering=False, n_epochs=10``. Features are small and non-negative (easyfsl clips at 0
    first; ours rejects negatives) so that Sinkhorn converges in a few dozen steps. Measured: 100 %
    equal predictions, plans within 2e-12 (cdist vs matmul distances)."""
    support, labels, query, _ = episodes(100, 5, shots, 15, 32, 1.0, seed=10 + shots)
    support, query = 0.02 * support.abs(), 0.02 * query.abs()
    ours = create("ptmap", preprocess="power:0.5", episode_centering=False, n_epochs=10).scores(
        support, labels, query
    )
    ref = easyfsl_scores(easyfsl.PTMAP(nn.Identity()), support, labels, query)
    assert same_predictions(ours, ref) >= 0.99
    torch.testing.assert_close(ours.exp(), ref, rtol=0, atol=1e-8)


# -- agreement with ports of the official code -------------------------------------------------
def official_laplacianshot(support, labels, query, base_mean, lam=1.0, knn=3, temp=10.0):
    """The official evaluation of one episode (CL2N, --proto-rect True), in numpy: soft assignments."""
    n_way = int(labels.max()) + 1
    order = np.argsort(labels, kind="stable")  # the code wants the support class by class
    gallery, shot = support[order] - base_mean, len(labels) // n_way
    gallery = gallery / np.linalg.norm(gallery, 2, 1)[:, None]
    query = (query - base_mean) / np.linalg.norm(query - base_mean, 2, 1)[:, None]
    query = query + (gallery.mean(0) - query.mean(0))
    aug = np.concatenate([gallery, query])
    means = gallery.reshape(n_way, shot, -1).mean(1)
    cos = (aug / np.linalg.norm(aug, axis=1, keepdims=True)) @ (
        means / np.linalg.norm(means, axis=1, keepdims=True)
    ).T
    predict = cos.argmax(1)
    w = np.exp(temp * cos - (temp * cos).max(1, keepdims=True))
    w = w / w.sum(1, keepdims=True)
    protos = np.stack([(w[predict == i, i][:, None] * aug[predict == i]).mean(0) for i in np.unique(predict)])
    unary = np.linalg.norm(protos[:, None, :] - query, 2, axis=-1).T ** 2
    knnind = sk_neighbors.NearestNeighbors(n_neighbors=knn).fit(query).kneighbors(query)[1][:, 1:]
    kernel = np.zeros((len(query), len(query)))
    kernel[np.repeat(np.arange(len(query)), knn - 1), knnind.ravel()] = 1

    def softmax(a):
        a = np.exp(a - a.max(1, keepdims=True))
        return a / a.sum(1, keepdims=True)

    y, old = softmax(-unary), float("inf")
    for i in range(20):
        y = softmax(-unary + lam * kernel @ y)
        energy = (y * np.log(np.maximum(y, 1e-20)) + unary * y - lam * (kernel @ y) * y).sum()
        if i > 1 and abs(energy - old) <= 1e-6 * abs(old):
            break
        old = energy
    return y


@pytest.mark.parametrize("shots", [1, 5])
def test_laplacianshot_equals_a_port_of_the_official_code(shots):
    """Measured: 100 % equal predictions, assignments within 3e-16 (float64 both sides)."""
    support, labels, query, qlabels = episodes(60, 5, shots, 15, 32, 0.4, seed=40 + shots, offset=1.0)
    base_mean = episodes(1, 20, 30, 1, 32, 0.4, seed=98, offset=1.0)[0].reshape(-1, 32).mean(0)
    ours = create("laplacianshot", base_mean=base_mean).scores(support, labels, query)
    ref = torch.stack(
        [
            torch.from_numpy(official_laplacianshot(s.numpy(), y.numpy(), q.numpy(), base_mean.numpy()))
            for s, y, q in zip(support, labels, query)
        ]
    )
    assert same_predictions(ours, ref) >= 0.99
    torch.testing.assert_close(ours.exp(), ref, rtol=0, atol=1e-8)
    simpleshot = create("simpleshot", base_mean=base_mean).scores(support, labels, query)
    acc = [float((s.argmax(-1) == qlabels).double().mean()) for s in (ours, simpleshot)]
    assert acc[0] > acc[1]  # the transductive terms help on these episodes


def official_ptmap(support, labels, query, lam=10.0, alpha=0.2, n_epochs=20):
    """yhu01/PT-MAP test_standard.py on a batch of runs (one global Sinkhorn stopping test), in torch."""
    n_runs, n_lab = support.shape[:2]
    n_way = int(labels.max()) + 1
    datas = torch.cat([support, query], 1)
    datas = torch.pow(datas + 1e-6, 0.5)
    datas = torch.linalg.qr(datas.permute(0, 2, 1)).R.permute(0, 2, 1)  # QRreduction
    datas = datas / datas.norm(dim=2, keepdim=True)  # scaleEachUnitaryDatas
    for part in (slice(0, n_lab), slice(n_lab, None)):  # centerDatas
        datas[:, part] = datas[:, part] - datas[:, part].mean(1, keepdim=True)
        datas[:, part] = datas[:, part] / datas[:, part].norm(dim=2, keepdim=True)
    onehot = nn.functional.one_hot(labels, n_way).to(datas.dtype)
    mus = (onehot.transpose(1, 2) @ datas[:, :n_lab]) / onehot.sum(1)[..., None]
    n_usamples = datas.shape[1] - n_lab
    r, c = torch.ones(n_runs, n_usamples, dtype=datas.dtype), torch.full((n_runs, n_way), n_usamples / n_way)

    def get_probas():
        dist = (datas.unsqueeze(2) - mus.unsqueeze(1)).norm(dim=3).pow(2)
        p = torch.exp(-lam * dist[:, n_lab:])
        p /= p.view(n_runs, -1).sum(1)[:, None, None]
        u, iters = torch.zeros(n_runs, n_usamples, dtype=datas.dtype), 1
        while torch.max(torch.abs(u - p.sum(2))) > 1e-6:
            u = p.sum(2)
            p *= (r / u).view(n_runs, -1, 1)
            p *= (c / p.sum(1)).view(n_runs, 1, -1)
            if iters == 1000:
                break
            iters += 1
        return p

    for _ in range(n_epochs):
        mask = torch.cat([onehot, get_probas()], 1)
        mus = mus + alpha * (mask.permute(0, 2, 1) @ datas / mask.sum(1).unsqueeze(2) - mus)
    return get_probas()


@pytest.mark.parametrize("shots", [1, 5])
def test_ptmap_equals_a_port_of_the_official_code(shots):
    """The port keeps the official QR reduction (which we skip: an isometry) and its Sinkhorn
    stopping test. Run one episode at a time, it matches ours to rounding (measured 4e-15). Run on
    the whole batch, as the official script does, its single stopping test makes early-converged
    episodes iterate on: measured 100 % equal predictions, plans within 3.3e-5 after 20 epochs."""
    support, labels, query, qlabels = episodes(40, 5, shots, 15, 32, 1.0, seed=50 + shots)
    support, query = support.abs(), query.abs()
    ours = create("ptmap").scores(support, labels, query)
    alone = torch.cat(
        [official_ptmap(support[i : i + 1], labels[i : i + 1], query[i : i + 1]) for i in range(4)]
    )
    torch.testing.assert_close(ours[:4].exp(), alone, rtol=0, atol=1e-12)
    ref = official_ptmap(support, labels, query)
    assert same_predictions(ours, ref) >= 0.99
    torch.testing.assert_close(ours.exp(), ref, rtol=0, atol=1e-4)
    protonet = create("protonet").scores(support, labels, query)
    acc = [float((s.argmax(-1) == qlabels).double().mean()) for s in (ours, protonet)]
    assert acc[0] > acc[1]  # the transductive steps help on these episodes


# -- literal-loop references of the key equations (float64, rtol 1e-6) -------------------------------
def small(seed, e=2, n=3, k=2, q=5, d=4):
    return episodes(e, n, k, q, d, 1.0, seed=seed)


def test_laplacianshot_bound_update_step_and_affinity_match_loops():
    _, _, query, _ = small(1, q=2)  # 3 classes x 2 = 6 queries
    g = torch.Generator().manual_seed(2)
    unary = torch.rand(2, 6, 3, generator=g, dtype=torch.float64) * 4
    lam = 0.8
    w = knn_affinity(query, knn=3)
    for e in range(2):
        for p in range(6):
            dist = sorted((float(((query[e, p] - query[e, j]) ** 2).sum()), j) for j in range(6) if j != p)
            assert [j for j in range(6) if w[e, p, j] == 1] == sorted(j for _, j in dist[:2])
    got = bound_update(unary, knn_neighbours(query, 3), lam, n_iter=1)  # one step: Y1 = softmax(-a + lam W Y0)
    want = torch.empty_like(unary)
    for e in range(2):
        y0 = [
            [math.exp(-unary[e, p, c]) / sum(math.exp(-unary[e, p, b]) for b in range(3)) for c in range(3)]
            for p in range(6)
        ]
        for p in range(6):
            logits = [
                -float(unary[e, p, c]) + lam * sum(float(w[e, p, j]) * y0[j][c] for j in range(6))
                for c in range(3)
            ]
            norm = math.log(sum(math.exp(v) for v in logits))
            for c in range(3):
                want[e, p, c] = logits[c] - norm
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_laplacianshot_official_rectification_matches_loops():
    support, labels, query, _ = small(3)
    got_protos, got_query = laplacianshot_prototypes(support, labels, query, "official", 10.0)
    for e in range(2):
        s, y, q = support[e].tolist(), labels[e].tolist(), query[e].tolist()
        d = len(s[0])
        shift = [sum(x[i] for x in s) / len(s) - sum(x[i] for x in q) / len(q) for i in range(d)]
        aug = s + [[x[i] + shift[i] for i in range(d)] for x in q]
        means = [
            [sum(x[i] for x, lab in zip(s, y) if lab == c) / y.count(c) for i in range(d)] for c in range(3)
        ]

        def cos(a, b):
            return sum(u * v for u, v in zip(a, b)) / math.sqrt(sum(u * u for u in a) * sum(v * v for v in b))

        for c in range(3):
            members = [x for x in aug if max(range(3), key=lambda b, x=x: cos(x, means[b])) == c]
            weight = [
                math.exp(10 * cos(x, means[c])) / sum(math.exp(10 * cos(x, m)) for m in means)
                for x in members
            ]
            want = [sum(w * x[i] for w, x in zip(weight, members)) / len(members) for i in range(d)]
            torch.testing.assert_close(
                got_protos[e, c], torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0
            )
        torch.testing.assert_close(
            got_query[e], torch.tensor(aug[len(s) :], dtype=torch.float64), rtol=1e-6, atol=0
        )


def loop_sinkhorn_step(cost, lam, col_mass):
    """One iteration of the official loop on a (Q, N) list of lists: normalise, rows to 1, columns."""
    p = [[math.exp(-lam * v) for v in row] for row in cost]
    total = sum(map(sum, p))
    p = [[v / total for v in row] for row in p]
    p = [[v / sum(row) for v in row] for row in p]
    cols = [sum(row[c] for row in p) for c in range(len(p[0]))]
    return [[v * col_mass / cols[c] for c, v in enumerate(row)] for row in p]


def test_ptmap_sinkhorn_step_and_plan_match_loops():
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(2, 6, 3, generator=g, dtype=torch.float64) * 2
    one = sinkhorn(cost, 10.0, 2.0, max_iter=1).exp()
    full = sinkhorn(cost, 10.0, 2.0).exp()
    for e in range(2):
        want = loop_sinkhorn_step(cost[e].tolist(), 10.0, 2.0)
        torch.testing.assert_close(one[e], torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
        p, prev = want, [0.0] * 6  # iterate the literal step to convergence, as the official loop
        for _ in range(1000):
            rows = [sum(r) for r in p]
            if max(abs(a - b) for a, b in zip(prev, rows)) <= 1e-6:
                break
            prev = rows
            p = [[v / rows[i] for v in r] for i, r in enumerate(p)]
            cols = [sum(r[c] for r in p) for c in range(3)]
            p = [[v * 2.0 / cols[c] for c, v in enumerate(r)] for r in p]
        torch.testing.assert_close(full[e], torch.tensor(p, dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.allclose(full.sum(1), torch.full((2, 3), 2.0, dtype=torch.float64))
    torch.testing.assert_close(sinkhorn(cost, 10.0, 2.0, log_domain=True), full.log(), rtol=1e-10, atol=0)


def test_ptmap_sinkhorn_switches_to_the_log_domain_where_exp_underflows():
    """Class 2 is far from every query: exp(-lam * cost) of its column underflows to 0 and the plain
    loop divides 0 by 0. The plan does not change when a column's cost moves by a constant, so the
    log-domain answer must equal the plain loop's on the cost with that constant removed."""
    g = torch.Generator().manual_seed(4)
    near = torch.rand(2, 6, 3, generator=g, dtype=torch.float64)
    for dtype, lam in ((torch.float64, 1000.0), (torch.float32, 100.0)):
        cost = (near / lam * 10 + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).to(dtype)
        assert not torch.isfinite(sinkhorn(cost, lam, 2.0, log_domain=False)).all()
        plan = sinkhorn(cost, lam, 2.0)
        want = sinkhorn((near / lam * 10).to(dtype), lam, 2.0, log_domain=False)
        torch.testing.assert_close(plan.exp(), want.exp(), rtol=0, atol=1e-5)


def test_ptmap_map_update_matches_loops():
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 7, 4, generator=g, dtype=torch.float64)
    weights = torch.rand(2, 7, 3, generator=g, dtype=torch.float64)
    got = map_update(protos, feats, weights, 0.2)
    for e in range(2):
        for c in range(3):
            for i in range(4):
                est = sum(weights[e, j, c] * feats[e, j, i] for j in range(7)) / sum(weights[e, :, c])
                want = protos[e, c, i] + 0.2 * (est - protos[e, c, i])
                torch.testing.assert_close(got[e, c, i], want, rtol=1e-6, atol=0)
    # on coefficients (features=None; the head's form): the same update of m_c = sum_x coef_cx x
    coef = torch.rand(2, 3, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        map_update(coef, None, weights, 0.2) @ feats, map_update(coef @ feats, feats, weights, 0.2), rtol=1e-12, atol=0
    )


def test_soft_kmeans_update_matches_loops():
    """Ren et al. Eq. 2, iterated twice: support one-hot, queries soft-assigned by -||q - p||^2."""
    support, labels, query, _ = small(6)
    got = soft_kmeans_prototypes(support, labels, query, n_iter=2)
    for e in range(2):
        s, y, q = support[e].tolist(), labels[e].tolist(), query[e].tolist()
        d = len(s[0])
        protos = [
            [sum(x[i] for x, lab in zip(s, y) if lab == c) / y.count(c) for i in range(d)] for c in range(3)
        ]
        for _ in range(2):
            z = []
            for x in q:
                logits = [-sum((a - b) ** 2 for a, b in zip(x, p)) for p in protos]
                z.append([math.exp(v) / sum(math.exp(u) for u in logits) for v in logits])
            protos = [
                [
                    (sum(x[i] for x, lab in zip(s, y) if lab == c) + sum(zj[c] * x[i] for zj, x in zip(z, q)))
                    / (y.count(c) + sum(zj[c] for zj in z))
                    for i in range(d)
                ]
                for c in range(3)
            ]
        torch.testing.assert_close(got[e], torch.tensor(protos, dtype=torch.float64), rtol=1e-6, atol=0)


# -- batch invariance, errors, metadata -----------------------------------------------------------
def make(name, **kw):
    if methods.get_method_class(name).needs_base_mean:
        kw["base_mean"] = torch.zeros(16, dtype=torch.float64)
    return create(name, **kw)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("laplacianshot", {"lam": 1.0}),  # stops after 5 to 8 steps here, depending on the episode
        ("ptmap", {"sinkhorn_tol": 1e-2}),  # a loose tolerance: a batch-wide stopping test would show
        ("soft-kmeans", {"n_iter": 3}),
        ("bdcspn", {}),
        ("bdcspn", {"top_z": 2}),  # the confidence ranking is within each episode
        ("bdcspn", {"variant": "easyfsl"}),
        ("svm", {"tol": 1e-3}),  # a loose tolerance: a batch-wide stopping test would show
    ],
)
def test_declared_batch_invariance(name, kw):
    """An episode scored alone or within any batch gets the same scores (per-episode stopping)."""
    assert methods.get_method_class(name).batch_invariant
    support, labels, query, _ = episodes(8, 5, 2, 6, 16, 0.7, seed=7)
    support, query = support.abs(), query.abs()
    method = make(name, **kw)
    whole = method.scores(support, labels, query)
    for part in (slice(0, 1), slice(3, 4), slice(2, 7)):
        torch.testing.assert_close(
            method.scores(support[part], labels[part], query[part]), whole[part], rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("laplacianshot", {"lam": -1}, r"laplacianshot: lam must be a number >= 0, got -1"),
        ("laplacianshot", {"knn": 1}, r"laplacianshot: knn must be an integer >= 2, got 1"),
        ("laplacianshot", {"n_iter": 0}, r"laplacianshot: n_iter must be an integer >= 1"),
        ("laplacianshot", {"tol": -1e-3}, r"laplacianshot: tol must be a number >= 0"),
        ("laplacianshot", {"rectification": "bd"}, r"rectification must be one of official, bdcspn, none"),
        ("laplacianshot", {"rect_temperature": 0}, r"laplacianshot: rect_temperature must be > 0"),
        ("ptmap", {"alpha": 0}, r"ptmap: alpha must be in \(0, 1\], got 0"),
        ("ptmap", {"alpha": 1.5}, r"ptmap: alpha must be in \(0, 1\]"),
        ("ptmap", {"lam": 0}, r"ptmap: lam must be > 0"),
        ("ptmap", {"n_epochs": 2.5}, r"ptmap: n_epochs must be an integer >= 0, got 2.5"),
        ("ptmap", {"sinkhorn_max_iter": 0}, r"ptmap: sinkhorn_max_iter must be an integer >= 1"),
        ("ptmap", {"sinkhorn_tol": -1}, r"ptmap: sinkhorn_tol must be >= 0"),
        ("ptmap", {"episode_centering": "yes"}, r"ptmap: episode_centering must be true or false"),
        ("soft-kmeans", {"n_iter": 0}, r"soft-kmeans: n_iter must be an integer >= 1, got 0"),
        ("soft-kmeans", {"n_iter": True}, r"soft-kmeans: n_iter must be an integer >= 1, got True"),
    ],
)
def test_bad_hyper_parameters_are_explained(name, kw, match):
    with pytest.raises(MethodError, match=match):
        make(name, **kw)


def test_preprocessing_requirements_are_explained():
    support, labels, query, _ = episodes(2, 5, 1, 3, 16, 1.0, seed=8)
    with pytest.raises(MethodError, match="laplacianshot needs base_mean"):
        create("laplacianshot")
    with pytest.raises(MethodError, match="the power transform needs non-negative features"):
        create("ptmap").scores(support, labels, query)
    assert create("laplacianshot", preprocess="l2n").scores(support, labels, query).shape == (2, 15, 5)


def test_few_queries_and_single_class_episodes_run():
    support, labels, query, _ = episodes(3, 5, 1, 1, 16, 1.0, seed=9)  # 5 queries, 1 per class
    assert torch.isfinite(make("laplacianshot", knn=10).scores(support, labels, query)).all()
    support, labels, query, _ = episodes(2, 1, 2, 3, 16, 1.0, seed=9)
    for name in NAMES:
        assert make(name).scores(support.abs(), labels, query.abs()).shape == (2, 3, 1)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_exports(name):
    cls = methods.get_method_class(name)
    assert cls.transductive and "Transductive." in cls.__doc__ and "http" in cls.paper
    module = importlib.import_module(cls.__module__)
    assert module.__all__ == sorted(module.__all__) and all(hasattr(module, n) for n in module.__all__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    support, labels, query, _ = episodes(20, 5, 5, 15, 64, 0.5, seed=11)
    support, query = support.abs(), query.abs()
    method = make(name) if name != "laplacianshot" else create(name, base_mean=torch.zeros(64))
    cpu = method.scores(support, labels, query)
    gpu = method.scores(support.cuda(), labels.cuda(), query.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-8)
    half = method.scores(support.float().cuda(), labels.cuda(), query.float().cuda())
    assert same_predictions(half.cpu(), cpu) > 0.97
