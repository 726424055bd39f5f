"""Faithfulness of the few-shot heads to their papers and to scikit-learn, and method presets.

* BD-CSPN and SimNL against literal Python loops over the papers' (and their code's) formulas;
* the MetaOptNet SVM head against scikit-learn's Crammer–Singer ``LinearSVC`` (same ``C``);
* k-NN against scikit-learn's ``KNeighborsClassifier`` (ties included);
* presets (``"ridge:r2d2"``) through :func:`create` and through ``fewshot-bench eval``.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from method_episodes import episodes

from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.cli import main
from fewshot_bench.errors import ConfigError, MethodError, UnknownNameError
from fewshot_bench.methods import create, get_method_class

import synth

svm_module = pytest.importorskip("sklearn.svm")
neighbors = pytest.importorskip("sklearn.neighbors")



pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(rows) for col in zip(*rows)]


# -- BD-CSPN (Liu et al., ECCV 2020) -------------------------------------------------------------
def bdcspn_loop(support, labels, query, eps=10.0, *, l2n=True, score_shifted=True, top_z=None):
    """One episode, plain Python: the paper's steps (L2N, shift xi, pseudo-labels, P'_n, cosine)."""
    s = [_unit(x) if l2n else list(x) for x in support.tolist()]
    q = [_unit(x) if l2n else list(x) for x in query.tolist()]
    y = labels.tolist()
    n_way = max(y) + 1
    xi = [a - b for a, b in zip(_mean(s), _mean(q))]
    shifted = [[a + b for a, b in zip(x, xi)] for x in q]
    basic = [_mean([x for x, c in zip(s, y) if c == n]) for n in range(n_way)]
    pseudo = []
    for x in shifted:
        sims = [_cos(x, p) for p in basic]
        pseudo.append(max(range(n_way), key=lambda n: (sims[n], -n)))  # first maximum, as argmax
    rectified = []
    for n in range(n_way):
        members = [x for x, c in zip(s, y) if c == n]
        chosen = [x for x, c in zip(shifted, pseudo) if c == n]
        if top_z is not None:
            chosen = sorted(chosen, key=lambda x: -_cos(x, basic[n]))[:top_z]
        members += chosen
        weights = [math.exp(eps * _cos(x, basic[n])) for x in members]
        total = sum(weights)
        rectified.append([sum(w * x[d] for w, x in zip(weights, members)) / total for d in range(len(xi))])
    scored = shifted if score_shifted else q
    return [[_cos(x, p) for p in rectified] for x in scored]


@pytest.mark.parametrize("shots", [1, 5])
def test_bdcspn_follows_the_paper_equations(shots):
    support, labels, query, _ = episodes(4, 5, shots, 6, 12, 0.5, seed=80 + shots, offset=1.0)
    ours = create("bdcspn").scores(support, labels, query)
    ref = torch.tensor([bdcspn_loop(s, y, q) for s, y, q in zip(support, labels, query)], dtype=torch.float64)
    torch.testing.assert_close(ours, ref)
    assert get_method_class("bdcspn").preprocessing == "l2n"
    ours = create("bdcspn", top_z=2).scores(support, labels, query)
    ref = torch.tensor([bdcspn_loop(s, y, q, top_z=2) for s, y, q in zip(support, labels, query)])
    torch.testing.assert_close(ours, ref.double())


def test_bdcspn_easyfsl_variant_keeps_the_earlier_default():
    """``variant="easyfsl"`` on raw features with eps=10 is what ``bdcspn`` computed before: unshifted
    query scored; and the paper default moves predictions (numbers quoted in the methods page)."""
    support, labels, query, qlabels = episodes(50, 5, 5, 15, 32, 0.3, seed=35, offset=1.0)
    old = create("bdcspn", variant="easyfsl", preprocess="none").scores(support, labels, query)
    ref = torch.tensor(
        [bdcspn_loop(s, y, q, l2n=False, score_shifted=False) for s, y, q in zip(support[:3], labels[:3], query[:3])]
    )
    torch.testing.assert_close(old[:3], ref.double())
    new = create("bdcspn").scores(support, labels, query)
    same = (old.argmax(-1) == new.argmax(-1)).double().mean().item()
    assert 0.5 < same < 1.0  # the two rules differ, on a minority of queries


def test_bdcspn_parameters_are_checked():
    for kw, match in [({"variant": "tim"}, "variant must be one of paper, easyfsl"),
                      ({"top_z": -1}, "top_z must be None or an integer >= 0")]:
        with pytest.raises(MethodError, match=match):
            create("bdcspn", **kw)


# -- MetaOptNet SVM (Lee et al., CVPR 2019) vs scikit-learn's Crammer–Singer LinearSVC ------------
def sklearn_cs(support, labels, query, C, dual_ridge=0.0):
    """Per-episode ``LinearSVC(crammer_singer, C, no intercept)``; ``dual_ridge`` as augmented features."""
    preds, decisions = [], []
    for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy()):
        if dual_ridge:
            s = np.concatenate([s, math.sqrt(dual_ridge) * np.eye(len(s))], 1)
            q = np.concatenate([q, np.zeros((len(q), len(s)))], 1)
        clf = svm_module.LinearSVC(multi_class="crammer_singer", C=C, fit_intercept=False, tol=1e-8,
                                   max_iter=100_000).fit(s, y)
        preds.append(clf.predict(q))
        decisions.append(clf.decision_function(q))
    return np.stack(preds), np.stack(decisions)


@pytest.mark.parametrize(("shots", "C", "name"), [(1, 0.1, "svm"), (5, 0.1, "svm"), (5, 1.0, "svm"),
                                                  (5, 0.1, "svm:metaoptnet")])
def test_svm_equals_sklearn_crammer_singer(shots, C, name):
    """MetaOptNet's C_reg is liblinear's C: identical scores, no rescaling (see the class docstring)."""
    support, labels, query, qlabels = episodes(60, 5, shots, 15, 64, 0.3, seed=90 + shots)
    method = create(name, C=C)
    ours = method.scores(support, labels, query).numpy()
    pred, decision = sklearn_cs(support, labels, query, C, method.dual_ridge)
    assert 0.3 < (pred == qlabels.numpy()).mean() < 0.95, "episodes should be neither trivial nor hopeless"
    assert (ours.argmax(-1) == pred).mean() >= 0.99  # measured: 1.0
    np.testing.assert_allclose(ours, decision, atol=1e-5)


def test_svm_float32_and_convergence_warning():
    support, labels, query, _ = episodes(10, 5, 5, 15, 64, 0.3, seed=99)
    scores = create("svm").scores(support, labels, query)
    s32 = create("svm").scores(support.float(), labels, query.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), scores, atol=1e-4, rtol=1e-4)
    with pytest.warns(RuntimeWarning, match=r"svm: not converged after 1 iterations \(relative duality gap"):
        create("svm", max_iter=1).scores(support, labels, query)
    with pytest.raises(MethodError, match="svm: need C > 0"):
        create("svm", C=0.0)


# -- k-NN vs scikit-learn -------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(("shots", "k"), [(5, 5), (5, 4), (2, 3), (1, 5)])
def test_knn_equals_sklearn_ties_included(metric, shots, k):
    support, labels, query, _ = episodes(40, 5, shots, 15, 16, 0.3, seed=100 + k)
    ours = create("knn:sklearn", k=k, metric=metric).scores(support, labels, query).argmax(-1).numpy()
    ref = np.stack([
        neighbors.KNeighborsClassifier(k, metric=metric).fit(s, y).predict(q)
        for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
    ])
    np.testing.assert_array_equal(ours, ref)  # 100 % identical
    nearest = create("knn", k=k, metric=metric).scores(support, labels, query)  # the default rule
    if k > 1 and shots > 1:  # votes tie often here, so the default must differ somewhere
        assert (nearest.argmax(-1).numpy() != ref).any()
    if shots == 1 and k >= 5:  # every vote ties: sklearn's rule says class 0, the default is 1-NN
        assert (ref == 0).all()
        one_nn = create("knn", k=1, metric=metric).scores(support, labels, query).argmax(-1).numpy()
        np.testing.assert_array_equal(nearest.argmax(-1).numpy(), one_nn)


# -- SimNL (Zhang et al., WACV 2025), image-only -------------------------------------------------
def simnl_loop(support, labels, query, beta=1.0, lam=0.8, tau=1.0):
    """One episode, plain Python, following SimNL's code (generate_soft_label, the two caches)."""
    s, q, y = [_unit(x) for x in support.tolist()], [_unit(x) for x in query.tolist()], labels.tolist()
    n_way = max(y) + 1
    weights = [0.0] * len(s)
    for n in range(n_way):
        idx = [j for j, c in enumerate(y) if c == n]
        k = len(idx)
        avg = [sum(_cos(s[j], s[i]) for i in idx) - 1 for j in idx]
        avg = [a / (k - 1) if k > 1 else 0.0 for a in avg]
        z = sum(math.exp(a / tau) for a in avg)
        for j, a in zip(idx, avg):
            weights[j] = k * math.exp(a / tau) / z
    means = [_mean([x for x, c in zip(s, y) if c == n]) for n in range(n_way)]
    unit_means = [_unit(m) for m in means]
    counts = [y.count(n) for n in range(n_way)]
    out = []
    for x in q:
        row = []
        for n in range(n_way):
            pos = sum(w * math.exp(-beta * (1 - _cos(x, f))) for f, c, w in zip(s, y, weights) if c == n)
            # their negative classes: the n_way - 1 class means least similar to class n's mean
            order = sorted(range(n_way), key=lambda m: sum(a * b for a, b in zip(unit_means[n], unit_means[m])))
            key = _unit(_mean([means[m] for m in order[: n_way - 1]]))
            neg = counts[n] * math.exp(-beta * sum(a * b for a, b in zip(_unit(x), key)))
            row.append(lam * pos + (1 - lam) * neg)
        out.append(row)
    return out


@pytest.mark.parametrize("shots", [1, 4])
def test_simnl_follows_its_code(shots):
    support, labels, query, _ = episodes(3, 4, shots, 5, 10, 0.5, seed=110 + shots, offset=0.5)
    ours = create("simnl").scores(support, labels, query)
    ref = torch.tensor([simnl_loop(s, y, q) for s, y, q in zip(support, labels, query)], dtype=torch.float64)
    torch.testing.assert_close(ours, ref)
    ours = create("simnl", beta=3.0, lam=0.6, tau=0.5).scores(support, labels, query)
    ref = torch.tensor([simnl_loop(s, y, q, 3.0, 0.6, 0.5) for s, y, q in zip(support, labels, query)])
    torch.testing.assert_close(ours, ref.double())


def test_simnl_one_shot_weights_are_one_and_negative_branch_matters():
    support, labels, query, _ = episodes(40, 5, 1, 15, 32, 0.3, seed=120, offset=1.0)
    only_pos = create("simnl", lam=1.0).scores(support, labels, query)
    both = create("simnl").scores(support, labels, query)
    cosine = create("cosine", preprocess="l2n").scores(support, labels, query)
    assert torch.equal(only_pos.argmax(-1), cosine.argmax(-1))  # 1 shot: exp(-beta (1 - cos)) is monotone
    assert (both.argmax(-1) != cosine.argmax(-1)).any()


# -- presets ---------------------------------------------------------------------------------------
def test_presets_through_create():
    support, labels, query, _ = episodes(5, 5, 5, 15, 64, 0.3, seed=130)
    r2d2 = create("ridge:r2d2")
    assert (r2d2.alpha, r2d2.normalize, r2d2.name) == (50.0, False, "ridge:r2d2")
    torch.testing.assert_close(r2d2.scores(support, labels, query),
                               create("ridge", alpha=50.0, normalize=False).scores(support, labels, query))
    assert create("Ridge:R2D2", alpha=10.0).params == {"alpha": 10.0, "normalize": False}  # explicit wins
    assert get_method_class("ridge:r2d2") is get_method_class("ridge:r2d2")
    assert issubclass(get_method_class("ridge:r2d2"), get_method_class("ridge"))
    assert get_method_class("bdcspn:easyfsl").preprocessing == "none"
    assert create("svm:metaoptnet").dual_ridge == 1.0
    with pytest.raises(UnknownNameError, match=r"method 'ridge' has no preset 'nope' \(--methods ridge:nope\); "
                                               r"its presets: ridge:r2d2$"):
        create("ridge:nope")
    with pytest.raises(UnknownNameError, match="method 'protonet' has no preset 'x'.*its presets: none"):
        create("protonet:x")
    with pytest.raises(UnknownNameError, match="unknown method 'ridgee'"):
        create("ridgee:r2d2")
    with pytest.raises(ConfigError, match="method 'ridge:r2d2' has no parameter 'k'; its parameters: alpha, normalize"):
        create("ridge:r2d2", k=3)


@pytest.fixture()
def cli_env(tmp_path):
    """CIFAR-FS pickles (train + test, 3 images per class) and a Conv-4 checkpoint, as in test_cli."""
    data = tmp_path / "data"
    synth.write_cifar_pickle(data, "cifar-fs", splits=("train", "test"))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "conv4.pt", create_backbone("conv4", image_size=32),
                           {"loss": "ce", "dataset": "cifar-fs"})
    return {"root": tmp_path, "data": data, "ckpt": ckpt}


def _eval(env, out, *extra):
    return main(["eval", "--checkpoint", str(env["ckpt"]), "--arch", "conv4", "--dataset", "cifar-fs",
                 "--data-root", str(env["data"]), "--ways", "5", "--shots", "2", "--queries", "1",
                 "--episodes", "20", "--cache-dir", str(env["root"] / "cache"),
                 "--episodes-dir", str(env["root"] / "episodes"), "--out", str(out), *extra])


def test_preset_through_the_cli(cli_env, capsys):
    run = cli_env["root"] / "run"
    assert _eval(cli_env, run, "--methods", "ridge:r2d2", "ridge", "--param", "ridge.alpha=50",
                 "--param", "ridge.normalize=false") == 0, capsys.readouterr().err
    results = {r["method"]: r for r in json.loads((run / "summary.json").read_text())["results"]}
    assert results["ridge:r2d2"]["method_params"] == {"alpha": 50.0, "normalize": False}
    df = pd.read_csv(run / "per_episode.csv")
    acc = {m: g["accuracy"].to_numpy() for m, g in df.groupby("method")}
    np.testing.assert_array_equal(acc["ridge:r2d2"], acc["ridge"])  # the preset is those parameters
    capsys.readouterr()
    assert _eval(cli_env, cli_env["root"] / "run2", "--methods", "ridge:r2d2", "--param",
                 "ridge:r2d2.alpha=5") == 0
    results = json.loads((cli_env["root"] / "run2" / "summary.json").read_text())["results"]
    assert results[0]["method_params"] == {"alpha": 5, "normalize": False}
    capsys.readouterr()
    assert _eval(cli_env, cli_env["root"] / "run3", "--methods", "ridge:nope") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("Error: ")] == [
        "Error: method 'ridge' has no preset 'nope' (--methods ridge:nope); its presets: ridge:r2d2"
    ]


def test_every_head_documents_itself():
    """Each touched head: a paper link, the inductive/transductive word, and its defaults stated."""
    for name in ("svm", "bdcspn", "simnl", "ridge", "cosine", "knn"):
        cls = get_method_class(name)
        assert "arxiv.org" in cls.__doc__ or "doi.org" in cls.__doc__
        assert ("Transductive." in cls.__doc__) == cls.transductive
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            create(name)  # defaults are valid
