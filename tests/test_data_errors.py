"""Clear one-line errors for bad data roots and bad dataset files; malicious pickles never run."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fewshot_bench.data import load_split
from fewshot_bench.errors import ConfigError, DataError, UnknownNameError

import synth


def _load(root, dataset="cifar-fs", split="test", **kw):
    return load_split(dataset, split, root, cache_dir=root / ".cache", progress=False, **kw)


def _raises(match, root, **kw):
    with pytest.raises(DataError, match=match) as info:
        _load(root, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataError, match=r"--data-root .*nowhere does not exist"):
        load_split("cifar-fs", "test", tmp_path / "nowhere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"--data-root .*f is a file, not a folder"):
        load_split("cifar-fs", "test", tmp_path / "f")
    with pytest.raises(DataError, match=r"^no --data-root given; pass the folder that holds the dataset files"):
        load_split("cifar-fs", "test", None)


def test_nothing_found_lists_the_patterns(tmp_path):
    msg = _raises(r"no CIFAR-FS test split found", tmp_path)
    for pattern in (
        "CIFAR_FS_test.pickle",
        "test.pickle",
        "processed/test/<class>/*.png",
        "cifar100/splits/bertinetto/test.txt",
        "cifar-100-python/train",
        "CIFAR-FS/",
    ):
        assert pattern in msg
    synth.write_cifar_pickle(tmp_path, "cifar-fs", ("train",))
    _raises(r"found only the train split\(s\) as metaoptnet-pickle", tmp_path)
    msg = _raises(r"no tieredImageNet val split", tmp_path, dataset="tieredimagenet", split="val")
    assert "val_images_png.pkl + val_labels.pkl" in msg


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(
        UnknownNameError, match=r"unknown dataset 'cifarfs' \(--dataset\); did you mean: cifar-fs"
    ):
        load_split("cifarfs", "test", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown split 'tst'; choose train, val or test"):
        load_split("cifar-fs", "tst", tmp_path)


def _write(tmp_path, obj, name="CIFAR_FS_test.pickle"):
    synth.write_pickle(tmp_path / name, obj)


def test_wrong_keys(tmp_path):
    images, fine = synth.cifar_split("cifar-fs", "test")
    _write(tmp_path, {"images": images, "labels": fine.tolist()})
    _raises(
        r"CIFAR_FS_test\.pickle: has no key 'data' \(keys: 'images', 'labels'\); expected a dict with 'data'",
        tmp_path,
    )
    _write(tmp_path, [images, fine])
    _raises(r"CIFAR_FS_test\.pickle: holds a list, not a dict", tmp_path)


def test_length_mismatch_quotes_both_numbers(tmp_path):
    images, fine = synth.cifar_split("cifar-fs", "test")
    _write(tmp_path, {"data": images, "labels": fine.tolist()[:-3]})
    _raises(r"CIFAR_FS_test\.pickle: 57 labels for 60 images; the file is corrupt or incomplete", tmp_path)


@pytest.mark.parametrize(
    "change, text",
    [
        (
            lambda a: a.astype(np.float32),
            r"shape \(60, 32, 32, 3\) and dtype float32; expected uint8 \(N, H, W, 3\)",
        ),
        (lambda a: a.transpose(0, 3, 1, 2).copy(), r"shape \(60, 3, 32, 32\) and dtype uint8"),
        (lambda a: a[..., 0].copy(), r"shape \(60, 32, 32\) and dtype uint8"),
        (lambda a: a.reshape(60, -1), r"shape \(60, 3072\)"),
    ],
)
def test_wrong_dtype_or_shape(tmp_path, change, text):
    images, fine = synth.cifar_split("cifar-fs", "test")
    _write(tmp_path, {"data": change(images), "labels": fine.tolist()})
    _raises(r"CIFAR_FS_test\.pickle: images have " + text, tmp_path)


def test_bad_label_values(tmp_path):
    images, fine = synth.cifar_split("cifar-fs", "test")
    _write(tmp_path, {"data": images, "labels": [101] + fine.tolist()[1:]})
    _raises(r"label value 101 is not one of the 100 known classes", tmp_path)
    _write(tmp_path, {"data": images, "labels": ["a"] * 60})
    _raises(r"labels have shape \(60,\) and dtype <U1; expected one integer per image", tmp_path)


def test_wrong_class_set_names_the_file(tmp_path):
    images, fine = synth.cifar_split("fc100", "test")  # FC100 test classes under a CIFAR-FS name
    _write(tmp_path, {"data": images, "labels": fine.tolist()})
    _raises(
        r"CIFAR_FS_test\.pickle: classes do not match the CIFAR-FS test split \(20 found, 20 expected; "
        r"unexpected: .*; missing: .*\); check that this is the test file of CIFAR-FS",
        tmp_path,
    )
    synth.write_cifar_pickle(tmp_path / "tr", "cifar-fs", ("train",))
    (tmp_path / "tr" / "CIFAR_FS_train.pickle").rename(tmp_path / "tr" / "CIFAR_FS_test.pickle")
    _raises(r"64 found, 20 expected", tmp_path / "tr")


@pytest.mark.parametrize(
    "payload, text",
    [
        (b"", r"CIFAR_FS_test\.pickle: file is empty"),
        (b"<!DOCTYPE html><html>", r"CIFAR_FS_test\.pickle: looks like an HTML page \(a failed download\?\)"),
        (None, r"CIFAR_FS_test\.pickle: pickle is truncated"),
    ],
)
def test_empty_html_and_truncated_pickles(tmp_path, payload, text):
    if payload is None:
        synth.write_cifar_pickle(tmp_path, "cifar-fs", ("test",))
        payload = (tmp_path / "CIFAR_FS_test.pickle").read_bytes()[:5000]
    (tmp_path / "CIFAR_FS_test.pickle").write_bytes(payload)
    _raises(text, tmp_path)


def test_html_saved_as_mini_cache_pkl(tmp_path):
    (tmp_path / "mini-imagenet-cache-validation.pkl").write_text("<html><body>Too many users</body></html>")
    _raises(
        r"mini-imagenet-cache-validation\.pkl: looks like an HTML page",
        tmp_path,
        dataset="miniimagenet",
        split="val",
    )


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_dataset_pickle_does_not_run(tmp_path):
    target = tmp_path / "created-by-pickle"
    (tmp_path / "CIFAR_FS_test.pickle").write_bytes(pickle.dumps({"data": _Exploit(target), "labels": []}))
    _raises(r"refuses to load global (posix|os)\.system; the file may be malicious", tmp_path)
    assert not target.exists()


def test_bad_npz_and_missing_images(tmp_path):
    (tmp_path / "few-shot-test.npz").write_bytes(b"PK\x03\x04garbage")
    _raises(r"few-shot-test\.npz: not a readable \.npz", tmp_path, dataset="fc100")
    np.savez(tmp_path / "few-shot-test.npz", x=np.zeros(3))
    _raises(r"few-shot-test\.npz: has no key 'features' \(keys: x\)", tmp_path, dataset="fc100")
    csv = synth.write_mini_csv_images(tmp_path / "m", "test")
    next((tmp_path / "m" / "images").iterdir()).unlink()
    _raises(r"test\.csv: 1 of 40 listed images are missing", tmp_path / "m", dataset="miniimagenet")
    assert csv.exists()


def test_corrupt_image_file_is_named(tmp_path):
    synth.write_image_folder(tmp_path, "class-folders", per_class=1)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    _raises(
        r"broken\.png: cannot decode image .*; replace or delete the file", tmp_path, dataset="image-folder"
    )


def test_mini_class_dict_and_catname_errors(tmp_path):
    images, wnids = synth.mini_split("test")
    synth.write_pickle(
        tmp_path / "mini-imagenet-cache-test.pkl",
        {"image_data": images, "class_dict": {"n01930112": [0, 1, 999]}},
    )
    _raises(r"'class_dict' lists row 999 but 'image_data' has 40 images", tmp_path, dataset="miniimagenet")
    synth.write_pickle(
        tmp_path / "mini-imagenet-cache-test.pkl", {"image_data": images, "class_dict": {"n01930112": [0, 1]}}
    )
    _raises(r"38 of 40 images belong to no class in 'class_dict'", tmp_path, dataset="miniimagenet")
