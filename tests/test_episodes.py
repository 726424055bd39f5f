"""Episode sampler and episode files: determinism, validity, binding to data, errors."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot_bench.data import class_structure
from fewshot_bench.episodes import (
    EpisodeSet,
    EpisodeSpec,
    ListEntry,
    check_feasible,
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


# =========================================================================== exactly (issue 15: mutation score)
def exact(text: str) -> str:
    """A pattern matching ``text`` and nothing else."""
    return "^" + re.escape(text) + "$"


def small_set(**kw) -> EpisodeSet:
    kw = {"dataset": "toy", "split": "test", "class_names": ["a", "b", "c"], "class_sizes": [3, 4, 3], **kw}
    return EpisodeSet.draw(EpisodeSpec(2, 1, 2, 3, seed=1), **kw)


# --------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("name", ["cifar-fs_test_classes-6f0dbc1faa14_5w1s15q_3000ep_seed0.episodes.zip",
                                  "miniimagenet_val_classes-757de999f06a_5w5s15q_3000ep_seed0.episodes.zip"])
def test_shipped_files_are_regenerated_byte_for_byte(name):
    """The promise of the format: the same spec, seed and structure give the very same file (3000
    episodes: 23 whole chunks of 128 and a partial one)."""
    shipped = shipped_folder() / name
    dataset, split = name.split("_")[:2]
    names, sizes = class_structure(dataset, split)
    shots = int(re.search(r"_5w(\d)s", name).group(1))
    eps = EpisodeSet.draw(EpisodeSpec(5, shots, 15, 3000, 0), dataset=dataset, split=split, class_names=names,
                          class_sizes=sizes)
    assert eps.filename == name
    assert eps.to_bytes() == shipped.read_bytes()
    assert eps.sha256() == EpisodeSet.load(shipped).sha256()


def test_zip_members_are_fixed():
    data = small_set().to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["meta.json", "classes.npy", "support.npy", "query.npy"]
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.external_attr == 0o644 << 16
        meta = zf.read("meta.json").decode()
        assert meta.endswith("}\n") and meta.startswith('{\n "addressing"')  # indent 1, sorted keys
        for name, shape in (("classes", (3, 2)), ("support", (3, 2, 1)), ("query", (3, 2, 2))):
            arr = np.lib.format.read_array(io.BytesIO(zf.read(f"{name}.npy")))
            assert arr.dtype == np.dtype("<i4") and arr.shape == shape


def test_small_draw_is_pinned():
    """Two chunks (130 episodes), classes of unequal sizes: the sampler's exact output."""
    spec = EpisodeSpec(2, 1, 1, 130, seed=5)
    classes, support, query = sample_episodes(spec, [3, 5, 4])
    assert classes.dtype == support.dtype == query.dtype == np.int32
    assert support.flags.c_contiguous and query.flags.c_contiguous
    assert classes[:3].tolist() == PINNED["classes"] and classes[-2:].tolist() == PINNED["classes_end"]
    assert support[:3, :, 0].tolist() == PINNED["support"] and query[-2:, :, 0].tolist() == PINNED["query_end"]
    for e in range(130):
        for n in range(2):
            assert max(support[e, n, 0], query[e, n, 0]) < [3, 5, 4][classes[e, n]]


PINNED = {"classes": [[2, 0], [1, 0], [1, 2]], "classes_end": [[0, 1], [1, 0]],
          "support": [[0, 0], [1, 1], [3, 0]], "query_end": [[1, 4], [4, 2]]}


def test_meta_of_a_drawn_and_of_an_imported_set():
    eps = small_set(data_fingerprint="ab" * 32)
    meta = eps.meta()
    assert meta == {
        "format": "fewshot-bench-episodes", "format_version": 1, "dataset": "toy", "split": "test",
        "ways": 2, "shots": 1, "queries": 2, "n_episodes": 3, "seed": 1,
        "sampler": "numpy PCG64; argsort of uniform keys; chunk 128",
        "class_names": ["a", "b", "c"], "class_sizes": [3, 4, 3],
        "structure_sha256": structure_hash(["a", "b", "c"], [3, 4, 3]), "data_fingerprint": "ab" * 32,
        "addressing": "(class, position): position indexes the class's rows in the split's canonical order "
                      "(sorted by SHA-1 of image bytes); classes in sorted class-name order",
    }
    imported = episodes_from_list([ListEntry("r2", "0", "support", "a", 0), ListEntry("r3", "0", "query", "a", 1)],
                                  dataset="toy", split="test", class_names=["a"], class_sizes=[2],
                                  origin={"file": "l.csv", "sha256": "00"})
    meta = imported.meta()
    assert (meta["seed"], meta["sampler"]) == (None, "imported from an episode list")
    assert meta["origin"] == {"file": "l.csv", "sha256": "00", "by": "index"}
    assert structure_hash(["a", "b"], [3, 4]) == "e7720ea94f02e4e19475fed9e140cfee113df4d8d0c6d6b5d6d3c12d66aebf02"


def test_labels():
    eps = EpisodeSet.draw(EpisodeSpec(3, 2, 1, 2), dataset="t", split="s", class_names="abc",
                          class_sizes=[3, 3, 3])
    assert eps.support_labels.tolist() == [0, 0, 1, 1, 2, 2] and eps.support_labels.dtype == np.int64
    assert eps.query_labels.tolist() == [0, 1, 2] and eps.query_labels.dtype == np.int64


# --------------------------------------------------------------------------- spec and feasibility
@pytest.mark.parametrize("kw, message", [
    ({"ways": 0}, "--ways must be a positive integer, got 0"),
    ({"shots": 0}, "--shots must be a positive integer, got 0"),
    ({"queries": -2}, "--queries must be a positive integer, got -2"),
    ({"n_episodes": 0}, "--episodes must be a positive integer, got 0"),
    ({"ways": True}, "--ways must be a positive integer, got True"),
    ({"shots": "1"}, "--shots must be a positive integer, got '1'"),
    ({"seed": -1}, "--seed must be a non-negative integer, got -1"),
    ({"seed": True}, "--seed must be a non-negative integer, got True"),
    ({"seed": 1.0}, "--seed must be a non-negative integer, got 1.0"),
])
def test_spec_errors(kw, message):
    with pytest.raises(EpisodeError, match=exact(message)):
        EpisodeSpec(**kw)


def test_spec_boundaries_are_accepted():
    spec = EpisodeSpec(ways=1, shots=1, queries=1, n_episodes=1, seed=0)
    assert spec.tag == "1w1s1q_1ep_seed0"
    assert EpisodeSpec(ways=np.int64(2), seed=np.int32(3)).tag == "2w1s15q_3000ep_seed3"
    assert EpisodeSpec().tag == "5w1s15q_3000ep_seed0"


def test_feasibility_boundaries_and_messages():
    check_feasible(EpisodeSpec(3, 2, 3, 1), np.array([5, 6, 5]))  # exactly enough classes and images
    with pytest.raises(EpisodeError, match=exact("--ways 4 is more than the 3 classes in the data; use --ways 3 "
                                                 "or fewer")):
        check_feasible(EpisodeSpec(4, 1, 1, 1), np.array([5, 6, 5]))
    with pytest.raises(EpisodeError, match=exact(
            "--shots 2 + --queries 4 = 6 images per class, but the smallest class in toy/test (b) has 5; "
            "lower --shots/--queries to at most 5 in total")):
        check_feasible(EpisodeSpec(2, 2, 4, 1), np.array([6, 5, 7]), ["a", "b", "c"], where="toy/test")
    with pytest.raises(EpisodeError, match=exact(
            "--shots 2 + --queries 4 = 6 images per class, but the smallest class in the data has 5; "
            "lower --shots/--queries to at most 5 in total")):
        check_feasible(EpisodeSpec(2, 2, 4, 1), [6, 5, 7])
    with pytest.raises(EpisodeError, match=exact("2 class names but 3 class sizes")):
        EpisodeSet.draw(EpisodeSpec(1, 1, 1, 1), dataset="t", split="s", class_names="ab", class_sizes=[2, 2, 2])
    with pytest.raises(EpisodeError, match=r"smallest class in t/s \(b\) has 1"):
        EpisodeSet.draw(EpisodeSpec(1, 1, 1, 1), dataset="t", split="s", class_names="ab", class_sizes=[2, 1])


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("identity", ["", "data_x", "a/b"])
def test_default_filename_refuses_identities_that_break_the_name(identity):
    with pytest.raises(EpisodeError, match=exact(f"episode file identity {identity!r} must be data-<hex> or "
                                                 "classes-<hex>")):
        default_filename("toy", "test", EpisodeSpec(), identity)


def test_find_without_a_directory_looks_only_at_shipped_files(tmp_path):
    split = make_split([4] * 3)
    assert find_episode_file(EpisodeSpec(2, 1, 1, 5), split, None) is None
    names, sizes = class_structure("cifar-fs", "test")
    cifar = FakeSplit("cifar-fs", "test", names, np.repeat(np.arange(len(names)), sizes))
    found = find_episode_file(EpisodeSpec(), cifar, None)
    assert found.name == "cifar-fs_test_classes-6f0dbc1faa14_5w1s15q_3000ep_seed0.episodes.zip"


def test_find_prefers_the_structure_name_then_the_data_name(tmp_path):
    spec = EpisodeSpec(2, 1, 1, 5)
    split = make_split([4] * 3)
    by_data = EpisodeSet.from_split(spec, split).save(tmp_path / EpisodeSet.from_split(spec, split).filename)
    assert find_episode_file(spec, split, tmp_path) == by_data
    structural = EpisodeSet.draw(spec, dataset="toy", split="test", class_names=split.class_names,
                                 class_sizes=split.class_sizes)
    by_structure = structural.save(tmp_path / structural.filename)
    assert find_episode_file(spec, split, tmp_path) == by_structure
    assert find_episode_file(spec, split, str(tmp_path)) == by_structure


def test_resolve_without_create_draws_but_writes_nothing(tmp_path):
    spec = EpisodeSpec(2, 1, 1, 5)
    split = make_split([4] * 3)
    eps, created = resolve_episode_set(spec, split, tmp_path / "eps", create=False)
    assert created and eps.path is None and eps.data_fingerprint == split.fingerprint
    assert not (tmp_path / "eps").exists()
    eps, created = resolve_episode_set(spec, split, tmp_path / "eps")
    assert created and eps.path == tmp_path / "eps" / eps.filename and eps.path.is_file()
    assert isinstance(eps.path, type(tmp_path))


# --------------------------------------------------------------------------- binding to data
def test_check_compatible_messages(tmp_path):
    hint = "; regenerate it with `fewshot-bench episodes --force` or pass the matching --data-root"
    split = make_split([5] * 7)
    path = EpisodeSet.from_split(EpisodeSpec(2, 1, 1, 4), split).save(tmp_path / "e.episodes.zip")
    eps = EpisodeSet.load(path)
    where = f"episode file {path}"
    other = FakeSplit("toy", "val", split.class_names, split.labels)
    with pytest.raises(EpisodeError, match=exact(f"{where} is for toy/test, not toy/val{hint}")):
        eps.check_compatible(other)
    other = FakeSplit("other", "test", split.class_names, split.labels)
    with pytest.raises(EpisodeError, match=exact(f"{where} is for toy/test, not other/test{hint}")):
        eps.check_compatible(other)
    renamed = FakeSplit("toy", "test", ("class00", "class01", "x", "y", "z", "w", "v"), split.labels)
    with pytest.raises(EpisodeError, match=exact(f"{where} was drawn from 7 classes but the data has 7 different "
                                                 f"ones (e.g. class02, class03, class04){hint}")):
        eps.check_compatible(renamed)
    sizes = make_split([5, 5, 4, 5, 5, 5, 6])
    with pytest.raises(EpisodeError, match=exact(f"{where} expects 5 images of class class02 but the data has 4"
                                                 f"{hint}")):
        eps.check_compatible(sizes)
    refp = FakeSplit("toy", "test", split.class_names, split.labels, fingerprint="0123456789abcdef" * 4,
                     source="/data/toy")
    with pytest.raises(EpisodeError, match=exact(f"{where} was drawn from data with fingerprint ffffffffffff but "
                                                 f"/data/toy has 0123456789ab{hint}")):
        eps.check_compatible(refp)
    unsaved = EpisodeSet.from_split(EpisodeSpec(2, 1, 1, 4), split)
    with pytest.raises(EpisodeError, match=r"^the episode set is for toy/test, not toy/val;"):
        unsaved.check_compatible(FakeSplit("toy", "val", split.class_names, split.labels))


def test_indices_are_rows_of_the_split():
    """Rows stored shuffled: each (class, position) is the position-th row of that class."""
    split = make_split([3, 4, 2], seed=3)
    eps = EpisodeSet.from_split(EpisodeSpec(2, 1, 1, 6, seed=2), split)
    s_rows, q_rows = eps.indices(split)
    assert s_rows.dtype == q_rows.dtype == np.int64 and s_rows.shape == (6, 2) and q_rows.shape == (6, 2)
    index = split.class_index
    for e in range(6):
        for n in range(2):
            c = eps.classes[e, n]
            assert s_rows[e, n] == index[c][eps.support[e, n, 0]]
            assert q_rows[e, n] == index[c][eps.query[e, n, 0]]


# --------------------------------------------------------------------------- loading
def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _members(eps: EpisodeSet) -> dict:
    with zipfile.ZipFile(io.BytesIO(eps.to_bytes())) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_load_refuses_other_formats_with_the_numbers(tmp_path):
    members = _members(small_set())
    meta = json.loads(members["meta.json"])
    for fmt, version, shown in (("other", 1, "'other' version 1"), ("fewshot-bench-episodes", 2,
                                                                     "'fewshot-bench-episodes' version 2")):
        path = _zip(tmp_path / "x.zip", {**members, "meta.json": json.dumps({**meta, "format": fmt,
                                                                               "format_version": version})})
        with pytest.raises(EpisodeError, match=exact(f"episode file {path} has format {shown}, expected "
                                                     "fewshot-bench-episodes 1; regenerate it")):
            EpisodeSet.load(path)
    path = _zip(tmp_path / "y.zip", {**members, "meta.json": "[1, 2]"})
    with pytest.raises(EpisodeError, match=exact(f"episode file {path} has format [1, 2] version None, expected "
                                                 "fewshot-bench-episodes 1; regenerate it")):
        EpisodeSet.load(path)


def test_load_of_a_damaged_file_is_one_line(tmp_path):
    members = _members(small_set())
    path = _zip(tmp_path / "x.zip", {k: v for k, v in members.items() if k != "query.npy"})
    with pytest.raises(EpisodeError, match=exact(f"episode file {path} is damaged or not an episode file "
                                                 "(\"There is no item named 'query.npy' in the archive\"); "
                                                 "regenerate it with `fewshot-bench episodes`")):
        EpisodeSet.load(path)
    path = tmp_path / "missing.zip"
    with pytest.raises(EpisodeError, match=exact(f"episode file {path} does not exist; create it with "
                                                 "`fewshot-bench episodes`")):
        EpisodeSet.load(str(path))


def test_load_refuses_members_that_unpack_too_large(tmp_path, monkeypatch):
    import fewshot_bench.episodes as E

    eps = small_set()
    path = eps.save(tmp_path / "e.episodes.zip")
    total = sum(len(v) for v in _members(eps).values())
    monkeypatch.setattr(E, "_MAX_UNPACKED", total)
    assert EpisodeSet.load(path).spec == eps.spec  # exactly the limit is allowed
    monkeypatch.setattr(E, "_MAX_UNPACKED", total - 1)
    with pytest.raises(EpisodeError, match=re.escape(f"(members unpack to {total} bytes, over the {total - 1} "
                                                     "allowed)")):
        EpisodeSet.load(path)
    assert E._MAX_UNPACKED - 1 < (1 << 30)


def test_load_keeps_path_origin_and_fingerprint(tmp_path):
    eps = small_set(data_fingerprint="c" * 64)
    path = eps.save(tmp_path / "e.episodes.zip")
    back = EpisodeSet.load(str(path))
    assert back.path == path and back.data_fingerprint == "c" * 64 and back.origin is None
    assert back.spec == eps.spec and back.class_sizes == (3, 4, 3) and back.dataset == "toy" and back.split == "test"
    assert back.classes.dtype == back.support.dtype == back.query.dtype == np.int64
    imported = episodes_from_list([ListEntry("r2", "0", "support", "a", 0), ListEntry("r3", "0", "query", "a", 1)],
                                  dataset="toy", split="test", class_names=["a"], class_sizes=[2])
    back = EpisodeSet.load(imported.save(tmp_path / "i.episodes.zip"))
    assert back.origin == {"file": "the episode list", "by": "index"} and back.spec.seed == 0
    assert back.meta()["seed"] is None


def test_load_refuses_a_missing_seed_of_a_drawn_set(tmp_path):
    members = _members(small_set())
    meta = json.loads(members["meta.json"])
    del meta["seed"]
    path = _zip(tmp_path / "x.zip", {**members, "meta.json": json.dumps(meta)})
    with pytest.raises(EpisodeError, match=exact(f"episode file {path} lacks 'seed' in meta.json; regenerate it")):
        EpisodeSet.load(path)
    meta["seed"] = None  # a drawn set (no origin) must have a seed
    path = _zip(tmp_path / "y.zip", {**members, "meta.json": json.dumps(meta)})
    with pytest.raises(EpisodeError, match=r"invalid meta.json \(--seed must be a non-negative integer, got None\)"):
        EpisodeSet.load(path)


def test_validate_messages(tmp_path):
    eps = small_set()
    members = _members(eps)

    def npy(arr):
        buf = io.BytesIO()
        np.save(buf, np.asarray(arr, dtype="<i4"))
        return buf.getvalue()

    cases = [
        ({"classes.npy": npy(eps.classes[:2])}, "classes has shape (2, 2), expected (3, 2); regenerate it"),
        ({"support.npy": npy(eps.support[..., :0])}, "support has shape (3, 2, 0), expected (3, 2, 1); regenerate it"),
        ({"query.npy": npy(eps.query[..., :1])}, "query has shape (3, 2, 1), expected (3, 2, 2); regenerate it"),
        ({"classes.npy": npy(np.where(eps.classes == eps.classes[0, 0], -1, eps.classes))},
         "class ids outside 0..2; the file is corrupt, regenerate it"),
        ({"classes.npy": npy(np.where(eps.classes == eps.classes[0, 0], 3, eps.classes))},
         "class ids outside 0..2; the file is corrupt, regenerate it"),
        ({"support.npy": npy(np.full_like(eps.support, -1))},
         "support positions out of range for their class sizes; the file is corrupt, regenerate it"),
        ({"query.npy": npy(np.full_like(eps.query, 3))},
         "query positions out of range for their class sizes; the file is corrupt, regenerate it"),
    ]
    for i, (change, message) in enumerate(cases):
        path = _zip(tmp_path / f"{i}.zip", {**members, **change})
        with pytest.raises(EpisodeError, match=exact(f"episode file {path}: {message}")):
            EpisodeSet.load(path)
    # the largest valid ids and positions load
    classes = np.array([[1, 2]] * 3)
    support = np.array([[[3], [2]]] * 3)
    query = np.array([[[0, 2], [0, 1]]] * 3)
    path = _zip(tmp_path / "ok.zip", {**members, "classes.npy": npy(classes), "support.npy": npy(support),
                                      "query.npy": npy(query)})
    assert EpisodeSet.load(path).support.max() == 3


def test_sha256_of_a_file_of_a_traversable_and_of_bytes(tmp_path):
    import hashlib

    eps = small_set()
    digest = hashlib.sha256(eps.to_bytes()).hexdigest()
    assert eps.sha256() == digest
    path = tmp_path / "e.episodes.zip"
    path.write_bytes(eps.to_bytes() + b"")
    loaded = EpisodeSet.load(path)
    path.write_bytes(b"changed")  # the file is what is hashed, not its content when loaded
    assert loaded.sha256() == hashlib.sha256(b"changed").hexdigest()
    path.unlink()  # gone: the serialised bytes
    assert loaded.sha256() == digest
    shipped = shipped_folder() / "cifar-fs_test_classes-6f0dbc1faa14_5w1s15q_3000ep_seed0.episodes.zip"
    assert EpisodeSet.load(shipped).sha256() == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_save_names_the_flag_and_makes_folders(tmp_path):
    a, b = small_set(), EpisodeSet.draw(EpisodeSpec(2, 1, 2, 3, seed=2), dataset="toy", split="test",
                                         class_names="abc", class_sizes=[3, 4, 3])
    path = a.save(str(tmp_path / "e.zip"))
    assert path == tmp_path / "e.zip"
    with pytest.raises(EpisodeError, match=exact(f"{path} already exists and holds other episodes; add --overwrite "
                                                 "to replace it, or choose another file name")):
        b.save(path, flag="--overwrite")
    with pytest.raises(EpisodeError, match=exact(f"{tmp_path} is a folder; add --force to replace it, or choose "
                                                 "another file name")):
        a.save(tmp_path)


# --------------------------------------------------------------------------- episode lists
def _list(tmp_path, text, suffix="csv"):
    path = tmp_path / f"l.{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("position, shown", [("x", "'x'"), ("-1", "'-1'"), ("\u00b2", "'\u00b2'"), ("1.0", "'1.0'"),
                                             ("", "''")])
def test_csv_positions_that_are_not_counts(tmp_path, position, shown):
    path = _list(tmp_path, f"episode,role,class,position\n0,support,a,{position}\n")
    with pytest.raises(EpisodeError, match=exact(f"{path} row 2: position {shown} is not a non-negative integer")):
        read_episode_list(path)


def test_csv_reads_every_column_by_name(tmp_path):
    path = _list(tmp_path, "Position , CLASS,role,episode,note\n 0 ,a, Support ,e1,x\n\n,,,,\n2,b,QUERY,e1,y\n")
    entries = read_episode_list(path)
    assert entries == [ListEntry(f"{path} row 2", "e1", "support", "a", 0),
                       ListEntry(f"{path} row 5", "e1", "query", "b", 2)]
    path = _list(tmp_path, "\ufeffepisode,role,file\n0,query, a/1.png \n")  # a BOM, no class column
    assert read_episode_list(path) == [ListEntry(f"{path} row 2", "0", "query", None, "a/1.png")]
    path = _list(tmp_path, "episode,role,class,file\n0,query,,a/1.png\n")  # an empty class is no class
    assert read_episode_list(path)[0].cls is None


@pytest.mark.parametrize("text, message", [
    ("", "row 1: header (empty) is not a header episode,role,class,file (by file name) or "
         "episode,role,class,position (by index)"),
    ("role,class,file\n", "row 1: header role,class,file is not a header episode,role,class,file (by file name) or "
                          "episode,role,class,position (by index)"),
    ("episode,class,file\n", "row 1: header episode,class,file is not a header"),
    ("episode,role,class\n", "row 1: header episode,role,class is not a header"),
    ("episode,role,class,file,position\n", "row 1: header episode,role,class,file,position is not a header"),
    ("episode,role,position\n", "row 1: a list by position needs a class column; a header episode,role,class,file "
                                "(by file name) or episode,role,class,position (by index)"),
    ("episode,role,class,file\n0,support,a,  \n", "row 2: empty file name; give the image's path under --data-root"),
    ("episode,role,class,file\n0,support,a\n", "row 2: 3 fields, the header has 4; fill every column"),
    ("episode,role,class,file\n0,Train,a,x.png\n", "row 2: role 'Train' is neither support nor query"),
])
def test_csv_errors_whole(tmp_path, text, message):
    path = _list(tmp_path, text)
    with pytest.raises(EpisodeError, match="^" + re.escape(f"{path} {message}")):
        read_episode_list(path)


def test_list_file_errors_whole(tmp_path):
    path = tmp_path / "none.csv"
    with pytest.raises(EpisodeError, match=exact(f"episode list {path} does not exist; give a .csv or .json file")):
        read_episode_list(path)
    path = _list(tmp_path, "x", "")
    path = path.rename(tmp_path / "noext")
    with pytest.raises(EpisodeError, match=exact(f"episode list {path}: unknown format (no extension); give a .csv "
                                                 "or .json file (see `fewshot-bench episodes import --help`)")):
        read_episode_list(path)
    path = tmp_path / "l.CSV"
    path.write_text("episode,role,class,position\n0,support,a,1\n")
    assert read_episode_list(path)[0].ref == 1  # the suffix in any case
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe[")
    with pytest.raises(EpisodeError, match="^" + re.escape(f"episode list {path}: cannot read it (")
                       + r".*\); save it as UTF-8 text$"):
        read_episode_list(path)


JSON_SHAPE = ('expected {"episodes": [...]} or a list of episodes, each {"classes": [...], "support": [[...], ...], '
              '"query": [[...], ...]}')


@pytest.mark.parametrize("doc, message", [
    ({"episode": []}, JSON_SHAPE),
    ("x", JSON_SHAPE),
    ([[1]], "episode 0: expected an object with classes, support and query"),
    ([{"classes": ["a"], "support": [[0]]}], "episode 0: expected an object with classes, support and query"),
    ([{"classes": "a", "support": [[0]], "query": [[1]]}], "episode 0: classes must be a list of class names"),
    ([{"classes": ["a", 1], "support": [[0], [0]], "query": [[1], [1]]}],
     "episode 0: classes must be a list of class names"),
    ([{"classes": ["a"], "support": [0], "query": [[1]]}], "episode 0: support must be 1 lists, one per class in "
                                                           "classes"),
    ([{"classes": ["a"], "support": "x", "query": [[1]]}], "episode 0: support must be 1 lists, one per class in classes"),
    ([{"classes": ["a", "b"], "support": [[0], [1]], "query": [[1], [2]]},
      {"classes": ["a"], "support": [[0]], "query": [[" "]]}],
     "episode 1 query[0][0]: empty file name; give the image's path under --data-root"),
    ([{"classes": ["a"], "support": [[True]], "query": [[1]]}],
     "episode 0 support[0][0]: position True is not a non-negative integer"),
    ([{"classes": ["a"], "support": [[-3]], "query": [[1]]}],
     "episode 0 support[0][0]: position -3 is not a non-negative integer"),
])
def test_json_errors_whole(tmp_path, doc, message):
    path = _list(tmp_path, json.dumps(doc), "json")
    sep = ": " if message == JSON_SHAPE else " "
    with pytest.raises(EpisodeError, match=exact(f"{path}{sep}{message}")):
        read_episode_list(path)


def test_json_lists_read_every_sample_in_order(tmp_path):
    doc = [{"classes": ["b", "a"], "support": [[" b/1.png "], ["a/0.png"]], "query": [["b/2.png"], ["a/3.png"]]}]
    path = _list(tmp_path, json.dumps({"episodes": doc}), "json")
    at = f"{path} episode 0"
    assert read_episode_list(path) == [
        ListEntry(f"{at} support[0][0]", "0", "support", "b", "b/1.png"),
        ListEntry(f"{at} support[1][0]", "0", "support", "a", "a/0.png"),
        ListEntry(f"{at} query[0][0]", "0", "query", "b", "b/2.png"),
        ListEntry(f"{at} query[1][0]", "0", "query", "a", "a/3.png"),
    ]
    path = _list(tmp_path, json.dumps([{"classes": ["a"], "support": [[np.int64(0).item()]], "query": [[2, 1]]}]),
                 "json")
    assert [e.ref for e in read_episode_list(path)] == [0, 2, 1]
    path = _list(tmp_path, "[\n\n]", "json")
    with pytest.raises(EpisodeError, match=exact(f"episode list {path} holds no samples; add one row per support "
                                                 "and query image")):
        read_episode_list(path)
    path = _list(tmp_path, "[\n1,\n]", "json")
    with pytest.raises(EpisodeError, match=exact(f"{path} line 3: not valid JSON (Expecting value)")):
        read_episode_list(path)


def test_list_class_errors_show_a_few_names():
    names = [f"k{i}" for i in range(7)]
    struct = {"dataset": "toy", "split": "test", "class_names": names, "class_sizes": [2] * 7}
    with pytest.raises(EpisodeError, match=exact("r: class 'z' is not one of the 7 classes of toy/test "
                                                 "(k0, k1, k2, k3, k4 and 2 more)")):
        episodes_from_list([ListEntry("r", "0", "support", "z", 0)], **struct)
    struct.update(class_names=names[:5], class_sizes=[2] * 5)
    with pytest.raises(EpisodeError, match=exact("r: class None is not one of the 5 classes of toy/test "
                                                 "(k0, k1, k2, k3, k4)")):
        episodes_from_list([ListEntry("r", "0", "support", None, 0)], **struct)
    struct.update(class_names=names[:6], class_sizes=[2] * 6)
    with pytest.raises(EpisodeError, match=r"\(k0, k1, k2, k3, k4 and 1 more\)$"):
        episodes_from_list([ListEntry("r", "0", "support", "z", 0)], **struct)


def test_list_boundaries_and_whole_messages():
    struct = {"dataset": "toy", "split": "test", "class_names": ["a", "b"], "class_sizes": [3, 2]}
    with pytest.raises(EpisodeError, match=exact("the episode list holds no samples")):
        episodes_from_list([], **struct)
    with pytest.raises(EpisodeError, match=exact("l.json holds no samples")):
        episodes_from_list([], where="l.json", **struct)
    with pytest.raises(EpisodeError, match=exact("r1: position 3 is outside class a's 3 images (0..2)")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", 3)], **struct)
    ok = episodes_from_list([ListEntry("r1", "0", "support", "a", 2), ListEntry("r2", "0", "query", "a", 0)],
                            **struct)
    assert ok.support.tolist() == [[[2]]] and ok.query.tolist() == [[[0]]]
    assert ok.classes.dtype == np.int64 and ok.path is None and ok.data_fingerprint is None
    with pytest.raises(EpisodeError, match=exact(
            "r2: 1 (a position 1) is already in episode 0 (r1, support); an image may appear once in the support")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", 1), ListEntry("r2", "0", "support", "a", 1)],
                           **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r2: 1 (a position 1) is already in episode 0 (r1, query); support and query must not share an image")):
        episodes_from_list([ListEntry("r1", "0", "query", "a", 1), ListEntry("r2", "0", "support", "a", 1)],
                           **struct)
    # the same image in two episodes is fine
    two = episodes_from_list([ListEntry("r1", "0", "support", "a", 1), ListEntry("r2", "0", "query", "a", 0),
                              ListEntry("r3", "1", "support", "a", 1), ListEntry("r4", "1", "query", "a", 0)],
                             **struct)
    assert two.spec == EpisodeSpec(1, 1, 1, 2, 0)
    with pytest.raises(EpisodeError, match=exact(
            "r3: mixes a file name into a list by position; use one kind of reference throughout")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", 1), ListEntry("r3", "0", "query", "a", "x")],
                           **struct)
    resolve = {"a.png": (0, 0), "b.png": (1, 1), "c.png": (0, 1)}.__getitem__
    with pytest.raises(EpisodeError, match=exact(
            "r3: mixes a position into a list by file name; use one kind of reference throughout")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", "a.png"), ListEntry("r3", "0", "query", "a", 0)],
                           resolve=resolve, **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r1: the list gives file names; pass --data-root so they can be found (or export the list --by index)")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", "a.png")], **struct)
    with pytest.raises(EpisodeError, match=exact("r1: zz.png")):  # a bare KeyError: its argument
        episodes_from_list([ListEntry("r1", "0", "support", "a", "zz.png")], resolve=resolve, **struct)

    def silent(name):
        raise LookupError

    with pytest.raises(EpisodeError, match=exact("r1: ")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", "zz.png")], resolve=silent, **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r1: b.png is an image of class b, not a; fix the class or the file name")):
        episodes_from_list([ListEntry("r1", "0", "support", "a", "b.png")], resolve=resolve, **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r2: c.png (a position 1) is already in episode 0 (r1, support); support and query must not share "
            "an image")):
        episodes_from_list([ListEntry("r1", "0", "support", None, "c.png"),
                            ListEntry("r2", "0", "query", "a", "c.png")], resolve=resolve, **struct)
    named = episodes_from_list([ListEntry("r1", "0", "support", None, "c.png"),
                                ListEntry("r2", "0", "query", "a", "a.png")], resolve=resolve,
                               origin={"file": "x.csv"}, **struct)
    assert named.origin == {"file": "x.csv", "by": "name"} and named.support.tolist() == [[[1]]]


def test_list_shape_errors_whole():
    struct = {"dataset": "toy", "split": "test", "class_names": ["a", "b"], "class_sizes": [5, 5]}
    E = ListEntry
    with pytest.raises(EpisodeError, match=exact(
            "r1: episode 0, class a has no support image; every class of an episode needs support and query images")):
        episodes_from_list([E("r1", "0", "query", "a", 0), E("r2", "0", "support", "b", 0),
                            E("r3", "0", "query", "b", 1)], **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r3: episode 1 has 1 classes, but episode 0 has 2; every episode needs the same number of classes "
            "(ways)")):
        episodes_from_list([E("r1", "0", "support", "a", 0), E("r1", "0", "query", "a", 1),
                            E("r2", "0", "support", "b", 0), E("r2", "0", "query", "b", 1),
                            E("r3", "1", "support", "b", 0), E("r4", "1", "query", "b", 1)], **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r2: episode 0, class b has 2 query images, but episode 0's classes have 1; every class of every episode "
            "needs the same number (queries)")):
        episodes_from_list([E("r1", "0", "support", "a", 0), E("r1", "0", "query", "a", 1),
                            E("r2", "0", "support", "b", 0), E("r2", "0", "query", "b", 1),
                            E("r2", "0", "query", "b", 2)], **struct)
    with pytest.raises(EpisodeError, match=exact(
            "r3: episode 1, class a has 2 support images, but episode 0's classes have 1; every class of every "
            "episode needs the same number (shots)")):
        episodes_from_list([E("r1", "0", "support", "a", 0), E("r1", "0", "query", "a", 1),
                            E("r3", "1", "support", "a", 0), E("r3", "1", "support", "a", 2),
                            E("r4", "1", "query", "a", 1)], **struct)
    eps = episodes_from_list([E("r", "x", "support", "b", 0), E("r", "x", "support", "b", 3),
                              E("r", "x", "query", "b", 1), E("r", "x", "support", "a", 4),
                              E("r", "x", "support", "a", 2), E("r", "x", "query", "a", 0)], **struct)
    assert eps.spec == EpisodeSpec(2, 2, 1, 1, 0)
    assert eps.classes.tolist() == [[1, 0]] and eps.support.tolist() == [[[0, 3], [4, 2]]]
    assert eps.query.tolist() == [[[1], [0]]]


def test_export_json_head_and_rows():
    eps = small_set(data_fingerprint="d" * 64)
    text = export_episode_list(eps, "json")
    lines = text.split("\n")
    assert text.endswith("]}\n") and len(lines) == 1 + 3 + 2
    doc = json.loads(text)
    assert list(doc) == ["format", "format_version", "dataset", "split", "by", "ways", "shots", "queries",
                         "n_episodes", "seed", "episode_file_sha256", "data_fingerprint", "structure_sha256",
                         "episodes"]
    assert {k: doc[k] for k in list(doc)[:10]} == {
        "format": "fewshot-bench-episode-list", "format_version": 1, "dataset": "toy", "split": "test",
        "by": "index", "ways": 2, "shots": 1, "queries": 2, "n_episodes": 3, "seed": 1}
    assert (doc["episode_file_sha256"], doc["data_fingerprint"], doc["structure_sha256"]) == (
        eps.sha256(), "d" * 64, eps.structure)
    assert lines[0].endswith(', "episodes": [') and lines[-2] == "]}"
    e0 = doc["episodes"][0]
    cls = eps.classes[0].tolist()
    assert e0 == {"classes": [eps.class_names[c] for c in cls], "support": eps.support[0].tolist(),
                  "query": eps.query[0].tolist()}
    assert lines[1] == json.dumps(e0) + ","
    named = json.loads(export_episode_list(eps, "json", by="name", name_of=lambda c, p: f"{c}-{p}"))
    assert named["by"] == "name"
    assert named["episodes"][2]["query"] == [[f"{c}-{p}" for p in eps.query[2, n]] for n, c in enumerate(
        eps.classes[2])]
    imported = episodes_from_list([ListEntry("r2", "0", "support", "a", 0), ListEntry("r3", "0", "query", "a", 1)],
                                  dataset="toy", split="test", class_names=["a"], class_sizes=[2])
    assert json.loads(export_episode_list(imported, "json"))["seed"] is None


def test_export_csv_rows_and_flag_errors():
    eps = small_set()
    rows = export_episode_list(eps, "csv").split("\n")
    assert rows[-1] == "" and len(rows) == 2 + 3 * 2 * 3
    names = eps.class_names
    want = []
    for e in range(3):
        want += [f"{e},support,{names[c]},{eps.support[e, n, 0]}" for n, c in enumerate(eps.classes[e])]
        want += [f"{e},query,{names[c]},{p}" for n, c in enumerate(eps.classes[e]) for p in eps.query[e, n]]
    assert rows[1:-1] == want
    named = export_episode_list(eps, "csv", by="name", name_of=lambda c, p: f"{c}/{p}.png").split("\n")
    assert named[1] == f"0,support,{names[eps.classes[0, 0]]},{eps.classes[0, 0]}/{eps.support[0, 0, 0]}.png"
    with pytest.raises(EpisodeError, match=exact("--format 'tsv': choose csv or json")):
        export_episode_list(eps, "tsv")
    with pytest.raises(EpisodeError, match=exact("--by 'path': choose index or name")):
        export_episode_list(eps, "csv", by="path")
    with pytest.raises(EpisodeError, match=exact("--by name needs the data to name the files; pass --data-root")):
        export_episode_list(eps, "json", by="name")
    assert export_episode_list(eps) == export_episode_list(eps, "csv", by="index")


def test_load_from_a_traversable_that_is_no_path(tmp_path):
    """A shipped file of a package imported from a zip is a Traversable, not a Path: read through it."""
    eps = small_set()
    with zipfile.ZipFile(tmp_path / "pkg.zip", "w") as zf:
        zf.writestr("episode_files/e.episodes.zip", eps.to_bytes())
    with zipfile.ZipFile(tmp_path / "pkg.zip") as zf:
        member = zipfile.Path(zf, "episode_files/e.episodes.zip")
        loaded = EpisodeSet.load(member)
        assert loaded.path is member and loaded.spec == eps.spec
        assert loaded.sha256() == eps.sha256()
        with pytest.raises(EpisodeError, match=exact(f"episode file {tmp_path}/pkg.zip/episode_files/none.zip does "
                                                     "not exist; create it with `fewshot-bench episodes`")):
            EpisodeSet.load(zipfile.Path(zf, "episode_files/none.zip"))


def test_load_never_unpickles_a_member(tmp_path):
    """An episode file is data: a pickled (object) array inside is refused, never executed."""
    eps = small_set()
    buf = io.BytesIO()
    np.save(buf, eps.classes.astype(object), allow_pickle=True)
    path = _zip(tmp_path / "x.zip", {**_members(eps), "classes.npy": buf.getvalue()})
    with pytest.raises(EpisodeError, match=exact(f"episode file {path} is damaged or not an episode file (Object "
                                                 "arrays cannot be loaded when allow_pickle=False); regenerate it "
                                                 "with `fewshot-bench episodes`")):
        EpisodeSet.load(path)
