"""End-to-end evaluation of 3,000 episodes on cached features, against peers, in one run (not a test).

    python benchmarks/bench_eval.py --json bench_eval.json

A synthetic feature cache stands in for a test split: ``--features`` rows of ``--dim`` float32
(``--classes`` classes of equal size, ReLU-like, moderately separable) written as ``.npy`` and
memory-mapped read-only, exactly as ``fewshot_bench.features`` serves its cache. For 5-way 1-shot
and 5-shot, 15 queries, ``--episodes`` episodes, each implementation computes accuracies *from the
cache* (gathering the episodes' features is part of the timed work):

* ``fewshot_bench`` ``evaluate_rows`` with the ``protonet`` and the ``logistic`` (RFS) heads, on
  fixed episodes drawn by ``fewshot_bench.episodes.sample_episodes``;
* a minimal batched torch reference on the same episodes, in the batches ``evaluate_rows`` uses for
  ProtoNet (~4 MiB of features on the CPU): ``index_select`` (allocating) from a view
  of the memmap, class means by ``view().mean()``, then the same squared distances by
  ``torch.cdist`` or by one ``matmul`` (the reference of ``bench_methods.py``), argmax;
* easyfsl 1.5.0 ``easyfsl.utils.evaluate`` with ``PrototypicalNetworks(nn.Identity())`` over a
  ``DataLoader`` whose batch sampler is easyfsl's ``TaskSampler`` (its ``__init__`` calls
  ``Sampler.__init__(data_source=None)``, which recent torch rejects: the subclass here sets the
  same fields itself; sampling, collate and evaluation are easyfsl's own). It draws its own random
  episodes; its mean accuracy is shown, not compared episode by episode;
* learn2learn 0.2.0: ``MetaDataset`` + ``TaskDataset`` with ``NWays``, ``KShots``, ``LoadData``,
  ``RemapLabels`` (its own random episodes), then a ProtoNet per task as in learn2learn's example;
  skipped with the reason printed when learn2learn cannot be imported;
* scikit-learn ``LogisticRegression(C=1.0, max_iter=1000)`` per episode on
  ``sklearn.preprocessing.normalize``-d features (RFS style), numpy gathering, BLAS limited to one
  thread (its fastest setting for such tiny fits), on the same episodes as ours; its predictions
  are compared with ours. ``--sklearn-episodes N`` runs it on the first N episodes and
  extrapolates the time (the output says so).

Times are the best of ``--repeats`` runs (per-episode peers: one run). Prints a table with
ratios and the target checks, and writes ``--json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command_line, timed

from fewshot_bench import methods
from fewshot_bench.episodes import EpisodeSpec, sample_episodes
from fewshot_bench.evaluate import default_batch_episodes, evaluate_rows


def write_cache(folder: Path, n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``features.npy`` (n, dim) float32, rows sorted by class, memory-mapped read-only; labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    feats = np.maximum(0.0, 0.25 * centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32))
    np.save(folder / "features.npy", feats.astype(np.float32))
    del feats
    return np.load(folder / "features.npy", mmap_mode="r"), labels


def episode_rows(labels: np.ndarray, spec: EpisodeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(E, N*K)``, ``(E, N*Q)`` of fixed episodes, as ``EpisodeSet.indices`` gives them."""
    sizes = np.bincount(labels)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    classes, support, query = sample_episodes(spec, sizes)
    base = offsets[classes][..., None]
    E = spec.n_episodes
    return (base + support).reshape(E, -1), (base + query).reshape(E, -1)




# ------------------------------------------------------------------------------ implementations


def reference(feats: np.ndarray, s_rows, q_rows, ways: int, batch: int, dist: str) -> np.ndarray:
    """Minimal batched torch ProtoNet from the memmap: gather, class means, cdist or matmul, argmax."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memmap; only read here
        src = torch.from_numpy(feats)
    s_all, q_all = torch.from_numpy(s_rows.astype(np.int64)), torch.from_numpy(q_rows.astype(np.int64))
    E, NK = s_all.shape
    NQ, d = q_all.shape[1], feats.shape[1]
    q_lab = torch.arange(ways).repeat_interleave(NQ // ways)
    out = np.empty(E)
    for a in range(0, E, batch):
        b = min(a + batch, E)
        s = src.index_select(0, s_all[a:b].reshape(-1)).view(b - a, ways, NK // ways, d)
        q = src.index_select(0, q_all[a:b].reshape(-1)).view(b - a, NQ, d)
        means = s.mean(2)
        if dist == "cdist":
            scores = -torch.cdist(q, means).pow(2)
        else:  # the same -|q - m|^2 = 2 q.m - |m|^2 - |q|^2, with one matmul
            q2 = torch.linalg.vector_norm(q, dim=-1, keepdim=True).square()
            scores = 2 * (q @ means.transpose(1, 2)) - means.pow(2).sum(-1).unsqueeze(1) - q2
        out[a:b] = (scores.argmax(-1) == q_lab).double().mean(1).numpy()
    return out


def easyfsl_evaluate(feats: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, n: int,
                     seed: int) -> float:
    """easyfsl 1.5.0: ``evaluate`` over a DataLoader with its TaskSampler, PrototypicalNetworks."""
    import random

    from easyfsl.methods import PrototypicalNetworks
    from easyfsl.samplers import TaskSampler
    from easyfsl.utils import evaluate
    from torch.utils.data import DataLoader, Dataset

    class FeatureDataset(Dataset):
        def __init__(self):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.x = torch.from_numpy(feats)
            self.y = labels.tolist()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

        def get_labels(self):
            return self.y

    class PatchedTaskSampler(TaskSampler):
        """TaskSampler 1.5.0 minus its ``Sampler.__init__(data_source=None)`` call (torch >= 2.2 rejects it)."""

        def __init__(self, dataset, n_way, n_shot, n_query, n_tasks):  # noqa: D107 - easyfsl's body otherwise
            self.n_way, self.n_shot, self.n_query, self.n_tasks = n_way, n_shot, n_query, n_tasks
            self.items_per_label = {}
            for item, label in enumerate(dataset.get_labels()):
                self.items_per_label.setdefault(label, []).append(item)
            self._check_dataset_size_fits_sampler_parameters()

    random.seed(seed)  # TaskSampler draws from the global `random`
    data = FeatureDataset()
    sampler = PatchedTaskSampler(data, n_way=ways, n_shot=shots, n_query=queries, n_tasks=n)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=0, collate_fn=sampler.episodic_collate_fn)
    return evaluate(PrototypicalNetworks(torch.nn.Identity()), loader, device="cpu", use_tqdm=False)


def learn2learn_protonet(feats: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, n: int,
                         seed: int) -> float:
    """learn2learn 0.2.0 TaskDataset sampling + the ProtoNet of its example, per task."""
    import random

    import learn2learn as l2l
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

    random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(feats)
    dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(labels))
    l2i = {int(c): np.flatnonzero(labels == c).tolist() for c in np.unique(labels)}
    meta = l2l.data.MetaDataset(dataset, labels_to_indices=l2i)
    tasks = l2l.data.TaskDataset(
        meta, task_transforms=[NWays(meta, ways), KShots(meta, shots + queries), LoadData(meta), RemapLabels(meta)],
        num_tasks=n,
    )
    correct = total = 0
    with torch.no_grad():
        for _ in range(n):
            data, y = tasks.sample()
            order = torch.sort(y).indices  # as in learn2learn's protonet example
            data, y = data[order], y[order]
            is_support = np.zeros(len(y), dtype=bool)
            is_support[np.arange(ways) * (shots + queries) + np.arange(shots)[:, None]] = True
            is_support = torch.from_numpy(is_support.reshape(-1))
            support = data[is_support].view(ways, shots, -1).mean(1)
            query, q_y = data[~is_support], y[~is_support]
            logits = -((query.unsqueeze(1) - support.unsqueeze(0)) ** 2).sum(2)
            correct += int((logits.argmax(1) == q_y).sum())
            total += len(q_y)
    return correct / total


def sklearn_logistic(feats: np.ndarray, s_rows, q_rows, ways: int) -> np.ndarray:
    """Predictions (E, N*Q) of scikit-learn LR per episode on L2-normalised features (RFS)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_limits

    s_lab = np.arange(ways).repeat(s_rows.shape[1] // ways)
    preds = []
    with threadpool_limits(1):
        for s, q in zip(s_rows, q_rows):
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(normalize(feats[s]), s_lab)
            preds.append(clf.predict(normalize(feats[q])))
    return np.stack(preds)


def ours_predictions(feats, s_rows, q_rows, ways: int, method, batch: int) -> np.ndarray:
    """Our head's predictions on the batches evaluate_rows uses (for the agreement check; untimed)."""
    src = torch.from_numpy(np.array(feats))
    s_lab = torch.arange(ways).repeat_interleave(s_rows.shape[1] // ways)
    preds = []
    for a in range(0, len(s_rows), batch):
        s = src[torch.from_numpy(s_rows[a : a + batch].astype(np.int64))]
        q = src[torch.from_numpy(q_rows[a : a + batch].astype(np.int64))]
        preds.append(method.scores(s, s_lab.expand(len(s), -1), q).argmax(-1).numpy())
    return np.concatenate(preds)


# ------------------------------------------------------------------------------ driver


def bench_shots(args, feats, labels, shots: int, l2l_skip: str | None):
    spec = EpisodeSpec(args.ways, shots, args.queries, args.episodes, args.seed)
    s_rows, q_rows = episode_rows(labels, spec)
    E, W, Q = args.episodes, args.ways, args.queries
    proto, logistic = methods.create("protonet"), methods.create("logistic")
    # evaluate_rows' default batches (ProtoNet's; the reference gets the same): ~4 MiB on the CPU for
    # batch-invariant heads, ~256 MiB for the logistic head (its stopping test is per batch)
    batch = default_batch_episodes(proto, W * (shots + Q), feats.shape[1])
    batch_lr = default_batch_episodes(logistic, W * (shots + Q), feats.shape[1])
    evaluate_rows(feats, s_rows[:50], q_rows[:50], W, proto)  # warm-up
    t_ours, a_ours = timed(lambda: evaluate_rows(feats, s_rows, q_rows, W, proto), args.repeats)
    t_cd, a_cd = timed(lambda: reference(feats, s_rows, q_rows, W, batch, "cdist"), args.repeats)
    t_mm, a_mm = timed(lambda: reference(feats, s_rows, q_rows, W, batch, "matmul"), args.repeats)
    t_lr, a_lr = timed(lambda: evaluate_rows(feats, s_rows, q_rows, W, logistic), args.repeats)
    t_easy, acc_easy = timed(lambda: easyfsl_evaluate(feats, labels, W, shots, Q, E, args.seed), 1)
    if l2l_skip is None:
        t_l2l, acc_l2l = timed(lambda: learn2learn_protonet(feats, labels, W, shots, Q, E, args.seed), 1)
    else:
        t_l2l = acc_l2l = float("nan")
    n_sk = min(args.sklearn_episodes or E, E)
    t_sk, p_sk = timed(lambda: sklearn_logistic(feats, s_rows[:n_sk], q_rows[:n_sk], W), 1)
    t_sk *= E / n_sk
    q_lab = np.arange(W).repeat(Q)
    p_lr = ours_predictions(feats, s_rows, q_rows, W, logistic, batch_lr)
    agree = float((p_lr[:n_sk] == p_sk).mean())
    assert np.array_equal(a_lr, (p_lr == q_lab).mean(1)), "evaluate_rows differs from its own batches"
    sk_note = "" if n_sk == E else f" (timed on {n_sk}, extrapolated)"
    nan = float("nan")

    def row(head, impl, seconds, acc, ref=None, agreement=nan):
        return {"shots": shots, "head": head, "implementation": impl, "seconds": seconds,
                "ms_per_episode": 1000 * seconds / E, "accuracy": acc,
                "ratio_to_ours": seconds / ref if ref else nan, "agreement": agreement}

    rows = [
        row("protonet", "fewshot_bench evaluate_rows", t_ours, a_ours.mean(), t_ours),
        row("protonet", "batched torch reference, cdist", t_cd, a_cd.mean(), t_ours,
            float(np.mean(a_cd == a_ours))),
        row("protonet", "batched torch reference, matmul", t_mm, a_mm.mean(), t_ours,
            float(np.mean(a_mm == a_ours))),
        row("protonet", "easyfsl 1.5.0 evaluate + TaskSampler", t_easy, acc_easy, t_ours),
        row("protonet", "learn2learn 0.2.0 TaskDataset + ProtoNet" + (f" (skipped: {l2l_skip})" if l2l_skip else ""),
            t_l2l, acc_l2l, t_ours),
        row("logistic", "fewshot_bench evaluate_rows", t_lr, a_lr.mean(), t_lr),
        row("logistic", "scikit-learn per episode" + sk_note, t_sk, float((p_sk == q_lab).mean()), t_lr, agree),
    ]
    t_ref = min(t_cd, t_mm)
    checks = [
        (f"{shots}-shot protonet within 1.3x of the batched reference ({t_ours / t_ref:.2f}x)", t_ours <= 1.3 * t_ref),
        (f"{shots}-shot protonet >= 6x faster than easyfsl ({t_easy / t_ours:.1f}x)", t_easy >= 6 * t_ours),
        (f"{shots}-shot protonet >= 60x faster than learn2learn ({t_l2l / t_ours:.1f}x)",
         None if l2l_skip else t_l2l >= 60 * t_ours),
        (f"{shots}-shot logistic >= 20x faster than scikit-learn ({t_sk / t_lr:.1f}x)", t_sk >= 20 * t_lr),
        (f"{shots}-shot logistic >= 99% identical predictions to scikit-learn ({100 * agree:.2f}%)",
         agree >= 0.99),
    ]
    return rows, checks


def learn2learn_status() -> str | None:
    """None when learn2learn imports, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import learn2learn  # noqa: F401
            from learn2learn.data import TaskDataset  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means: skip it, and say why
        return (f"learn2learn not importable ({type(exc).__name__}: {exc}); 0.2.0 has no Python 3.11 wheel, "
                "see benchmarks/README.md for building it from the sdist")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--features", type=int, default=12000)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--sklearn-episodes", type=int, default=None, help="run scikit-learn on this many, extrapolate")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    l2l_skip = learn2learn_status()
    if l2l_skip:
        print(f"SKIP learn2learn: {l2l_skip}")
    load_before = os.getloadavg()
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        feats, labels = write_cache(Path(tmp), args.features, args.dim, args.classes, args.seed)
        for shots in args.shots:
            r, c = bench_shots(args, feats, labels, shots, l2l_skip)
            rows, checks = rows + r, checks + c
        del feats
    table = pd.DataFrame(rows)
    print(f"{args.episodes} episodes of {args.ways}-way, {args.queries} queries, from a memory-mapped "
          f"{args.features}x{args.dim} float32 .npy; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("ratio_to_ours: the row's time / fewshot_bench's time for the same head (>1: ours is faster)")
    for name, ok in checks:
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        from fewshot_bench._io import atomic_write_json

        atomic_write_json(args.json, {
            "command": command_line("bench_eval.py", argv),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "load_average_before": load_before,
            "learn2learn_skipped": l2l_skip,
            "results": table.to_dict("records"),
            "checks": [{"check": n, "pass": ok} for n, ok in checks],
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
