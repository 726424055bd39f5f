"""DDP helpers on CPU: 2 gloo processes (torch.multiprocessing.spawn), a few seconds."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fewshot_bench import distributed as D
from fewshot_bench.errors import ConfigError
from fewshot_bench.train.losses import lacln_loss, supcon_loss

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    info = D.init_from_env()
    try:
        assert info == D.DistInfo(rank, WORLD, rank) and D.get_info() == info
        assert dist.get_backend() == "gloo" and D.is_main() == (rank == 0)
        _check_gathered_loss_equals_single_process(rank)
        _check_sharding(rank)
        _check_finetune_runs(rank, Path(tmp))
    finally:
        dist.destroy_process_group()


def _check_gathered_loss_equals_single_process(rank: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])
    w0 = torch.randn(4, 5, generator=g, dtype=torch.float64)
    for loss_fn in (lacln_loss, supcon_loss):
        # single process on the whole batch
        w = w0.clone().requires_grad_(True)
        ref = loss_fn(x @ w.T, labels)
        ref.backward()
        # this rank's contiguous shard, gathered with gradients
        w_r = w0.clone().requires_grad_(True)
        lo, hi = rank * 4, (rank + 1) * 4
        z_all = D.gather_with_grad(x[lo:hi] @ w_r.T)
        got = loss_fn(z_all, D.all_gather_nograd(labels[lo:hi]))
        got.backward()
        grad = w_r.grad.clone()
        dist.all_reduce(grad)  # what DDP does: average the ranks' parameter gradients
        grad /= WORLD
        assert torch.allclose(got, ref, rtol=1e-12), (float(got), float(ref))
        assert torch.allclose(grad, w.grad, rtol=1e-10, atol=1e-12)


def _check_sharding(rank: int) -> None:
    mine = D.shard_batches(21, 8, torch.Generator().manual_seed(5), rank, WORLD)
    whole = D.shard_batches(21, 8, torch.Generator().manual_seed(5))
    parts = [torch.empty_like(mine[0]) for _ in range(WORLD)]
    assert len(mine) == len(whole) == 2
    for m, w in zip(mine, whole, strict=True):
        dist.all_gather(parts, m)
        assert torch.equal(torch.cat(parts), w)


def _check_finetune_runs(rank: int, tmp: Path) -> None:
    from test_finetune import FAST, make_split

    from fewshot_bench.train import finetune

    logs: list[dict] = []
    out = finetune(make_split(), "conv4", loss="clce", epochs=1, out=tmp / "ddp.pt", log=logs.append, **FAST)
    assert out.exists()  # written by rank 0, visible after the final barrier
    assert len(logs) == (1 if rank == 0 else 0)
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert sd["fewshot_bench"]["world_size"] == WORLD


def test_two_gloo_processes(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # the workers import test_finetune's fixtures
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert (tmp_path / "ddp.pt").exists() and (tmp_path / "ddp.state.pt").exists()


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_from_env() == D.DistInfo() and not D.DistInfo().distributed
    z = torch.randn(3, 2)
    assert D.gather_with_grad(z) is z and D.all_gather_nograd(z) is z


def test_environment_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        D.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set; launch with torchrun"):
        D.init_from_env()
    with pytest.raises(ConfigError, match="--batch-size 9 is not divisible by the 2 processes"):
        D.shard_batches(20, 9, torch.Generator(), 0, 2)


# ------------------------------------------------------------------ sharded extraction (extract / eval)


def test_batch_shard_tiles_whole_batches():
    for n, bs, world in [(60, 7, 2), (60, 8, 3), (5, 8, 2), (0, 4, 2), (100, 1, 7)]:
        shards = [D.batch_shard(n, bs, r, world) for r in range(world)]
        assert shards[0][0] == 0 and shards[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
        assert all(lo % bs == 0 and (hi % bs == 0 or hi == n) for lo, hi in shards)
    assert D.batch_shard(60, 7, 0, 2) == (0, 28) and D.batch_shard(60, 7, 1, 2) == (28, 60)


def _cli_args(cmd: str, tmp: Path, tag: str) -> list[str]:
    common = ["--checkpoint", str(tmp / "conv4.pt"), "--arch", "conv4", "--dataset", "cifar-fs",
              "--data-root", str(tmp / "data"), "--cache-dir", str(tmp / f"cache-{cmd}-{tag}"),
              "--device", "cpu", "--batch-size", "7"]  # 60 images: 9 batches, 4 + 5 per rank
    if cmd == "extract":
        return ["extract", *common, "--split", "test"]
    return ["eval", *common, "--ways", "5", "--shots", "1", "2", "--queries", "1", "--episodes", "40",
            "--methods", "protonet", "simpleshot", "--episodes-dir", str(tmp / f"episodes-{tag}"),
            "--out", str(tmp / f"run-{tag}")]


def _cli_worker(rank: int, port: int, tmp: str) -> None:
    import contextlib
    import io

    from fewshot_bench.cli import main

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        codes = [main(_cli_args(cmd, Path(tmp), "ddp")) for cmd in ("extract", "eval")]
    assert not dist.is_initialized()  # each command left the group it joined
    Path(tmp, f"rank{rank}.txt").write_text(f"{codes}\n{out.getvalue()}\n---\n{err.getvalue()}")


def _cache_arrays(cache: Path) -> dict[str, bytes]:
    """features.npy bytes by (dataset, split) of every entry under ``cache``."""
    out = {}
    for meta in (cache / "features").glob("*/meta.json"):
        m = json.loads(meta.read_text())
        out[f"{m['dataset']}/{m['split']}"] = (meta.parent / "features.npy").read_bytes()
    return out


def test_torchrun_extract_and_eval_match_one_process(tmp_path, monkeypatch):
    """2 gloo ranks: the merged caches are byte-identical to one process's, rank 0 alone reports."""
    import sys

    from fewshot_bench.backbones import create_backbone, save_checkpoint
    from fewshot_bench.cli import main

    import synth

    synth.write_cifar_pickle(tmp_path / "data", "cifar-fs", splits=("train", "test"))  # 3 images a class
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "conv4.pt", create_backbone("conv4", image_size=32), {"loss": "ce"})
    sys.path.insert(0, str(Path(__file__).parent))
    mp.spawn(_cli_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for cmd in ("extract", "eval"):
        assert main(_cli_args(cmd, tmp_path, "one")) == 0
        ddp, one = _cache_arrays(tmp_path / f"cache-{cmd}-ddp"), _cache_arrays(tmp_path / f"cache-{cmd}-one")
        assert sorted(ddp) == sorted(one) == (["cifar-fs/test"] if cmd == "extract" else
                                              ["cifar-fs/test", "cifar-fs/train"])  # simpleshot: base mean
        assert ddp == one
        metas = [json.loads(m.read_text()) for m in (tmp_path / f"cache-{cmd}-ddp").glob("features/*/meta.json")]
        assert [m["world_size"] for m in metas] == [WORLD] * len(ddp)  # really extracted in 2 shards
    csv = "per_episode.csv"
    assert (tmp_path / "run-ddp" / csv).read_bytes() == (tmp_path / "run-one" / csv).read_bytes()
    codes0, out0 = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    codes1, out1 = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert codes0 == codes1 == "[0, 0]"
    assert "cifar-fs/test: features 60×" in out0 and "protonet" in out0
    assert out1.strip() == "---", out1  # rank 1 prints nothing, on stdout or stderr
