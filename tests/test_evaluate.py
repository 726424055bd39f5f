"""evaluate_rows: torch gathering from a memory-mapped cache gives exactly the naive results."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fewshot_bench import methods
from fewshot_bench.errors import MethodError
from fewshot_bench.evaluate import evaluate_rows

WAYS, SHOTS, QUERIES = 5, 2, 3


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A (200, 16) float32 feature array saved as .npy and memory-mapped read-only, like the cache."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    feats = (rng.normal(size=(10, 16))[labels] + rng.normal(size=(200, 16))).astype(np.float32)
    path = tmp_path_factory.mktemp("feats") / "features.npy"
    np.save(path, feats)
    rows = rng.permuted(np.tile(np.arange(20), (37, 10, 1)), axis=2) + 20 * np.argsort(
        rng.random((37, 10)), 1
    )[..., None]  # (E, 10 classes, 20 positions) -> rows of a shuffled class order
    rows = rows[:, :WAYS, : SHOTS + QUERIES]
    support = rows[..., :SHOTS].reshape(37, -1).astype(np.int32)
    query = rows[..., SHOTS:].reshape(37, -1).astype(np.int32)
    return np.load(path, mmap_mode="r"), support, query


def naive(features, support, query, method, batch=None) -> np.ndarray:
    """The obvious loop: numpy fancy indexing, one batch (default: one episode) at a time."""
    batch = batch or 1
    s_lab = torch.arange(WAYS).repeat_interleave(SHOTS)
    q_lab = torch.arange(WAYS).repeat_interleave(QUERIES)
    acc = []
    for b in range(0, len(support), batch):
        s = torch.from_numpy(np.array(features[support[b : b + batch]]))
        q = torch.from_numpy(np.array(features[query[b : b + batch]]))
        pred = method.scores(s, s_lab.expand(len(s), -1), q).argmax(-1)
        acc.extend(((pred == q_lab).sum(1).double() / q_lab.numel()).tolist())
    return np.asarray(acc)


@pytest.mark.parametrize("name", ["protonet", "cosine", "knn"])
def test_same_accuracies_as_a_naive_loop(cached, name):
    feats, support, query = cached
    method = methods.create(name)
    want = naive(feats, support, query, method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "NumPy array is not writable" warning
        for batch in (None, 1, 8, 37):
            got = evaluate_rows(feats, support, query, WAYS, method, batch_episodes=batch)
            assert got.dtype == np.float64 and np.array_equal(got, want), batch


def test_bit_identical_to_numpy_gathering_for_batch_dependent_heads(cached):
    """The logistic head converges per batch, so compare at equal batch sizes."""
    feats, support, query = cached
    method = methods.create("logistic")
    for batch in (5, 37):
        want = naive(feats, support, query, method, batch=batch)
        assert np.array_equal(evaluate_rows(feats, support, query, WAYS, method, batch_episodes=batch), want)


def test_inputs_other_than_a_float32_memmap(cached):
    feats, support, query = cached
    method = methods.create("protonet")
    want = evaluate_rows(feats, support, query, WAYS, method)
    assert np.array_equal(evaluate_rows(torch.from_numpy(np.array(feats)), support, query, WAYS, method), want)
    assert np.array_equal(evaluate_rows(np.asfortranarray(feats), support, query, WAYS, method), want)
    assert np.array_equal(evaluate_rows(feats.astype(np.float64), support, query, WAYS, method), want)
    # big-endian and negative strides cannot be viewed by torch: the numpy path takes them
    assert np.array_equal(evaluate_rows(feats.astype(">f4"), support, query, WAYS, method), want)
    flipped = np.array(feats)[::-1]
    back = len(feats) - 1
    assert np.array_equal(evaluate_rows(flipped, back - support, back - query, WAYS, method), want)
    # features are never written to
    snapshot = np.array(feats)
    evaluate_rows(feats, support, query, WAYS, methods.create("logistic"))
    assert np.array_equal(np.asarray(feats), snapshot)


def test_empty_and_malformed(cached):
    feats, support, query = cached
    method = methods.create("protonet")
    assert evaluate_rows(feats, support[:0], query[:0], WAYS, method).shape == (0,)
    with pytest.raises(MethodError, match="not multiples of 5 ways"):
        evaluate_rows(feats, support[:, :7], query, WAYS, method)


@pytest.mark.parametrize("name", sorted(n for n in methods.METHODS if methods.get_method_class(n).batch_invariant))
def test_batch_invariant_heads_do_not_depend_on_the_batching(cached, name):
    """Heads declaring ``batch_invariant`` get smaller default batches: it must not change a result."""
    feats, support, query = cached
    kw = {"base_mean": np.zeros(16)} if methods.get_method_class(name).needs_base_mean else {}
    method = methods.create(name, **kw)
    if "power" in method.preprocess_chain.spec:  # the power transform wants ReLU-like features >= 0
        feats = np.abs(feats)
    want = evaluate_rows(feats, support, query, WAYS, method, batch_episodes=len(support))
    for batch in (None, 1, 6):
        assert np.array_equal(evaluate_rows(feats, support, query, WAYS, method, batch_episodes=batch), want)


def test_default_batch_episodes_follows_the_declared_batch_behaviour():
    from fewshot_bench.evaluate import default_batch_episodes

    per_episode = 80 * 640 * 4  # bytes of float32 features of one 5-way 1-shot, 15-query episode

    class Shared:  # episodes may interact (e.g. one stopping test per batch): ~256 MiB
        batch_invariant = False

    class Alone:
        batch_invariant = True

    class Tuned(Alone):
        cpu_batch_bytes = 1 << 25

    assert default_batch_episodes(Shared(), 80, 640) == (1 << 28) // per_episode == 1310
    assert default_batch_episodes(Alone(), 80, 640) == (1 << 22) // per_episode == 20
    assert default_batch_episodes(Alone(), 80, 640, "cuda") == (1 << 25) // per_episode == 163
    assert default_batch_episodes(Tuned(), 80, 640) == 163  # the head's own CPU budget
    assert default_batch_episodes(Tuned(), 80, 640, torch.device("cuda")) == 163
    assert default_batch_episodes(Alone(), 80, 1 << 20) == 1  # never 0
