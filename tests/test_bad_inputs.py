"""The bad-input corpus (issue 7): every case goes through the real CLI and must end in exactly one
``Error: ...`` line that names the file or flag and says what to do, a non-zero exit code and no
traceback. Most cases call :func:`fewshot_bench.cli.main` in-process (fast); the cases marked
``SUBPROCESS`` also run ``python -m fewshot_bench`` in a fresh interpreter.

Each case is ``(name, setup)``: ``setup(env)`` damages a fresh copy of a small valid world (CIFAR-FS
MetaOptNet pickles, a Conv-4 checkpoint, a cache and episode folder under ``tmp_path``) and returns
the argv overrides plus the fragments the error line must contain.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_bench import _io
from fewshot_bench.backbones import create_backbone, save_checkpoint
from fewshot_bench.cli import main
from fewshot_bench.episodes import EpisodeSet, EpisodeSpec, data_identity, default_filename

import runs
import synth


# --------------------------------------------------------------------------------------- the world
@pytest.fixture()
def env(tmp_path, monkeypatch):
    """CIFAR-FS MetaOptNet test pickle (20 classes x 3 images), a Conv-4 checkpoint, empty cache."""
    data = tmp_path / "data"
    synth.write_cifar_pickle(data, "cifar-fs", splits=("test",))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "conv4.pt", create_backbone("conv4", image_size=32), {"loss": "ce"})
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(cache))
    return {"root": tmp_path, "data": data, "pickle": data / "CIFAR_FS_test.pickle", "ckpt": ckpt,
            "cache": cache, "episodes": tmp_path / "episodes", "out": tmp_path / "run"}


def eval_argv(env, **over) -> list[str]:
    """``eval`` argv for the small world; ``over`` replaces flags (``ways="0"``), ``None`` drops one."""
    flags = {"checkpoint": str(env["ckpt"]), "arch": "conv4", "dataset": "cifar-fs",
             "data_root": str(env["data"]), "shots": "1", "queries": "1", "episodes": "5",
             "cache_dir": str(env["cache"]), "episodes_dir": str(env["episodes"]), "out": str(env["out"])}
    flags.update(over)
    argv = ["eval"]
    for k, v in flags.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", *([v] if isinstance(v, str) else v)]
    return argv


def one_error_line(err: str, *fragments: str) -> str:
    """The single ``Error:`` line of ``err``; it contains every fragment; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


def run_inproc(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def run_subprocess(argv, env, **kw) -> subprocess.CompletedProcess:
    environ = {**os.environ, "FEWSHOT_BENCH_CACHE": str(env["cache"]), "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "fewshot_bench", *map(str, argv)], capture_output=True,
                          text=True, env=environ, cwd=env["root"], timeout=300, **kw)


def assert_no_complete_cache(cache: Path) -> None:
    """No data or feature cache entry that a later run could take for complete, no temporary leftovers."""
    for meta in cache.glob("**/meta.json"):
        raise AssertionError(f"cache entry left behind: {meta.parent}")
    leftovers = [p for p in cache.rglob("*") if p.name.startswith((".tmp-", ".trash-")) or p.suffix == ".tmp"]
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------------- case builders
class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _pickle_with(env, obj, *, py2=True):
    synth.write_pickle(env["pickle"], obj, py2=py2)


def _good_arrays():
    return synth.cifar_split("cifar-fs", "test")


def case_truncated_pickle(env):
    env["pickle"].write_bytes(env["pickle"].read_bytes()[:4000])
    return {}, ["CIFAR_FS_test.pickle", "truncated", "download it again"]


def case_empty_pickle(env):
    env["pickle"].write_bytes(b"")
    return {}, ["CIFAR_FS_test.pickle", "empty", "download it again"]


def case_pickle_that_runs_code(env):
    marker = env["root"] / "pwned"
    env["pickle"].write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": [0]}))
    env["check"] = lambda: not marker.exists()
    return {}, ["CIFAR_FS_test.pickle", "refuses to load global", "system", "malicious"]


def case_html_saved_as_pkl(env):
    env["pickle"].unlink()
    (env["data"] / "mini-imagenet-cache-test.pkl").write_text(
        "<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    return {"dataset": "miniimagenet"}, ["mini-imagenet-cache-test.pkl", "HTML page", "download it again"]


def case_wrong_keys(env):
    images, fine = _good_arrays()
    _pickle_with(env, {"images": images, "targets": fine.tolist()})
    return {}, ["CIFAR_FS_test.pickle", "no key 'data'", "keys: 'images', 'targets'"]


def case_labels_and_data_of_different_lengths(env):
    images, fine = _good_arrays()
    _pickle_with(env, {"data": images, "labels": fine[:-7].tolist()})
    return {}, ["CIFAR_FS_test.pickle", "53 labels for 60 images", "download it again"]


def case_images_of_wrong_shape(env):
    images, fine = _good_arrays()
    _pickle_with(env, {"data": images[..., 0], "labels": fine.tolist()})  # (N, 32, 32) grey
    return {}, ["CIFAR_FS_test.pickle", "(60, 32, 32)", "expected uint8 (N, H, W, 3)", "check this is a"]


def case_images_of_wrong_dtype(env):
    images, fine = _good_arrays()
    _pickle_with(env, {"data": images.astype(np.float32) / 255, "labels": fine.tolist()})
    return {}, ["CIFAR_FS_test.pickle", "float32", "expected uint8"]


def case_class_smaller_than_shots_plus_queries(env):
    return {"shots": "1", "queries": "5"}, ["--shots 1 + --queries 5 = 6 images per class", "has 3"]


def case_unknown_dataset(env):
    return {"dataset": "cifarfs"}, ["unknown dataset 'cifarfs'", "--dataset", "did you mean: cifar-fs"]


def case_unknown_method(env):
    return {"methods": "protonett"}, ["unknown method 'protonett'", "protonet"]


def case_unknown_arch(env):
    return {"arch": "resnet-12"}, ["unknown architecture 'resnet-12'", "resnet12"]


def case_checkpoint_of_another_arch(env):
    # a foreign file (no metadata naming its arch): the strict loader finds the arch from its keys
    path = env["root"] / "conv4-plain.pt"
    torch.save(create_backbone("conv4", image_size=32).state_dict(), path)
    return {"checkpoint": str(path), "arch": "resnet12"}, [
        "conv4-plain.pt", "does not fit --arch resnet12", "missing keys", "use --arch conv4"]


def case_rfs_seresnet12_checkpoint_under_resnet12(env):
    # RFS seresnet12_last.pth layout ({"opt": Namespace, "model": ...}, 16 *.se.* keys), narrow widths
    import argparse

    torch.manual_seed(0)
    model = create_backbone("seresnet12", channels=(8, 16, 32, 64))
    path = env["root"] / "seresnet12_last.pth"
    torch.save({"opt": argparse.Namespace(model="seresnet12"), "model": model.state_dict()}, path)
    return {"checkpoint": str(path), "arch": "resnet12", "arch_kw": ["channels=[8,16,32,64]"]}, [
        "seresnet12_last.pth (rfs format) does not fit --arch resnet12", "16 unexpected keys",
        "layer1.0.se.fc.0.weight", "use --arch seresnet12"]


def case_whole_module_pickle(env):
    path = env["root"] / "best_model.pt"
    torch.save(create_backbone("conv4", image_size=32), path)  # torch.save(model), as ProtoNet's train.py
    return {"checkpoint": str(path)}, ["best_model.pt is a whole-module pickle", "refused for safety",
                                       "fewshot-bench convert", "--trust-source"]


def case_checkpoint_without_state_dict(env):
    path = env["root"] / "optimizer-only.pt"
    torch.save({"epoch": 3, "lr": 0.1, "optimizer": {"state": {}}}, path)
    return {"checkpoint": str(path)}, ["optimizer-only.pt", "holds no state dict",
                                       "expected a dict of tensors"]


def case_file_that_is_no_checkpoint(env):
    path = env["root"] / "notes.pt"
    path.write_text("these are my notes, not weights\n" * 20)
    return {"checkpoint": str(path)}, ["notes.pt", "not a PyTorch checkpoint", "re-download it or re-save it"]


def case_checkpoint_that_pickles_code(env):
    path = env["root"] / "evil.pt"
    marker = env["root"] / "pwned-by-checkpoint"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, path)
    env["check"] = lambda: not marker.exists()
    return {"checkpoint": str(path)}, ["evil.pt", "refused for safety", "weights_only"]


def case_nan_weights(env):
    model = create_backbone("conv4", image_size=32)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = save_checkpoint(env["root"] / "diverged.pt", model, {})
    env["check"] = lambda: not list((env["cache"] / "features").glob("*/meta.json"))
    return {"checkpoint": str(path)}, ["diverged.pt", "NaN/Inf features for 60 of 60", "diverged"]


def _episode_path(env, spec):
    """The episode file eval reads for ``spec`` on the world's data (named by the data's fingerprint)."""
    from fewshot_bench.data import load_split

    fingerprint = load_split("cifar-fs", "test", env["data"], cache_dir=env["cache"], progress=False).fingerprint
    return env["episodes"] / default_filename("cifar-fs", "test", spec, data_identity(fingerprint))


def case_episode_file_from_other_data(env):
    spec = EpisodeSpec(5, 1, 1, 5, 0)
    EpisodeSet.draw(spec, dataset="cifar-fs", split="test", class_names=[f"class{i}" for i in range(20)],
                    class_sizes=[3] * 20).save(_episode_path(env, spec))
    return {}, ["episode file", "cifar-fs_test_data-", "_5w1s1q_5ep_seed0", "different ones", "regenerate it"]


def case_episode_file_with_out_of_range_indices(env):
    spec = EpisodeSpec(5, 1, 1, 5, 0)
    path = _episode_path(env, spec)
    assert main(["episodes", "--dataset", "cifar-fs", "--data-root", str(env["data"]), "--shots", "1",
                 "--queries", "1", "--episodes", "5", "--out-dir", str(env["episodes"])]) == 0
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    import io

    support = np.lib.format.read_array(io.BytesIO(members["support.npy"]))
    support[2, 1, 0] = 3  # classes hold 3 images: positions 0..2
    buf = io.BytesIO()
    np.lib.format.write_array(buf, support)
    members["support.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return {}, ["episode file", "support positions out of range", "regenerate it"]


def case_damaged_episode_file(env):
    spec = EpisodeSpec(5, 1, 1, 5, 0)
    path = _episode_path(env, spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 half a zip")
    return {}, ["episode file", "damaged or not an episode file", "regenerate it"]


def case_missing_data_root(env):
    return {"data_root": str(env["root"] / "nowhere")}, ["--data-root", "nowhere does not exist"]


def case_data_root_without_the_dataset(env):
    env["pickle"].rename(env["data"] / "something_else.pickle")
    return {}, ["no CIFAR-FS test split found", "CIFAR_FS_test.pickle"]


def case_missing_checkpoint(env):
    return {"checkpoint": str(env["root"] / "nope.pt")}, ["--checkpoint", "nope.pt does not exist"]


def case_empty_checkpoint(env):
    path = env["root"] / "empty.pt"
    path.write_bytes(b"")
    return {"checkpoint": str(path)}, ["empty.pt", "empty (0 bytes)"]


def case_unknown_transform(env):
    return {"transform": "imagenet-225"}, ["imagenet-225", "imagenet-224"]


def case_bad_param(env):
    return {"param": "logistic"}, ["--param 'logistic' is not METHOD.NAME=VALUE"]


def case_method_plugin_file_missing(env):
    return {"methods": str(env["root"] / "mine.py") + ":MyHead"}, ["--methods", "mine.py does not exist", "fewshot-bench methods"]


def case_out_is_a_file(env):
    env["out"].write_text("x")
    return {}, ["--out", "exists and is not a folder"]


CASES = [
    case_truncated_pickle,
    case_empty_pickle,
    case_pickle_that_runs_code,
    case_html_saved_as_pkl,
    case_wrong_keys,
    case_labels_and_data_of_different_lengths,
    case_images_of_wrong_shape,
    case_images_of_wrong_dtype,
    case_class_smaller_than_shots_plus_queries,
    case_unknown_dataset,
    case_unknown_method,
    case_unknown_arch,
    case_checkpoint_of_another_arch,
    case_rfs_seresnet12_checkpoint_under_resnet12,
    case_whole_module_pickle,
    case_checkpoint_without_state_dict,
    case_file_that_is_no_checkpoint,
    case_checkpoint_that_pickles_code,
    case_nan_weights,
    case_episode_file_from_other_data,
    case_episode_file_with_out_of_range_indices,
    case_damaged_episode_file,
    case_missing_data_root,
    case_data_root_without_the_dataset,
    case_missing_checkpoint,
    case_empty_checkpoint,
    case_unknown_transform,
    case_bad_param,
    case_method_plugin_file_missing,
    case_out_is_a_file,
]
SUBPROCESS = {"case_pickle_that_runs_code", "case_html_saved_as_pkl", "case_checkpoint_that_pickles_code",
              "case_missing_data_root", "case_episode_file_with_out_of_range_indices"}


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__[5:])
def test_eval_bad_input(case, env, capsys):
    over, fragments = case(env)
    rc, out, err = run_inproc(eval_argv(env, **over), capsys)
    assert rc == 1, (rc, out, err)
    one_error_line(err, *fragments)
    assert env.get("check", lambda: True)()
    assert not (env["out"] / "summary.json").exists()


@pytest.mark.parametrize("case", [c for c in CASES if c.__name__ in SUBPROCESS], ids=lambda f: f.__name__[5:])
def test_eval_bad_input_in_a_real_process(case, env):
    over, fragments = case(env)
    proc = run_subprocess(eval_argv(env, **over), env)
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc.stderr, *fragments)
    assert env.get("check", lambda: True)()


def test_episode_zip_bomb_is_refused_before_unpacking(env, capsys, monkeypatch):
    import fewshot_bench.episodes as episodes

    assert main(eval_argv(env)) == 0  # writes the episode file
    monkeypatch.setattr(episodes, "_MAX_UNPACKED", 1000)  # the real file now counts as a bomb
    rc, _, err = run_inproc(eval_argv(env), capsys)
    assert rc == 1
    one_error_line(err, "episode file", "unpack to", "over the 1000 allowed", "regenerate it")


# ------------------------------------------------------------------------------ argparse-level flags
@pytest.mark.parametrize("flag, value, text", [
    ("ways", "0", "argument --ways: expected a positive integer, got 0"),
    ("shots", "-1", "argument --shots: expected a positive integer, got -1"),
    ("queries", "0", "argument --queries: expected a positive integer, got 0"),
    ("episodes", "-5", "argument --episodes: expected a positive integer, got -5"),
    ("ways", "five", "argument --ways: expected a positive integer, got 'five'"),
    ("batch_size", "0", "argument --batch-size: expected a positive integer, got 0"),
])
def test_non_positive_counts_are_usage_errors(flag, value, text, env, capsys):
    rc, _, err = run_inproc(eval_argv(env, **{flag: value}), capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("usage: fewshot-bench eval") and err.strip().splitlines()[-1].endswith(text), err


def test_impossible_ways_quotes_the_class_count(env, capsys):
    rc, _, err = run_inproc(eval_argv(env, ways="21"), capsys)
    assert rc == 1
    one_error_line(err, "--ways 21 is more than the 20 classes")


def test_non_positive_counts_in_a_real_process(env):
    proc = run_subprocess(eval_argv(env, ways="0", shots=["1", "-1"]), env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected a positive integer" in proc.stderr


# ------------------------------------------------------------------------------- unreadable folders
def test_unreadable_data_root(env, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions are not enforced (see the simulated case below)")
    env["data"].chmod(0)
    try:
        rc, _, err = run_inproc(eval_argv(env), capsys)
    finally:
        env["data"].chmod(0o755)
    assert rc == 1
    one_error_line(err, str(env["data"]), "ermission")


def test_unreadable_data_root_simulated(env, capsys, monkeypatch):
    """What chmod 000 on --data-root does for a non-root user: stat() of anything inside fails."""
    real_stat = Path.stat

    def stat(self, *a, **k):
        if env["data"] in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *a, **k)

    monkeypatch.setattr(Path, "stat", stat)
    rc, _, err = run_inproc(eval_argv(env), capsys)
    assert rc == 1
    one_error_line(err, str(env["data"]), "Permission denied", "permissions")


def test_unreadable_dataset_file_simulated(env, capsys, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "CIFAR_FS_test.pickle":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rc, _, err = run_inproc(eval_argv(env), capsys)
    assert rc == 1
    one_error_line(err, "CIFAR_FS_test.pickle", "Permission denied", "check its permissions")


def test_unreadable_image_folder_simulated(env, capsys, monkeypatch):
    folders = synth.write_image_folder(env["root"] / "mydata", "split-folders")
    real = Path.iterdir

    def iterdir(self):
        if self == folders / "test":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    rc, _, err = run_inproc(eval_argv(env, dataset="image-folder", data_root=str(folders)), capsys)
    assert rc == 1
    one_error_line(err, "Permission denied", "permissions")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [100, 50])  # 12x12..14x12 px: above PIL's limit, above twice its limit
def test_decompression_bomb_image_is_refused(limit, env, capsys, monkeypatch):
    from PIL import Image

    folders = synth.write_image_folder(env["root"] / "mydata", "split-folders")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    rc, _, err = run_inproc(eval_argv(env, dataset="image-folder", data_root=str(folders)), capsys)
    assert rc == 1
    one_error_line(err, ".png: cannot decode image", "decompression bomb", "replace or delete the file")


# ----------------------------------------------------------------------------------------- full disk
def _disk_full_after(monkeypatch, predicate):
    """Make every atomic write whose target satisfies ``predicate`` fail with ENOSPC midway."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return Full(f) if predicate(target) else f

    monkeypatch.setattr(_io.os, "fdopen", fdopen)


@pytest.mark.parametrize("where", ["data", "features"])
def test_full_disk_while_writing_the_cache(where, env, capsys, monkeypatch):
    if where == "features":  # data cache and episode files exist already; only the feature write fails
        assert main(eval_argv(env, checkpoint="none", out=str(env["root"] / "floor"))) == 0
    cache = str(env["cache"] / where)
    with monkeypatch.context() as m:
        _disk_full_after(m, lambda target: target.startswith(cache))
        rc, _, err = run_inproc(eval_argv(env), capsys)
    assert rc == 1
    one_error_line(err, str(env["cache"]), "disk is full", "--cache-dir")
    if where == "data":
        assert_no_complete_cache(env["cache"])
        assert not [p for p in (env["cache"] / "data").rglob("*") if p.is_file() and p.suffix != ".lock"]
    else:
        assert len(list(env["cache"].glob("features/*/meta.json"))) == 1  # the floor's entry only
        assert not [p for p in env["cache"].glob("features/.*") if p.name != ".locks"]  # no temporaries left
    rc, out, err = run_inproc(eval_argv(env), capsys)  # space again: a normal run succeeds
    assert rc == 0, err
    assert (env["out"] / "summary.json").is_file()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_when_creating_cache_folders(code, env, capsys, monkeypatch):
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if env["cache"] in (self, *self.parents):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", mkdir)
        rc, _, err = run_inproc(eval_argv(env), capsys)
    assert rc == 1
    one_error_line(err, str(env["cache"]), "disk is full or read-only", "--cache-dir")
    assert not env["cache"].exists()


# ------------------------------------------------------------------------------ corrupt feature cache
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_feature_cache_is_rebuilt_with_a_warning(damage, env):
    argv = ["extract", "--checkpoint", env["ckpt"], "--arch", "conv4", "--dataset", "cifar-fs",
            "--data-root", env["data"], "--cache-dir", env["cache"]]
    assert main([str(a) for a in argv]) == 0
    (npy,) = env["cache"].glob("features/*/features.npy")
    good = np.load(npy)
    data = bytearray(npy.read_bytes())
    if damage == "flip":
        data[-9] ^= 0x55
        npy.write_bytes(bytes(data))
    else:
        npy.write_bytes(bytes(data[: len(data) // 2]))
    proc = run_subprocess(argv, env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "rebuilding" in ln]
    assert len(warn) == 1 and warn[0].startswith("Warning: ") and "checksum mismatch" in warn[0], proc.stderr
    (again,) = env["cache"].glob("features/*/features.npy")
    assert again == npy and np.array_equal(np.load(again), good)


# ------------------------------------------------------------------------- results of older versions
@pytest.mark.parametrize("command", ["compare", "table"])
def test_results_folder_of_an_older_version(command, env, capsys):
    acc = np.linspace(0.2, 0.9, 20)
    old = runs.make_run(env["root"] / "old-run", {("cifar-fs", 1, "protonet"): acc}, format_version=0)
    new = runs.make_run(env["root"] / "new-run", {("cifar-fs", 1, "protonet"): acc})
    rc, _, err = run_inproc([command, new, old], capsys)
    assert rc == 1
    one_error_line(err, "old-run", "format 0", "re-run eval")
    if command == "table":
        proc = run_subprocess([command, old], env)
        assert proc.returncode == 1
        one_error_line(proc.stderr, "old-run", "format 0", "re-run eval")


def test_not_a_run_folder(env, capsys):
    (env["root"] / "empty").mkdir()
    rc, _, err = run_inproc(["compare", env["root"] / "empty"], capsys)
    assert rc == 1
    one_error_line(err, "empty", "no summary.json", "--out folder")


def test_damaged_summary_json(env, capsys):
    run = runs.make_run(env["root"] / "r", {("cifar-fs", 1, "protonet"): np.full(5, 0.5)})
    (run / "summary.json").write_text('{"format": "fewshot-bench-run", "format_ver')
    rc, _, err = run_inproc(["table", run], capsys)
    assert rc == 1
    one_error_line(err, "summary.json", "unreadable JSON", "re-run eval")
