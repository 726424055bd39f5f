"""Episode sampler and episode files: determinism, validity, binding to data, errors."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot_bench.episodes import (
    EpisodeSet,
    EpisodeSpec,
    ListEntry,
    data_identity,
    default_filename,
    episodes_from_list,
    export_episode_list,
    find_episode_file,
    read_episode_list,
    resolve_episode_set,
    sample_episodes,
    shipped_folder,
    structure_hash,
    structure_identity,
)
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


def test_default_filename_carries_the_identity():
    assert (default_filename("cifar-fs", "test", EpisodeSpec(), "classes-0123456789ab")
            == "cifar-fs_test_classes-0123456789ab_5w1s15q_3000ep_seed0.episodes.zip")
    assert data_identity("ab" * 32) == "data-abababababab"
    assert structure_identity(["a", "b"], [3, 4]) == "classes-" + structure_hash(["a", "b"], [3, 4])[:12]
    with pytest.raises(EpisodeError, match="identity"):
        default_filename("cifar-fs", "test", EpisodeSpec(), "")


def test_two_folders_with_one_dataset_name_never_share_a_file_name():
    """Issue 14: image folders are all called image-folder; their files differ by the data's fingerprint."""
    spec = EpisodeSpec(2, 1, 1, 5)
    birds = make_split([4] * 3, fingerprint="1" * 64)
    cars = make_split([4] * 3, fingerprint="2" * 64)
    a, b = EpisodeSet.from_split(spec, birds), EpisodeSet.from_split(spec, cars)
    assert a.filename == "toy_test_data-111111111111_2w1s1q_5ep_seed0.episodes.zip"
    assert a.filename != b.filename and a.identity != b.identity
    structural = EpisodeSet.draw(spec, dataset="toy", split="test", class_names=birds.class_names,
                                 class_sizes=[4, 4, 4])
    assert structural.identity == structure_identity(birds.class_names, [4, 4, 4])


def test_save_refuses_to_replace_other_episodes_without_force(tmp_path):
    spec = EpisodeSpec(2, 1, 1, 5)
    split = make_split([4] * 3)
    a = EpisodeSet.from_split(spec, split)
    b = EpisodeSet.from_split(dataclasses.replace(spec, seed=1), split)
    path = a.save(tmp_path / "e.episodes.zip")
    assert a.save(path) == path  # the same bytes: nothing to replace
    with pytest.raises(EpisodeError, match=r"e.episodes.zip already exists and holds other episodes; add --force"):
        b.save(path)
    assert path.read_bytes() == a.to_bytes()
    b.save(path, force=True)
    assert path.read_bytes() == b.to_bytes()
    with pytest.raises(EpisodeError, match=r"is a folder"):
        a.save(tmp_path)


def test_resolve_writes_under_the_data_identity_and_reuses_it(tmp_path):
    spec = EpisodeSpec(2, 1, 1, 5)
    split = make_split([4] * 3)
    eps, created = resolve_episode_set(spec, split, tmp_path)
    assert created and eps.path == tmp_path / default_filename("toy", "test", spec, data_identity(split.fingerprint))
    again, created = resolve_episode_set(spec, split, tmp_path)
    assert not created and again.sha256() == eps.sha256()
    other = dataclasses.replace(split, fingerprint="0" * 64)  # another folder: its own file, no collision
    third, created = resolve_episode_set(spec, other, tmp_path)
    assert created and third.path != eps.path and len(list(tmp_path.iterdir())) == 2


def test_resolve_prefers_a_structure_set_and_finds_shipped_files_through_the_package(tmp_path, monkeypatch):
    """The canonical sets are package data found with importlib.resources, from any working directory."""
    from fewshot_bench.data import class_structure

    monkeypatch.chdir(tmp_path)  # no episodes/ here: only the package can supply the file
    names, sizes = class_structure("miniimagenet", "test")
    split = FakeSplit("miniimagenet", "test", names, np.repeat(np.arange(len(names)), sizes))
    found = find_episode_file(EpisodeSpec(), split, "episodes")
    assert found is not None and found == shipped_folder() / found.name
    assert str(found).startswith(str(__import__("importlib.resources").resources.files("fewshot_bench")))
    eps, created = resolve_episode_set(EpisodeSpec(), split, "episodes")
    assert not created and eps.data_fingerprint is None and not (tmp_path / "episodes").exists()
    # a copy in --episodes-dir wins over the shipped one (same name, same bytes)
    local = tmp_path / "mine" / found.name
    local.parent.mkdir()
    local.write_bytes(found.read_bytes())
    assert find_episode_file(EpisodeSpec(), split, tmp_path / "mine") == local


def test_every_shipped_file_is_named_by_its_identity_and_is_package_data():
    """Each file in fewshot_bench/episode_files/ loads, is named by its own identity, and matches a
    package-data glob of pyproject.toml (so a non-editable `pip install .` ships it)."""
    import fnmatch
    import re
    from pathlib import Path

    files = sorted(f for f in shipped_folder().iterdir() if f.name.endswith(".episodes.zip"))
    assert len(files) == 14
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()  # tomllib needs Python 3.11
    line = re.search(r'^"fewshot_bench" = \[(.*)\]$', pyproject, flags=re.M)
    globs = re.findall(r'"([^"]+)"', line.group(1))
    for f in files:
        eps = EpisodeSet.load(f)
        assert f.name == eps.filename
        assert any(fnmatch.fnmatch(f"episode_files/{f.name}", g) for g in globs), f.name


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


# --------------------------------------------------------------------------- episode lists
def _entries(rows, where="l.csv"):
    return [ListEntry(f"{where} row {i + 2}", *row) for i, row in enumerate(rows)]


STRUCT = {"dataset": "toy", "split": "test", "class_names": ["a", "b", "c"], "class_sizes": [3, 3, 2]}


def test_list_by_index_gives_the_arrays_and_labels_in_order_of_appearance():
    rows = [("e1", "support", "b", 0), ("e1", "support", "a", 2), ("e1", "query", "a", 0), ("e1", "query", "b", 2),
            ("e2", "query", "c", 1), ("e2", "support", "c", 0), ("e2", "support", "a", 1), ("e2", "query", "a", 0)]
    eps = episodes_from_list(_entries(rows), **STRUCT)
    assert eps.spec == EpisodeSpec(2, 1, 1, 2, 0)
    assert eps.classes.tolist() == [[1, 0], [2, 0]]
    assert eps.support[..., 0].tolist() == [[0, 2], [0, 1]] and eps.query[..., 0].tolist() == [[2, 0], [1, 0]]
    assert eps.origin["by"] == "index" and eps.meta()["seed"] is None


@pytest.mark.parametrize("rows, message", [
    ([("0", "support", "z", 0), ("0", "query", "a", 1)], r"l.csv row 2: class 'z' is not one of the 3 classes"),
    ([("0", "support", "c", 2), ("0", "query", "a", 1)], r"row 2: position 2 is outside class c's 2 images"),
    ([("0", "support", "a", 0), ("0", "query", "a", 0)],
     r"row 3: 0 \(a position 0\) is already in episode 0 \(l.csv row 2, support\); support and query must not"),
    ([("0", "support", "a", 0), ("0", "query", "a", 1), ("1", "support", "a", 0), ("1", "support", "b", 0),
      ("1", "query", "a", 1), ("1", "query", "b", 1)],
     r"row 4: episode 1 has 2 classes, but episode 0 has 1; .*\(ways\)"),
    ([("0", "support", "a", 0), ("0", "query", "a", 1), ("1", "support", "b", 0), ("1", "support", "b", 2),
      ("1", "query", "b", 1)], r"row 4: episode 1, class b has 2 support images, but episode 0's classes have 1"),
    ([("0", "support", "a", 0), ("0", "query", "b", 1)], r"row 2: episode 0, class a has no query image"),
    ([("0", "support", "a", 0), ("0", "query", "a", "x.png")], r"row 3: mixes a file name into a list by position"),
])
def test_list_errors_name_the_row(rows, message):
    with pytest.raises(EpisodeError, match=message):
        episodes_from_list(_entries(rows), **STRUCT)


def test_list_by_name_uses_the_resolver_and_checks_the_class():
    names = {"a/0.png": (0, 0), "a/1.png": (0, 1), "b/0.png": (1, 0), "b/1.png": (1, 1)}

    def resolve(name):
        if name not in names:
            raise LookupError(f"no image named {name!r}")
        return names[name]

    rows = [("0", "support", None, "a/0.png"), ("0", "support", "b", "b/1.png"), ("0", "query", None, "a/1.png"),
            ("0", "query", None, "b/0.png")]
    eps = episodes_from_list(_entries(rows), resolve=resolve, data_fingerprint="f" * 64, **STRUCT)
    assert eps.classes.tolist() == [[0, 1]] and eps.support.ravel().tolist() == [0, 1]
    assert eps.identity == "data-ffffffffffff"
    with pytest.raises(EpisodeError, match=r"row 2: no image named 'zz.png'"):
        episodes_from_list(_entries([("0", "support", None, "zz.png")]), resolve=resolve, **STRUCT)
    with pytest.raises(EpisodeError, match=r"row 2: a/0.png is an image of class a, not b; fix"):
        episodes_from_list(_entries([("0", "support", "b", "a/0.png")]), resolve=resolve, **STRUCT)
    with pytest.raises(EpisodeError, match=r"pass --data-root"):
        episodes_from_list(_entries(rows), **STRUCT)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_then_read_back_gives_the_same_episodes(tmp_path, fmt):
    split = make_split([6, 7, 5, 8])
    eps = EpisodeSet.from_split(EpisodeSpec(3, 2, 2, 9, seed=4), split)
    path = tmp_path / f"list.{fmt}"
    path.write_text(export_episode_list(eps, fmt))
    back = episodes_from_list(read_episode_list(path), dataset="toy", split="test", class_names=split.class_names,
                              class_sizes=split.class_sizes, data_fingerprint=split.fingerprint)
    assert back.spec == dataclasses.replace(eps.spec, seed=0)
    for name in ("classes", "support", "query"):
        np.testing.assert_array_equal(getattr(back, name), getattr(eps, name))
    assert back.identity == eps.identity


def test_export_csv_is_one_row_per_image():
    eps = EpisodeSet.draw(EpisodeSpec(2, 1, 2, 1), dataset="toy", split="test", class_names=["a", "b"],
                          class_sizes=[3, 3])
    lines = export_episode_list(eps, "csv").splitlines()
    assert lines[0] == "episode,role,class,position" and len(lines) == 1 + 2 * (1 + 2)
    assert [ln.split(",")[1] for ln in lines[1:]] == ["support"] * 2 + ["query"] * 4
    named = export_episode_list(eps, "csv", by="name", name_of=lambda c, p: f"{'ab'[c]}/{p}.png")
    assert named.splitlines()[0] == "episode,role,class,file" and named.splitlines()[1].endswith(".png")
    with pytest.raises(EpisodeError, match="--by name needs"):
        export_episode_list(eps, "csv", by="name")


@pytest.mark.parametrize("text, suffix, message", [
    ("episode,kind,class,position\n0,support,a,0\n", "csv", r"row 1: header episode,kind,class,position is not"),
    ("episode,role,position\n0,support,0\n", "csv", r"row 1: a list by position needs a class column"),
    ("episode,role,class,position\n0,support,a,0\n0,train,a,1\n", "csv", r"l.csv row 3: role 'train' is neither"),
    ("episode,role,class,position\n0,support,a,-1\n", "csv", r"row 2: position '-1' is not a non-negative"),
    ("episode,role,class,file\n0,support,a\n", "csv", r"row 2: 3 fields, the header has 4"),
    ("episode,role,class,position\n", "csv", r"holds no samples"),
    ('{"episodes": [{"classes": ["a"], "support": [[0]], "query": [[1], [2]]}]}', "json",
     r"l.json episode 0: query must be 1 lists"),
    ('{"episodes": [{"classes": ["a"], "support": [[0.5]], "query": [[1]]}]}', "json",
     r"l.json episode 0 support\[0\]\[0\]: position 0.5 is not"),
    ("{", "json", r"l.json line 1: not valid JSON"),
    ("a", "txt", r"unknown format .txt"),
])
def test_bad_list_files_are_refused_with_the_row(tmp_path, text, suffix, message):
    path = tmp_path / f"l.{suffix}"
    path.write_text(text)
    with pytest.raises(EpisodeError, match=message):
        read_episode_list(path)
