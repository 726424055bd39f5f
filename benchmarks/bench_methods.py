"""Time the batched few-shot heads against per-episode references, in one run (not a test).

    python benchmarks/bench_methods.py --episodes 3000 --features 12000 --dim 640 --json out.json

Synthetic ReLU-like features (``--features`` rows of ``--dim`` floats, 20 classes) stand in for a
cached test split; 5-way 1-shot and 5-shot, 15-query episodes address rows like
``EpisodeSet.indices`` does (support sorted by class). The episodes are gathered from the feature
matrix once, before timing (that step is the evaluator's; its time is shown on its own line); every
head then gets the same episode tensors, the batched ones in slices of ``--batch-episodes``
episodes, the per-episode ones episode by episode. Timings include the argmax. For each shot count:

* ProtoNet: ``fewshot_bench`` (batched, validated) / two minimal batched torch references (class
  means by ``view().mean()``, then ``torch.cdist``, or one ``matmul``; same scores) / easyfsl 1.5.0
  ``PrototypicalNetworks`` per episode, the loop of ``easyfsl.utils.evaluate_on_one_task``
  (``process_support_set`` + ``forward``) without a DataLoader;
* logistic regression, RFS style: ``fewshot_bench`` ``logistic`` (batched) / scikit-learn
  ``LogisticRegression(C=1.0, max_iter=1000)`` on ``sklearn.preprocessing.normalize``-d features per
  episode, with BLAS limited to one thread (its fastest setting for such tiny fits). With
  ``--sklearn-episodes`` below ``--episodes``, scikit-learn runs on the first episodes only and its
  time is extrapolated linearly (the output says so).

Batched timings are the best of ``--repeats`` runs, per-episode ones of ``min(--repeats, 2)``.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command_line, timed

from fewshot_bench import methods


def make_features(n: int, dim: int, n_classes: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` ReLU-like features, ``n // n_classes`` per class, moderately separable."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    feats = np.maximum(0.0, 0.25 * centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32))
    return torch.from_numpy(feats), labels


def sample_episodes(labels: np.ndarray, n_episodes: int, ways: int, shots: int, queries: int, seed: int):
    """Rows ``(E, N*K)`` and ``(E, N*Q)`` into the features, support sorted by class (label = column // K)."""
    rng = np.random.default_rng(seed)
    class_rows = np.stack([np.flatnonzero(labels == c) for c in np.unique(labels)])  # (C, per class)
    classes = np.argsort(rng.random((n_episodes, len(class_rows))), 1)[:, :ways]
    positions = np.argsort(rng.random((n_episodes, ways, class_rows.shape[1])), 2)[..., : shots + queries]
    rows = class_rows[classes[..., None], positions]  # (E, N, K+Q)
    support = torch.from_numpy(rows[..., :shots].reshape(n_episodes, -1))
    query = torch.from_numpy(rows[..., shots:].reshape(n_episodes, -1))
    return support, query


def gather(feats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(E, M)`` rows -> ``(E, M, D)`` features."""
    return torch.index_select(feats, 0, rows.reshape(-1)).view(*rows.shape, feats.shape[1])


def batched(score_fn, support, query, s_labels, batch: int) -> torch.Tensor:
    preds = []
    for b in range(0, len(support), batch):
        s, q = support[b : b + batch], query[b : b + batch]
        preds.append(score_fn(s, s_labels.expand(len(s), -1), q).argmax(-1))
    return torch.cat(preds)


def reference_protonet_cdist(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The obvious batched ProtoNet: support sorted by class, ``torch.cdist`` to the class means."""
    e, nk, d = support.shape
    means = support.view(e, int(support_labels[0, -1]) + 1, -1, d).mean(2)
    return -torch.cdist(query, means).pow(2)


def reference_protonet_matmul(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The same scores, ``-(|q|^2 - 2 q.m + |m|^2)``, with one ``matmul`` and no full-size temporaries."""
    e, nk, d = support.shape
    means = support.view(e, int(support_labels[0, -1]) + 1, -1, d).mean(2)
    q2 = torch.linalg.vector_norm(query, dim=-1, keepdim=True).square()
    return 2 * (query @ means.transpose(1, 2)) - means.pow(2).sum(-1).unsqueeze(1) - q2


def easyfsl_protonet(support, query, s_labels) -> torch.Tensor:
    from easyfsl.methods import PrototypicalNetworks

    model, preds = PrototypicalNetworks(torch.nn.Identity()), []
    model.eval()
    with torch.no_grad():
        for s, q in zip(support, query):  # easyfsl.utils.evaluate_on_one_task, keeping the predictions
            model.process_support_set(s, s_labels)
            preds.append(torch.max(model(q).detach().data, 1)[1])
    return torch.stack(preds)


def sklearn_logistic(support: np.ndarray, query: np.ndarray, s_labels: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_limits

    preds = []
    with threadpool_limits(1):
        for s, q in zip(support, query):
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(normalize(s), s_labels)
            preds.append(clf.predict(normalize(q)))
    return np.stack(preds)




def bench_shots(args: argparse.Namespace, feats: torch.Tensor, labels: np.ndarray, shots: int):
    """Time every implementation on one shot count; returns table rows and target checks."""
    s_rows, q_rows = sample_episodes(labels, args.episodes, args.ways, shots, args.queries, args.seed + shots)
    s_lab = torch.arange(args.ways).repeat_interleave(shots)[None]
    q_lab = torch.arange(args.ways).repeat_interleave(args.queries)[None]
    n_sk = min(args.sklearn_episodes or args.episodes, args.episodes)
    t_gather, (support, query) = timed(lambda: (gather(feats, s_rows), gather(feats, q_rows)), 1)

    def run(score_fn):
        return lambda: batched(score_fn, support, query, s_lab, args.batch_episodes)

    proto, logistic = methods.create("protonet"), methods.create("logistic")
    run(proto.scores)()  # warm-up
    t_ours, p_ours = timed(run(proto.scores), args.repeats)
    t_cdist, p_cdist = timed(run(reference_protonet_cdist), args.repeats)
    t_mm, p_mm = timed(run(reference_protonet_matmul), args.repeats)
    t_easy, p_easy = timed(lambda: easyfsl_protonet(support, query, s_lab[0]), min(args.repeats, 2))
    t_lr, p_lr = timed(run(logistic.scores), args.repeats)
    sk_in = support[:n_sk].numpy(), query[:n_sk].numpy(), s_lab[0].numpy()
    t_sk, p_sk = timed(lambda: sklearn_logistic(*sk_in), 1)
    t_sk *= args.episodes / n_sk
    sk_note = "" if n_sk == args.episodes else f" (timed on {n_sk}, extrapolated)"

    def rate(a, b) -> float:
        return float((torch.as_tensor(a) == torch.as_tensor(b)).double().mean())

    def row(head, implementation, seconds, pred=None, ours=None, t_ours=None):
        nan = float("nan")
        return {
            "shots": shots, "head": head, "implementation": implementation, "seconds": seconds,
            "accuracy": nan if pred is None else rate(pred, q_lab),
            "agreement": nan if ours is None else rate(pred, ours),
            "ours_faster_by": nan if t_ours is None else seconds / t_ours,
        }  # fmt: skip

    rows = [
        row("(gather)", "index_select the episodes' features", t_gather),
        row("protonet", "fewshot_bench (batched)", t_ours, p_ours, p_ours, t_ours),
        row("protonet", "batched torch reference, cdist", t_cdist, p_cdist, p_ours, t_ours),
        row("protonet", "batched torch reference, matmul", t_mm, p_mm, p_ours, t_ours),
        row("protonet", "easyfsl 1.5.0 per episode", t_easy, p_easy, p_ours, t_ours),
        row("logistic", "fewshot_bench (batched)", t_lr, p_lr, p_lr, t_lr),
        row("logistic", "scikit-learn per episode" + sk_note, t_sk, p_sk, p_lr[:n_sk], t_lr),
    ]
    agreement = rows[-1]["agreement"]
    checks = [
        (
            f"{shots}-shot protonet within 1.3x of the fastest batched reference",
            t_ours <= 1.3 * min(t_mm, t_cdist),
        ),
        (f"{shots}-shot protonet >= 6x faster than easyfsl", t_easy >= 6 * t_ours),
        (f"{shots}-shot logistic >= 20x faster than scikit-learn", t_sk >= 20 * t_lr),
        (f"{shots}-shot logistic >= 99% identical predictions ({100 * agreement:.2f}%)", agreement >= 0.99),
    ]
    return rows, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--features", type=int, default=12000)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--batch-episodes", type=int, default=1000, help="episodes per batched call")
    p.add_argument(
        "--sklearn-episodes", type=int, default=None, help="run scikit-learn on this many, extrapolate"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    feats, labels = make_features(args.features, args.dim, args.classes, args.seed)
    load_before = os.getloadavg()
    rows, checks = [], []
    for shots in args.shots:
        r, c = bench_shots(args, feats, labels, shots)
        rows, checks = rows + r, checks + c
    table = pd.DataFrame(rows)
    table["ms_per_episode"] = 1000 * table["seconds"] / args.episodes
    print(
        f"{args.episodes} episodes of {args.ways}-way, {args.queries} queries on {args.features}x{args.dim} "
        f"float32 features; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average before {load_before[0]:.1f}"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        from fewshot_bench._io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "command": command_line("bench_methods.py", argv),
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_before": load_before,
                "results": table.to_dict("records"),
                "checks": [{"check": n, "pass": bool(ok)} for n, ok in checks],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
