"""Split tables, every layout loading to the same Split, canonical order, the cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fewshot_bench.data import (
    DATASETS,
    cifar_fs,
    fc100,
    find_layouts,
    load_split,
    miniimagenet,
    prepare_cifar_benchmark,
    supported,
    tieredimagenet,
)
from fewshot_bench.data.base import Split
from fewshot_bench.data.cifar100 import COARSE_NAMES, FINE_NAMES, FINE_TO_COARSE

import synth

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------- split tables
@pytest.mark.parametrize(
    "module, counts",
    [
        (cifar_fs, (64, 16, 20)),
        (fc100, (60, 20, 20)),
        (miniimagenet, (64, 16, 20)),
        (tieredimagenet, (351, 97, 160)),
    ],
)
def test_split_tables_have_the_published_counts_and_are_disjoint(module, counts):
    sets = [set(module.classes(s)) for s in SPLITS]
    assert tuple(len(s) for s in sets) == counts
    assert tuple(len(module.classes(s)) for s in SPLITS) == counts  # no duplicates
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert DATASETS.get(module.INFO.name).n_classes == dict(zip(SPLITS, counts))


def test_superclass_counts_and_cifar_names():
    assert [len(fc100.superclasses(s)) for s in SPLITS] == [12, 4, 4]
    assert [len(tieredimagenet.categories(s)) for s in SPLITS] == [20, 6, 8]
    assert not set(fc100.superclasses("train")) & set(fc100.superclasses("test"))
    assert len(FINE_NAMES) == 100 and FINE_NAMES == tuple(sorted(FINE_NAMES)) and len(COARSE_NAMES) == 20
    assert set(cifar_fs.classes("train")) | set(cifar_fs.classes("val")) | set(
        cifar_fs.classes("test")
    ) == set(FINE_NAMES)
    # FC100 superclasses are whole CIFAR-100 coarse classes (5 fine classes each)
    for split in SPLITS:
        coarse = {COARSE_NAMES[FINE_TO_COARSE[FINE_NAMES.index(c)]] for c in fc100.classes(split)}
        assert coarse == set(fc100.superclasses(split))
    assert [FINE_NAMES.index(c) for c in cifar_fs.classes("val")] == [
        4,
        7,
        14,
        15,
        19,
        26,
        27,
        32,
        40,
        47,
        48,
        55,
        71,
        73,
        87,
        89,
    ]
    assert "n01930112" in miniimagenet.classes("test") and miniimagenet.wordnet_names()[
        "n01930112"
    ].startswith("nematode")


# ------------------------------------------------------------------------------------------- CIFAR
def _expected_cifar(benchmark: str, split: str) -> tuple[tuple[str, ...], list[list[bytes]]]:
    """Class names and, per class, the sorted SHA-1 digests of its synthetic images."""
    images, fine = synth.cifar_split(benchmark, split)
    names = tuple(sorted(FINE_NAMES[f] for f in set(fine)))
    digests = [
        sorted(
            hashlib.sha1(images[i].tobytes()).digest() for i in np.flatnonzero(fine == FINE_NAMES.index(n))
        )
        for n in names
    ]
    return names, digests


def _check_canonical(split: Split, names, digests) -> None:
    assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
    assert split.class_names == names
    assert split.class_sizes.tolist() == [len(d) for d in digests]
    for c, rows in enumerate(split.class_index):
        got = [hashlib.sha1(split.images[r].tobytes()).digest() for r in rows]
        assert got == digests[c]  # position p of class c is the same image whatever the layout


@pytest.fixture(scope="module")
def cifar_roots(tmp_path_factory):
    """One folder per CIFAR-FS / FC100 layout, all cut from the same synthetic pixels."""
    t = tmp_path_factory.mktemp("cifar")
    roots = {
        ("cifar-fs", "metaoptnet-pickle"): t / "mo",
        ("cifar-fs", "rfs-pickle"): t / "rfs",
        ("cifar-fs", "learn2learn-folders"): t / "l2l",
        ("cifar-fs", "bertinetto-folders"): t / "bert",
        ("cifar-fs", "cifar100-python"): t / "raw",
        ("fc100", "metaoptnet-pickle"): t / "fmo",
        ("fc100", "rfs-pickle"): t / "frfs",
        ("fc100", "tadam-npz"): t / "tadam",
        ("fc100", "cifar100-python"): t / "raw",
    }
    synth.write_cifar_pickle(roots["cifar-fs", "metaoptnet-pickle"], "cifar-fs", SPLITS, shuffle=3)
    synth.write_cifar_pickle(roots["cifar-fs", "rfs-pickle"], "cifar-fs", ("test",), rfs=True, py2=False)
    synth.write_cifarfs_folders(roots["cifar-fs", "learn2learn-folders"], "learn2learn", ("test",))
    synth.write_cifarfs_folders(roots["cifar-fs", "bertinetto-folders"], "bertinetto")
    synth.write_cifar100_raw(roots["cifar-fs", "cifar100-python"])
    synth.write_cifar_pickle(roots["fc100", "metaoptnet-pickle"], "fc100", ("test",))
    synth.write_cifar_pickle(roots["fc100", "rfs-pickle"], "fc100", ("test",), rfs=True)
    synth.write_fc100_npz(roots["fc100", "tadam-npz"], ("test",))
    return roots


@pytest.mark.parametrize(
    "dataset, layout",
    [
        ("cifar-fs", "metaoptnet-pickle"),
        ("cifar-fs", "rfs-pickle"),
        ("cifar-fs", "learn2learn-folders"),
        ("cifar-fs", "bertinetto-folders"),
        ("cifar-fs", "cifar100-python"),
        ("fc100", "metaoptnet-pickle"),
        ("fc100", "rfs-pickle"),
        ("fc100", "tadam-npz"),
        ("fc100", "cifar100-python"),
    ],
)
def test_every_cifar_layout_gives_the_same_split(cifar_roots, tmp_path, dataset, layout):
    root = cifar_roots[dataset, layout]
    assert find_layouts(dataset, root)[0].layout == layout
    split = load_split(dataset, "test", root, cache_dir=tmp_path, progress=False)
    names, digests = _expected_cifar(dataset, "test")
    _check_canonical(split, names, digests)
    assert (split.dataset, split.split, split.images.shape) == (dataset, "test", (60, 32, 32, 3))
    reference = load_split(
        dataset, "test", cifar_roots[dataset, "metaoptnet-pickle"], cache_dir=tmp_path, progress=False
    )
    assert split.fingerprint == reference.fingerprint
    assert np.array_equal(split.images, reference.images) and np.array_equal(split.labels, reference.labels)


def test_all_splits_and_validation_alias(cifar_roots, tmp_path):
    root = cifar_roots["cifar-fs", "metaoptnet-pickle"]
    found = find_layouts("cifar-fs", root)
    assert found[0].splits == SPLITS and found[0].paths["val"][0].name == "CIFAR_FS_val.pickle"
    val = load_split("CIFAR-FS", "validation", root, cache_dir=tmp_path, progress=False)
    assert val.split == "val" and len(val.class_names) == 16 and len(val) == 16 * synth.CIFAR_PER_CLASS
    train = load_split("cifar-fs", "train", root, cache_dir=tmp_path, progress=False)
    assert train.class_names == cifar_fs.classes("train")


def test_file_row_order_does_not_matter(tmp_path):
    a = synth.write_cifar_pickle(tmp_path / "a", "cifar-fs", ("test",))
    b = synth.write_cifar_pickle(tmp_path / "b", "cifar-fs", ("test",), shuffle=7)
    assert a[0].read_bytes() != b[0].read_bytes()
    sa = load_split("cifar-fs", "test", tmp_path / "a", cache_dir=tmp_path / "c", progress=False)
    sb = load_split("cifar-fs", "test", tmp_path / "b", cache_dir=tmp_path / "c", progress=False)
    assert sa.fingerprint == sb.fingerprint and sa.source != sb.source
    assert np.array_equal(sa.images, sb.images) and np.array_equal(sa.labels, sb.labels)


def test_fingerprint_changes_with_one_pixel(tmp_path):
    path = synth.write_cifar_pickle(tmp_path / "a", "cifar-fs", ("test",))[0]
    before = load_split(
        "cifar-fs", "test", tmp_path / "a", cache_dir=tmp_path / "c", progress=False
    ).fingerprint
    images, fine = synth.cifar_split("cifar-fs", "test")
    images[5, 0, 0, 0] ^= 1
    synth.write_pickle(path, {"data": images, "labels": fine.tolist()})
    after = load_split(
        "cifar-fs", "test", tmp_path / "a", cache_dir=tmp_path / "c", progress=False
    ).fingerprint
    assert before != after


def test_prepare_from_raw_cifar100_matches_the_folder_layout(cifar_roots, tmp_path):
    paths = prepare_cifar_benchmark(
        "fc100", cifar_roots["fc100", "cifar100-python"] / "cifar-100-python", tmp_path / "out"
    )
    assert [p.name for p in paths] == ["FC100_train.pickle", "FC100_val.pickle", "FC100_test.pickle"]
    out = load_split("fc100", "val", tmp_path / "out", cache_dir=tmp_path, progress=False)
    assert (
        out.class_names == fc100.classes("val") and out.class_sizes.tolist() == [synth.CIFAR_PER_CLASS] * 20
    )
    prepare_cifar_benchmark("cifar-fs", cifar_roots["cifar-fs", "cifar100-python"], tmp_path / "cfs")
    prepared = load_split("cifar-fs", "test", tmp_path / "cfs", cache_dir=tmp_path, progress=False)
    folders = load_split(
        "cifar-fs", "test", cifar_roots["cifar-fs", "bertinetto-folders"], cache_dir=tmp_path, progress=False
    )
    assert prepared.fingerprint == folders.fingerprint


def test_conventional_subfolders_are_found(cifar_roots, tmp_path):
    # RFS pickles live in <root>/CIFAR-FS/, learn2learn folders in <root>/cifarfs/processed
    assert find_layouts("cifar-fs", cifar_roots["cifar-fs", "rfs-pickle"])[0].root.name == "CIFAR-FS"
    assert find_layouts("cifar-fs", cifar_roots["cifar-fs", "learn2learn-folders"])[0].root.name == "cifarfs"
    assert (
        find_layouts("cifar-fs", cifar_roots["cifar-fs", "rfs-pickle"] / "CIFAR-FS")[0].layout == "rfs-pickle"
    )


# ------------------------------------------------------------------------------------------- cache
def test_second_load_memory_maps_without_calling_the_reader(tmp_path, monkeypatch):
    synth.write_cifar_pickle(tmp_path / "d", "cifar-fs", ("test",))
    layout = next(lay for lay in DATASETS.get("cifar-fs").layouts if lay.name == "metaoptnet-pickle")
    calls = []
    real = layout.read
    monkeypatch.setattr(layout, "read", lambda *a: calls.append(1) or real(*a))
    first = load_split("cifar-fs", "test", tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    second = load_split("cifar-fs", "test", tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 1
    assert isinstance(second.images, np.memmap) and second.fingerprint == first.fingerprint
    entry = next((tmp_path / "c" / "data" / "cifar-fs").glob("test-*"))
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["fingerprint"] == first.fingerprint and meta["class_names"] == list(first.class_names)
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    # a damaged cache entry is detected and rebuilt
    with open(entry / "images.npy", "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="damaged cache entry"):
        third = load_split("cifar-fs", "test", tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 2 and third.fingerprint == first.fingerprint
    # touching the source file gives a new key (and a new read)
    synth.write_cifar_pickle(tmp_path / "d", "cifar-fs", ("test",), shuffle=1)
    load_split("cifar-fs", "test", tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 3


# ------------------------------------------------------------------------------------ miniImageNet
@pytest.mark.parametrize(
    "writer, layout",
    [
        (
            lambda r: synth.write_mini_cache(r, "val", file_split="validation", bytes_keys=True, shuffle=2),
            "learn2learn-cache",
        ),
        (lambda r: synth.write_mini_cache(r / "miniImageNet", "val"), "learn2learn-cache"),
        (lambda r: synth.write_mini_metaoptnet(r, "val", offset=64), "metaoptnet-pickle"),
        (lambda r: synth.write_mini_csv_images(r / "mini-imagenet", "val"), "ravi-csv"),
        (lambda r: synth.write_wnid_folders(r, "val"), "wnid-folders"),
    ],
)
def test_miniimagenet_layouts(tmp_path, writer, layout):
    writer(tmp_path / "d")
    split = load_split(
        "miniimagenet",
        "val",
        tmp_path / "d",
        cache_dir=tmp_path / "c",
        image_size=synth.MINI_SIZE,
        progress=False,
    )
    assert find_layouts("miniimagenet", tmp_path / "d")[0].layout == layout
    images, wnids = synth.mini_split("val")
    names = miniimagenet.classes("val")
    digests = [
        sorted(hashlib.sha1(images[i].tobytes()).digest() for i, w in enumerate(wnids) if w == n)
        for n in names
    ]
    _check_canonical(split, names, digests)


def test_miniimagenet_metaoptnet_train_is_train_phase_train(tmp_path):
    path = synth.write_mini_metaoptnet(tmp_path, "train", offset=0)
    assert path.name == "miniImageNet_category_split_train_phase_train.pickle"
    split = load_split("miniimagenet", "train", tmp_path, cache_dir=tmp_path / "c", progress=False)
    assert split.class_names == miniimagenet.classes("train") and len(split) == 128


# ---------------------------------------------------------------------------------- tieredImageNet
def test_tiered_png_pickles_map_names_to_wnids(tmp_path):
    synth.write_tiered_png(tmp_path, "val")
    split = load_split(
        "tieredimagenet",
        "val",
        tmp_path,
        cache_dir=tmp_path / "c",
        image_size=synth.MINI_SIZE,
        progress=False,
    )
    assert split.class_names == tieredimagenet.classes("val") and len(split) == 97
    images, labels = synth.tiered_split("val")
    names = synth.tiered_label_names("val")
    for c, rows in enumerate(split.class_index):  # one image per class: check it is the right one
        (row,) = rows
        (src,) = np.flatnonzero(
            [tieredimagenet.wnid_for_name("val", names[v]) == split.class_names[c] for v in labels]
        )
        assert np.array_equal(split.images[row], images[src])


def test_tiered_without_names_uses_class_labels_and_npz_warns_about_bgr(tmp_path):
    synth.write_tiered_png(tmp_path / "png", "val", names=False)
    png = load_split(
        "tieredimagenet",
        "val",
        tmp_path / "png",
        cache_dir=tmp_path / "c",
        image_size=synth.MINI_SIZE,
        progress=False,
    )
    assert png.class_names[:2] == ("class_000", "class_001") and len(png.class_names) == 97
    synth.write_tiered_npz(tmp_path / "npz", "val", offset=351)
    with pytest.warns(UserWarning, match="BGR"):
        npz = load_split("tieredimagenet", "val", tmp_path / "npz", cache_dir=tmp_path / "c", progress=False)
    assert npz.class_names[0] == "class_351" and len(npz.class_names) == 97
    assert np.array_equal(npz.images, png.images)  # same pixels, same (class, position) order
    flipped = load_split(
        "tieredimagenet",
        "val",
        tmp_path / "npz",
        cache_dir=tmp_path / "c",
        progress=False,
        channel_order="bgr",
    )
    assert flipped.fingerprint != npz.fingerprint
    assert np.array_equal(
        np.sort(flipped.images[..., ::-1].reshape(97, -1), axis=0),
        np.sort(np.asarray(npz.images).reshape(97, -1), axis=0),
    )


# ----------------------------------------------------------------------------------- image folders
@pytest.mark.parametrize(
    "style, layout",
    [
        ("split-folders", "split-folders"),
        ("csv", "split-csv"),
        ("class-folders", "class-folders"),
    ],
)
def test_image_folder_layouts(tmp_path, style, layout):
    synth.write_image_folder(tmp_path / "d", style)
    assert find_layouts("image-folder", tmp_path / "d")[0].layout == layout
    split = load_split(
        "image-folder", "test", tmp_path / "d", cache_dir=tmp_path / "c", image_size=16, progress=False
    )
    assert split.class_names == synth.FOLDER_CLASSES and split.class_sizes.tolist() == [3, 3, 3]
    assert split.images.shape == (9, 16, 16, 3) and split.images.dtype == np.uint8
    default = load_split("image-folder", "test", tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    assert default.images.shape == (9, 84, 84, 3)


def test_cache_inside_the_data_root_does_not_change_the_key(tmp_path, monkeypatch):
    synth.write_image_folder(tmp_path, "class-folders", per_class=1)
    layout = DATASETS.get("image-folder").layouts[-1]
    calls = []
    real = layout.read
    monkeypatch.setattr(layout, "read", lambda *a: calls.append(1) or real(*a))
    for _ in range(2):
        split = load_split(
            "image-folder", "val", tmp_path, cache_dir=tmp_path / ".cache", image_size=8, progress=False
        )
    assert len(calls) == 1 and split.class_names == synth.FOLDER_CLASSES


def test_supported_lists_every_dataset_and_layout():
    rows = {r["name"]: r for r in supported()}
    assert {"cifar-fs", "fc100", "miniimagenet", "tieredimagenet", "image-folder"} <= set(rows)
    assert rows["fc100"]["n_classes"] == {"train": 60, "val": 20, "test": 20}
    assert "tadam-npz" in [lay["name"] for lay in rows["fc100"]["layouts"]]
    json.dumps(supported())  # serialisable for --json output


def test_class_structure_and_describe(cifar_roots):
    from fewshot_bench.data import class_structure, describe_datasets
    from fewshot_bench.errors import DataError

    names, sizes = class_structure("cifar-fs", "validation")
    assert names == cifar_fs.classes("val") and sizes.tolist() == [600] * 16
    with pytest.raises(DataError, match="class sizes are only known from the data; pass --data-root"):
        class_structure("tieredimagenet", "test")
    text = describe_datasets(cifar_roots["cifar-fs", "metaoptnet-pickle"])
    assert "found: metaoptnet-pickle (train, val, test)" in text and "tadam-npz" in text
