"""Episode sampler and episode files: determinism, validity, binding to data, errors."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot_bench.episodes import EpisodeSet, EpisodeSpec, default_filename, sample_episodes
from fewshot_bench.errors import EpisodeError


@dataclasses.dataclass
class FakeSplit:
    """Split-like object: rows are stored shuffled to prove addressing is by (class, position)."""

    dataset: str
    split: str
    class_names: tuple
    labels: np.ndarray
    fingerprint: str = "f" * 64
    source: str = "fake"

    @property
    def class_sizes(self):
        return np.bincount(self.labels, minlength=len(self.class_names))

    @property
    def class_index(self):
        return [np.flatnonzero(self.labels == c) for c in range(len(self.class_names))]


def make_split(sizes, seed=0, **kw):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.random.default_rng(seed).permutation(labels)
    return FakeSplit("toy", "test", tuple(f"class{c:02d}" for c in range(len(sizes))), labels, **kw)


def check_valid(spec, classes, support, query, sizes):
    E, N, K, Q = spec.n_episodes, spec.ways, spec.shots, spec.queries
    assert classes.shape == (E, N) and support.shape == (E, N, K) and query.shape == (E, N, Q)
    for e in range(E):
        assert len(set(classes[e])) == N
        for n in range(N):
            pos = np.concatenate([support[e, n], query[e, n]])
            assert len(set(pos)) == K + Q
            assert pos.min() >= 0 and pos.max() < sizes[classes[e, n]]


def test_sampler_is_valid_and_deterministic():
    spec = EpisodeSpec(ways=5, shots=2, queries=3, n_episodes=300, seed=7)
    sizes = np.array([5, 9, 6, 30, 8, 12, 7])
    a = sample_episodes(spec, sizes)
    b = sample_episodes(spec, sizes)
    check_valid(spec, *a, sizes)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = sample_episodes(dataclasses.replace(spec, seed=8), sizes)
    assert not np.array_equal(a[0], c[0])


def test_sampler_covers_classes_and_positions_uniformly():
    spec = EpisodeSpec(ways=2, shots=1, queries=1, n_episodes=4000, seed=0)
    classes, support, _ = sample_episodes(spec, np.array([4, 4, 4, 4]))
    counts = np.bincount(classes.ravel(), minlength=4)
    assert counts.min() > 0.22 * classes.size and counts.max() < 0.28 * classes.size
    pos = np.bincount(support.ravel(), minlength=4)
    assert pos.min() > 0.22 * support.size


@st.composite
def valid_specs(draw):
    """A feasible (spec, class sizes): N <= classes, K + Q <= the smallest class."""
    ways, shots, queries = draw(st.integers(1, 8)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    smallest = shots + queries
    sizes = draw(st.lists(st.integers(smallest, smallest + 20), min_size=ways, max_size=ways + 10))
    spec = EpisodeSpec(ways, shots, queries, draw(st.integers(1, 25)), draw(st.integers(0, 2**63 - 1)))
    return spec, np.array(sizes)


@settings(max_examples=100, deadline=None)
@given(valid_specs())
def test_property_valid_specs_give_valid_episodes(spec_sizes):
    """Issue 7: classes distinct within an episode, support and query never overlap, exactly K and Q
    samples per class, episode labels 0..N-1 (checked on positions and on the rows of a shuffled split)."""
    spec, sizes = spec_sizes
    E, N, K, Q = spec.n_episodes, spec.ways, spec.shots, spec.queries
    classes, support, query = sample_episodes(spec, sizes)
    check_valid(spec, classes, support, query, sizes)
    assert classes.min() >= 0 and classes.max() < len(sizes)

    split = make_split(list(sizes), seed=spec.seed % 1000)
    eps = EpisodeSet.from_split(spec, split)
    s_rows, q_rows = eps.indices(split)
    s_lab, q_lab = eps.support_labels, eps.query_labels
    assert s_rows.shape == (E, N * K) and q_rows.shape == (E, N * Q)
    assert s_lab.tolist() == np.repeat(np.arange(N), K).tolist()  # labels 0..N-1, K each
    assert q_lab.tolist() == np.repeat(np.arange(N), Q).tolist()  # labels 0..N-1, Q each
    for e in range(E):
        rows = np.concatenate([s_rows[e], q_rows[e]])
        assert len(np.unique(rows)) == N * (K + Q)  # no image twice; support and query disjoint
        assert len(np.unique(classes[e])) == N  # classes distinct
        # episode label n means dataset class classes[e, n], for support and query alike
        np.testing.assert_array_equal(split.labels[s_rows[e]], classes[e][s_lab])
        np.testing.assert_array_equal(split.labels[q_rows[e]], classes[e][q_lab])
        assert np.bincount(s_lab, minlength=N).tolist() == [K] * N
        assert np.bincount(q_lab, minlength=N).tolist() == [Q] * N


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=12),
    ways=st.integers(1, 15), shots=st.integers(1, 10), queries=st.integers(1, 15),
    seed=st.integers(0, 2**32),
)
def test_property_impossible_specs_are_refused(sizes, ways, shots, queries, seed):
    sizes = np.array(sizes)
    spec = EpisodeSpec(ways, shots, queries, 3, seed)
    if ways <= len(sizes) and shots + queries <= sizes.min():
        check_valid(spec, *sample_episodes(spec, sizes), sizes)
        return
    with pytest.raises(EpisodeError, match=r"--ways|--shots"):
        sample_episodes(spec, sizes)


def test_file_round_trip_is_byte_identical(tmp_path):
    split = make_split([20] * 8)
    spec = EpisodeSpec(5, 1, 15, 50, seed=3)
    p1 = EpisodeSet.from_split(spec, split).save(tmp_path / "a.episodes.zip")
    p2 = EpisodeSet.from_split(spec, split).save(tmp_path / "b.episodes.zip")
    assert p1.read_bytes() == p2.read_bytes()
    loaded = EpisodeSet.load(p1)
    assert loaded.spec == spec and loaded.class_names == split.class_names
    assert loaded.sha256() == EpisodeSet.from_split(spec, split).sha256()
    for name in ("classes", "support", "query"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(EpisodeSet.from_split(spec, split), name))


def test_addressing_is_independent_of_row_order():
    """The same (class, position) structure stored in another row order gives the same classes per episode."""
    spec = EpisodeSpec(3, 2, 2, 20, seed=1)
    a, b = make_split([6] * 5, seed=1), make_split([6] * 5, seed=2)
    assert not np.array_equal(a.labels, b.labels)
    eps = EpisodeSet.from_split(spec, a)
    ra, _ = eps.indices(a)
    rb, _ = eps.indices(b)
    np.testing.assert_array_equal(a.labels[ra], b.labels[rb])


def test_default_filename():
    assert default_filename("cifar-fs", "test", EpisodeSpec()) == "cifar-fs_test_5w1s15q_3000ep_seed0.episodes.zip"


@pytest.mark.parametrize("kw, flag", [({"ways": 0}, "--ways"), ({"shots": -1}, "--shots"),
                                      ({"queries": 0}, "--queries"), ({"n_episodes": 0}, "--episodes"),
                                      ({"seed": -1}, "--seed"), ({"ways": 2.5}, "--ways")])
def test_non_positive_spec_is_refused(kw, flag):
    with pytest.raises(EpisodeError, match=flag):
        EpisodeSpec(**kw)


def test_impossible_spec_quotes_numbers():
    split = make_split([20, 20, 7])
    with pytest.raises(EpisodeError, match=r"--ways 5 is more than the 3 classes"):
        EpisodeSet.from_split(EpisodeSpec(ways=5), split)
    with pytest.raises(EpisodeError, match=r"= 16 images per class, but the smallest class .*\(class02\) has 7"):
        EpisodeSet.from_split(EpisodeSpec(ways=3, shots=1, queries=15), split)


def test_episode_file_refuses_other_data(tmp_path):
    split = make_split([10] * 6)
    path = EpisodeSet.from_split(EpisodeSpec(5, 1, 5, 10), split).save(tmp_path / "e.episodes.zip")
    eps = EpisodeSet.load(path)
    other = dataclasses.replace(split, fingerprint="0" * 64)
    with pytest.raises(EpisodeError, match=r"was drawn from data with fingerprint ffffffffffff"):
        eps.indices(other)
    fewer = make_split([10] * 5 + [9])
    with pytest.raises(EpisodeError, match=r"expects 10 images of class class05 but the data has 9"):
        eps.check_compatible(fewer)
    renamed = dataclasses.replace(split, class_names=tuple(f"x{c}" for c in range(6)))
    with pytest.raises(EpisodeError, match=r"different ones"):
        eps.check_compatible(renamed)


def test_structure_only_set_accepts_any_copy_with_that_structure():
    eps = EpisodeSet.draw(EpisodeSpec(2, 1, 1, 5), dataset="toy", split="test",
                          class_names=[f"class{c:02d}" for c in range(3)], class_sizes=[4, 4, 4])
    eps.check_compatible(make_split([4, 4, 4], fingerprint="a" * 64))
    eps.check_compatible(make_split([4, 4, 4], fingerprint="b" * 64))


def _rewrite(path, out, **arrays):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            name = item.filename.removesuffix(".npy")
            if name in arrays:
                import io
                buf = io.BytesIO()
                np.save(buf, arrays[name])
                data = buf.getvalue()
            zout.writestr(item, data)


def test_out_of_range_and_damaged_files_are_refused(tmp_path):
    split = make_split([10] * 6)
    eps = EpisodeSet.from_split(EpisodeSpec(5, 1, 5, 10), split)
    path = eps.save(tmp_path / "e.episodes.zip")
    bad_query = eps.query.copy()
    bad_query[0, 0, 0] = 10
    _rewrite(path, tmp_path / "bad.episodes.zip", query=bad_query.astype("<i4"))
    with pytest.raises(EpisodeError, match=r"bad.episodes.zip: query positions out of range"):
        EpisodeSet.load(tmp_path / "bad.episodes.zip")
    bad_classes = eps.classes.copy()
    bad_classes[0, 0] = 6
    _rewrite(path, tmp_path / "bad2.episodes.zip", classes=bad_classes.astype("<i4"))
    with pytest.raises(EpisodeError, match=r"class ids outside 0..5"):
        EpisodeSet.load(tmp_path / "bad2.episodes.zip")
    (tmp_path / "trunc.episodes.zip").write_bytes(path.read_bytes()[:100])
    with pytest.raises(EpisodeError, match=r"trunc.episodes.zip is damaged or not an episode file"):
        EpisodeSet.load(tmp_path / "trunc.episodes.zip")
    with pytest.raises(EpisodeError, match=r"does not exist"):
        EpisodeSet.load(tmp_path / "missing.episodes.zip")
