"""Agreement of the batched methods with reference implementations on identical episodes.

easyfsl 1.5.0 classes are used with ``backbone=nn.Identity()`` (features in, scores out), one
episode at a time (``process_support_set`` then ``forward``); episodes are built here, not with
easyfsl's ``TaskSampler``. scikit-learn estimators are fitted per episode, RFS style.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_episodes import easyfsl_scores, episodes
from threadpoolctl import threadpool_limits
from torch import nn

from fewshot_bench.methods import create

easyfsl = pytest.importorskip("easyfsl.methods")
sklearn_linear = pytest.importorskip("sklearn.linear_model")


@pytest.mark.parametrize("shots", [1, 5])
def test_protonet_equals_easyfsl_prototypical_networks(shots):
    """Same predictions; our score is -d^2 where easyfsl's is -d (Euclidean distance to the class mean)."""
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=shots)
    ours = create("protonet").scores(support, labels, query)
    ref = easyfsl_scores(easyfsl.PrototypicalNetworks(nn.Identity()), support, labels, query)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    torch.testing.assert_close(ours, -(ref**2))


@pytest.mark.parametrize("shots", [1, 5])
def test_simpleshot_equals_easyfsl_on_cl2n_features(shots):
    """What is compared: easyfsl's ``SimpleShot`` class is *cosine* to the mean of the given features,
    while SimpleShot CL2N (paper and official code) is *Euclidean* to the mean of centred, L2-normalised
    features. easyfsl applies the same CL2N transform with ``feature_centering=base_mean,
    feature_normalization=2``. So:

    * all shots: ours == easyfsl ``PrototypicalNetworks`` with that CL2N transform (scores -d^2 vs -d);
    * 1-shot: ours == easyfsl ``SimpleShot`` with that transform (prototypes are unit vectors, so
      ``-||q - c||^2 = 2 cos(q, c) - 2``); with 5 shots the two rules differ (unnormalised prototypes).
    """
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=10 + shots, offset=2.0)
    base_mean = episodes(1, 20, 30, 1, 32, 0.3, seed=99, offset=2.0)[0].reshape(-1, 32).mean(0)
    ours = create("simpleshot", base_mean=base_mean).scores(support, labels, query)
    proto = easyfsl.PrototypicalNetworks(nn.Identity(), feature_centering=base_mean, feature_normalization=2)
    ref = easyfsl_scores(proto, support, labels, query)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    torch.testing.assert_close(ours, -(ref**2))
    if shots == 1:
        simple = easyfsl.SimpleShot(nn.Identity(), feature_centering=base_mean, feature_normalization=2)
        ref = easyfsl_scores(simple, support, labels, query)
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
        torch.testing.assert_close(ours, 2 * ref - 2)


@pytest.mark.parametrize("shots", [1, 5])
def test_cosine_equals_easyfsl_simpleshot_on_raw_features(shots):
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=20 + shots, offset=1.0)
    ours = create("cosine").scores(support, labels, query)
    ref = easyfsl_scores(easyfsl.SimpleShot(nn.Identity()), support, labels, query)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("shots", [1, 5])
def test_bdcspn_easyfsl_variant_equals_easyfsl(shots):
    """easyfsl's rule (unshifted query scored, raw features, exp(cos)): the named variant and preset."""
    support, labels, query, _ = episodes(50, 5, shots, 15, 32, 0.3, seed=30 + shots, offset=1.0)
    ref = easyfsl_scores(easyfsl.BDCSPN(nn.Identity()), support, labels, query)
    ours = create("bdcspn", variant="easyfsl", temperature=1.0, preprocess="none").scores(support, labels, query)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(create("bdcspn:easyfsl").scores(support, labels, query), ref)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Tiny per-episode fits run several times faster without BLAS threads on a shared machine."""
    with threadpool_limits(1):
        yield


@pytest.mark.parametrize(("shots", "n_episodes", "sep"), [(5, 300, 0.25), (1, 100, 0.4)])
def test_logistic_agrees_with_sklearn(shots, n_episodes, sep):
    """RFS protocol: L2-normalise, ``LogisticRegression(C=1.0, max_iter=1000)`` (multinomial, lbfgs)."""
    support, labels, query, qlabels = episodes(n_episodes, 5, shots, 15, 64, sep, seed=40 + shots)
    ours = create("logistic", C=1.0).scores(support.float(), labels, query.float()).argmax(-1).numpy()
    ref = np.stack(
        [
            sklearn_linear.LogisticRegression(C=1.0, max_iter=1000)
            .fit(_normalise(s), y)
            .predict(_normalise(q))
            for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
        ]
    )
    acc_ours, acc_ref = (ours == qlabels.numpy()).mean(), (ref == qlabels.numpy()).mean()
    assert 0.35 < acc_ref < 0.95, "episodes should be neither trivial nor hopeless"
    assert (ours == ref).mean() >= 0.99
    assert abs(acc_ours - acc_ref) <= 0.001  # 0.1 accuracy points


@pytest.mark.parametrize("C", [0.1, 10.0])
def test_logistic_minimises_sklearn_objective(C):
    """Against a tightly converged scikit-learn fit the logits agree (up to a per-query constant)."""
    support, labels, query, _ = episodes(5, 5, 5, 15, 64, 0.25, seed=50)
    ours = create("logistic", C=C, tol=1e-10).scores(support, labels, query).numpy()
    ref = np.stack(
        [
            sklearn_linear.LogisticRegression(C=C, tol=1e-12, max_iter=10000)
            .fit(_normalise(s), y)
            .decision_function(_normalise(q))
            for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
        ]
    )
    centre = lambda a: a - a.mean(-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centre(ours), centre(ref), atol=1e-5)


def test_ridge_equals_sklearn_ridge_on_one_hot_targets():
    support, labels, query, _ = episodes(10, 5, 5, 15, 64, 0.25, seed=60)
    ours = create("ridge", alpha=0.5).scores(support, labels, query).numpy()
    ref = np.stack(
        [
            sklearn_linear.Ridge(alpha=0.5, fit_intercept=False)
            .fit(_normalise(s), np.eye(5)[y])
            .predict(_normalise(q))
            for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
        ]
    )
    np.testing.assert_allclose(ours, ref, atol=1e-8)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_1nn_equals_sklearn(metric):
    neighbors = pytest.importorskip("sklearn.neighbors")
    support, labels, query, _ = episodes(20, 5, 5, 15, 32, 0.3, seed=70)
    ours = create("knn", k=1, metric=metric).scores(support, labels, query).argmax(-1).numpy()
    ref = np.stack(
        [
            neighbors.KNeighborsClassifier(1, metric=metric).fit(s, y).predict(q)
            for s, y, q in zip(support.numpy(), labels.numpy(), query.numpy())
        ]
    )
    np.testing.assert_array_equal(ours, ref)
