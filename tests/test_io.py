"""fewshot_bench._io: atomic files and folders, cache entry locks, hashes, the cache root, JSON values."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_bench import _io
from fewshot_bench._io import (
    atomic_dir,
    atomic_save_npy,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    cache_root,
    discard,
    entry_lock,
    file_lock,
    jsonable,
    sha256_bytes,
    sha256_file,
)
from fewshot_bench.errors import CacheError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Crash(Exception):
    pass


# ------------------------------------------------------------------------------ atomic_write


def test_atomic_write_creates_parents_and_gives_open_s_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    with atomic_write(path, "w") as f:
        f.write("hello\n")
    assert path.read_text() == "hello\n"
    assert _names(path.parent) == ["out.txt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def test_exception_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(Crash):
        with atomic_write(path, "w") as f:
            f.write("new, half")
            raise Crash
    assert path.read_text() == "old" and _names(tmp_path) == ["summary.json"]
    with pytest.raises(KeyboardInterrupt):  # not an Exception: cleaned up all the same
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert _names(tmp_path) == ["summary.json"]


def test_the_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "big.bin"
    with atomic_write(path) as f:
        f.write(b"a" * 1000)
        assert not path.exists()  # readers see nothing until the rename
        (tmp,) = tmp_path.iterdir()
        assert re.fullmatch(r"\.big\.bin\.[^.]+\.tmp", tmp.name)
    assert path.read_bytes() == b"a" * 1000


@pytest.mark.parametrize(
    "error, message",
    [
        (OSError(errno.ENOSPC, "No space left on device"),
         "{p}: cannot write, the disk is full (No space left on device); free space there or choose another "
         "folder (--cache-dir for the cache, --out for results)"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"),
         "{p}: cannot write, the disk is full (Disk quota exceeded); free space there or choose another "
         "folder (--cache-dir for the cache, --out for results)"),
        (PermissionError(errno.EACCES, "Permission denied"),
         "{p}: could not write (Permission denied); free space or choose another folder"),
        (OSError("bad sector"), "{p}: could not write (bad sector); free space or choose another folder"),
    ],
)
def test_write_errors_become_one_line_cache_errors(tmp_path, error, message):
    path = tmp_path / "x.npy"
    with pytest.raises(CacheError, match="^" + re.escape(message.format(p=path)) + "$") as info:
        with atomic_write(path) as f:
            f.write(b"half")
            raise error
    assert info.value.__cause__ is error  # the OS error stays attached for debugging
    assert _names(tmp_path) == []


def test_a_missing_file_error_is_not_disguised(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "x") as f:
            f.write(b"")
            raise FileNotFoundError(errno.ENOENT, "gone", "input.csv")
    assert _names(tmp_path) == []


def test_atomic_write_bytes_replaces(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and _names(tmp_path) == ["f.bin"]


def test_atomic_save_npy_round_trips_views_and_refuses_objects(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    atomic_save_npy(tmp_path / "a.npy", a)
    back = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert back.dtype == np.float32 and np.array_equal(back, a)
    with pytest.raises(ValueError):  # never pickles
        atomic_save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert _names(tmp_path) == ["a.npy"]


# ------------------------------------------------------------------------------ JSON


def test_atomic_write_json_is_stable_sorted_and_plain(tmp_path):
    obj = {
        "b": np.float32(0.5),
        "a": {"n": np.int64(3), "ok": np.bool_(True), "path": Path("/data/x"), "shape": (2, 3)},
        "arr": np.arange(4).reshape(2, 2),
        "t": torch.tensor([1.5, 2.5]),
    }
    atomic_write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert text == (
        '{\n  "a": {\n    "n": 3,\n    "ok": true,\n    "path": "/data/x",\n    "shape": [\n      2,\n      3\n    ]\n'
        '  },\n  "arr": [\n    [\n      0,\n      1\n    ],\n    [\n      2,\n      3\n    ]\n  ],\n  "b": 0.5,\n'
        '  "t": [\n    1.5,\n    2.5\n  ]\n}\n'
    )
    atomic_write_json(tmp_path / "y.json", dict(reversed(list(obj.items()))))
    assert (tmp_path / "y.json").read_text() == text  # same content, same bytes


def test_atomic_write_json_of_an_unknown_object_writes_nothing(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert (tmp_path / "x.json").read_text() == "{}" and _names(tmp_path) == ["x.json"]


@pytest.mark.parametrize(
    "value, expected, kind",
    [
        (np.int64(7), 7, int),
        (np.uint8(255), 255, int),
        (np.float32(0.25), 0.25, float),
        (np.float64(0.1), 0.1, float),
        (np.bool_(False), False, bool),
        (np.array(2.5), 2.5, float),
        (torch.tensor(3), 3, int),
        (torch.tensor(True), True, bool),
        (Path("a/b.pt"), "a/b.pt", str),
        ((1, (2, 3)), [1, [2, 3]], list),
        (np.array([[1, 2]], dtype=np.int16), [[1, 2]], list),
        (torch.zeros(2, 1), [[0.0], [0.0]], list),
        ("text", "text", str),
        (None, None, type(None)),
    ],
)
def test_jsonable_values(value, expected, kind):
    out = jsonable(value)
    assert out == expected and type(out) is kind
    assert json.loads(json.dumps(out)) == expected


def test_jsonable_is_recursive_and_types_are_python():
    out = jsonable({"m": [np.float32(1.0), {"k": (np.int8(1),)}]})
    assert out == {"m": [1.0, {"k": [1]}]}
    assert type(out["m"][0]) is float and type(out["m"][1]["k"][0]) is int


def test_jsonable_keys():
    out = jsonable({np.int64(2): "a", 3: "b", "s": "c", None: "d", (1, 2): "e", Path("p"): "f"})
    assert out == {2: "a", 3: "b", "s": "c", None: "d", "(1, 2)": "e", "p": "f"}
    assert type(next(iter(out))) is int
    assert json.loads(json.dumps(out)) == {"2": "a", "3": "b", "s": "c", "null": "d", "(1, 2)": "e", "p": "f"}


def test_jsonable_non_finite_numbers():
    values = [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("-inf"), 1.5]
    loose = jsonable(values)
    assert math.isnan(loose[0]) and loose[1:3] == [math.inf, -math.inf] and math.isnan(loose[3])
    assert loose[4] == -math.inf and loose[5] == 1.5
    strict = jsonable(values, strict=True)
    assert strict == [None, "inf", "-inf", None, "-inf", 1.5]
    assert json.loads(json.dumps(strict, allow_nan=False)) == strict  # RFC 8259 JSON
    assert jsonable(np.array([np.nan, 1.0]), strict=True) == [None, 1.0]
    assert jsonable({"x": {"y": (math.inf,)}}, strict=True) == {"x": {"y": ["inf"]}}


def test_jsonable_leaves_unknown_objects_alone():
    thing = object()
    assert jsonable([thing])[0] is thing


# ------------------------------------------------------------------------------ atomic_dir


def test_atomic_dir_builds_a_folder_whole(tmp_path):
    entry = tmp_path / "cache" / "entry"
    with atomic_dir(entry) as tmp:
        assert tmp.parent == entry.parent and tmp.is_dir() and _names(tmp) == []
        assert re.fullmatch(r"\.entry\.[^.]+\.tmp", tmp.name)
        (tmp / "a.npy").write_bytes(b"a")
        atomic_write_json(tmp / "meta.json", {"k": 1})
        assert not entry.exists()  # nobody sees it before it is complete
    assert _names(entry) == ["a.npy", "meta.json"] and _names(entry.parent) == ["entry"]
    assert entry.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0700


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "old.npy").write_bytes(b"old")
    with atomic_dir(entry) as tmp:
        (tmp / "new.npy").write_bytes(b"new")
        assert (entry / "old.npy").read_bytes() == b"old"  # still the old one meanwhile
    assert _names(entry) == ["new.npy"] and _names(tmp_path) == ["entry"]


def test_exception_while_building_a_folder_leaves_nothing(tmp_path):
    entry = tmp_path / "entry"
    with pytest.raises(Crash):
        with atomic_dir(entry) as tmp:
            (tmp / "features.npy").write_bytes(b"half")
            raise Crash
    assert _names(tmp_path) == []
    entry.mkdir()
    (entry / "keep").write_text("old")
    with pytest.raises(Crash):
        with atomic_dir(entry) as tmp:
            (tmp / "keep").write_text("new")
            raise Crash
    assert (entry / "keep").read_text() == "old" and _names(tmp_path) == ["entry"]


def test_full_disk_inside_a_folder_names_the_folder(tmp_path, monkeypatch):
    entry = tmp_path / "entry"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError) as info:
        with atomic_dir(entry) as tmp:
            monkeypatch.setattr(_io.os, "fsync", full)  # the inner atomic_write fails on the disk
            atomic_write_bytes(tmp / "images.npy", b"x" * 100)
    assert str(info.value).startswith(f"{entry / 'images.npy'}: cannot write, the disk is full")
    assert ".tmp" not in str(info.value) and isinstance(info.value.__cause__, OSError)
    assert _names(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(CacheError, match="^" + re.escape(f"{entry}: could not write (Read-only file system)")):
        with atomic_dir(entry):
            raise OSError(errno.EROFS, "Read-only file system")
    assert _names(tmp_path) == []


def test_discard_files_folders_and_nothing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    (tmp_path / "f.txt").write_text("x")
    discard(tmp_path / "d")
    discard(tmp_path / "f.txt")
    discard(tmp_path / "never-was")
    assert _names(tmp_path) == []


def test_discard_does_not_follow_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "data").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    discard(tmp_path / "link")
    assert _names(tmp_path) == ["real"] and (tmp_path / "real" / "data").read_text() == "keep"


def test_discard_of_a_path_someone_else_removed_meanwhile(tmp_path, monkeypatch):
    (tmp_path / "entry").mkdir()
    real_replace = os.replace

    def lose_the_race(src, dst):
        os.rmdir(src)  # another process discarded it between our check and our rename
        return real_replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", lose_the_race)
    discard(tmp_path / "entry")
    assert _names(tmp_path) == []


# ------------------------------------------------------------------------------ locks


def _held_elsewhere(lock_file: Path) -> bool:
    """True if another open file description holds an exclusive flock on ``lock_file``."""
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def test_file_lock_is_exclusive_while_held_and_released_after(tmp_path):
    lock = tmp_path / "deep" / "x.lock"
    with file_lock(lock):
        assert _held_elsewhere(lock)
    assert not _held_elsewhere(lock)
    with pytest.raises(Crash):
        with file_lock(lock):
            raise Crash
    assert not _held_elsewhere(lock)  # released on an exception too


def test_file_lock_makes_a_second_holder_wait(tmp_path):
    lock, order = tmp_path / "x.lock", []
    inside, release = threading.Event(), threading.Event()

    def first():
        with file_lock(lock):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second():
        inside.wait(10)
        with file_lock(lock):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(10)
    assert _held_elsewhere(lock) and order == ["first in"]
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]


def test_entry_lock_file_and_stale_temporaries(tmp_path):
    entry = tmp_path / "abc"
    for name in (".abc.k2j4_x.tmp", ".abc.trash-12-00ff.tmp"):  # a killed atomic_dir and discard
        (tmp_path / name).mkdir()
        (tmp_path / name / "features.npy").write_bytes(b"half")
    (tmp_path / ".abc.q1w2e3.tmp").write_bytes(b"half")  # a killed atomic_write of a file entry
    keep = [".abc.def.k2j4.tmp", ".abcd.k2j4.tmp", ".abc.tmp", "abc.k2j4.tmp", ".other.k2j4.tmp"]
    for name in keep:  # temporaries of other entries (abc.def, abcd, ...) and non-temporaries
        (tmp_path / name).write_bytes(b"not ours")
    with entry_lock(entry):
        assert _held_elsewhere(tmp_path / ".locks" / "abc.lock")
        assert _names(tmp_path) == sorted([".locks", *keep])
    assert not _held_elsewhere(tmp_path / ".locks" / "abc.lock")


def test_entry_lock_with_atomic_dir_computes_once(tmp_path):
    entry, built = tmp_path / "entry", []
    arrived = threading.Barrier(2)

    def fill():
        arrived.wait(10)
        with entry_lock(entry):
            if (entry / "done").exists():
                return
            built.append(1)
            with atomic_dir(entry) as tmp:
                (tmp / "done").write_text("yes")

    threads = [threading.Thread(target=fill) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert built == [1] and _names(tmp_path) == [".locks", "entry"]


# ------------------------------------------------------------------------------ hashes and cache root


def test_sha256_of_files_larger_than_a_chunk(tmp_path):
    data = os.urandom(_io._CHUNK + 123)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEWSHOT_BENCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "fewshot-bench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "fewshot-bench"
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", "~/fsb")
    assert cache_root() == tmp_path / "home" / "fsb"
    assert cache_root("~/flag") == tmp_path / "home" / "flag"  # --cache-dir wins
    assert cache_root("") == tmp_path / "home" / "fsb"  # an empty flag is no flag
