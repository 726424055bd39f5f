"""The restricted unpickler: numpy arrays and containers load (Python-2 pickles too); code never runs."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from fewshot_bench.errors import DataError
from fewshot_bench.safe_pickle import safe_load

import synth


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_py2_numpy_pickle_loads_with_latin1(tmp_path):
    a = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    path = synth.write_pickle(tmp_path / "x.pickle", {"data": a, "labels": [3, 7], "f": np.float32([1.5])})
    assert b"numpy.core.multiarray" in path.read_bytes()
    d = safe_load(path)
    assert d["data"].dtype == np.uint8 and np.array_equal(d["data"], a) and d["labels"] == [3, 7]
    assert d["f"].dtype == np.float32


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_modern_pickles_of_arrays_scalars_and_containers(tmp_path, protocol):
    obj = {
        "a": np.eye(3, dtype=np.float64),
        "s": np.int64(4),
        "set": {1, 2},
        "t": (b"x", 1.5, None),
        "nested": [np.zeros(2, np.int32)],
        "fs": frozenset({"k"}),
        "ba": bytearray(b"ab"),
        "c": 1 + 2j,
    }
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    with open(tmp_path / "p.pkl", "rb") as f:  # file objects work too
        d = safe_load(f)
    assert np.array_equal(d["a"], obj["a"]) and d["s"] == 4 and d["set"] == {1, 2} and d["t"] == obj["t"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": _Exploit(str(target))}, protocol=2))
    with pytest.raises(
        DataError, match=r"evil\.pkl: refuses to load global (posix|os|nt)\.system; the file may be malicious"
    ):
        safe_load(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", r"empty\.pkl: file is empty \(0 bytes\); download it again"),
        (
            b"\n  <!DOCTYPE html><html><body>Google Drive - quota exceeded</body></html>",
            r"empty\.pkl: looks like an HTML page \(a failed download\?\); download it again",
        ),
        (b"<html><head></head></html>", r"looks like an HTML page"),
        (
            pickle.dumps({"data": list(range(1000))}, protocol=2)[:-40],
            r"empty\.pkl: pickle is truncated \(\d+ bytes\)",
        ),
        (b"\x80\x02}q\x00", r"pickle is truncated"),
        (b"PK\x03\x04 this is a zip file, not a pickle", r"empty\.pkl: not a valid pickle"),
        (b"\x00\x01\x02garbage", r"not a valid pickle"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, payload, message):
    path = tmp_path / "empty.pkl"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as info:
        safe_load(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_stream_names(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pkl: file does not exist"):
        safe_load(tmp_path / "nope.pkl")
    with pytest.raises(DataError, match=r"<stream>: file is empty"):
        safe_load(io.BytesIO(b""))


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("__builtin__", "exec"),
        ("subprocess", "Popen"),
        ("numpy", "load"),
        ("numpy.testing", "run_module_suite"),
        ("copyreg", "_reconstructor"),
    ],
)
def test_forbidden_globals(tmp_path, module, name):
    path = tmp_path / "g.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")  # call module.name()
    with pytest.raises(DataError, match=rf"g\.pkl: refuses to load global {module}\.{name}; "):
        safe_load(path)


def test_defaultdict_of_lists_loads(tmp_path):
    from collections import defaultdict

    d = defaultdict(list, {"n01": [0, 1]})
    (tmp_path / "d.pkl").write_bytes(pickle.dumps(d, protocol=2))
    assert safe_load(tmp_path / "d.pkl") == d
