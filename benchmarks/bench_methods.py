"""Time the batched few-shot heads against per-episode references, in one run (not a test).

    python benchmarks/bench_methods.py --episodes 3000 --peer-episodes 200 --repeats 1 --json bench_methods.json

Synthetic ReLU-like features (``--features`` rows of ``--dim`` floats, 20 classes) stand in for a
cached test split; 5-way 1-shot and 5-shot, 15-query episodes address rows like
``EpisodeSet.indices`` does (support sorted by class). The episodes are gathered from the feature
matrix once, before timing (that step is the evaluator's; its time is shown on its own line); every
head then gets the same episode tensors, the batched ones in slices of ``--batch-episodes``
episodes (default: the evaluator's choice, ``fewshot_bench.evaluate.default_batch_episodes``: ~4 MiB
of features per batch for ``batch_invariant`` heads on the CPU, ~32 MiB on CUDA, ~256 MiB for the
others), the per-episode ones episode by episode. Timings include the argmax. For each shot count,
ours (``fewshot_bench``, batched, validated) against (hyper-parameters and preprocessing matched, so
that both compute the same function; see the method files and their reference tests):

* ``protonet`` / two minimal batched torch references (class means by ``view().mean()``, then
  ``torch.cdist`` or one ``matmul``; same scores) / easyfsl 1.5.0 ``PrototypicalNetworks``;
* ``logistic`` (RFS style) / scikit-learn ``LogisticRegression(C=1.0, max_iter=1000)`` on
  ``sklearn.preprocessing.normalize``-d features;
* ``tim`` with ``classifier="cosine", temperature=10, ce_weight=1, iterations=50,
  preprocess="none"`` / easyfsl ``TIM()`` (its defaults: 50 Adam steps, lr 1e-4, weights 1, 1, 0.1,
  raw features);
* ``laplacianshot`` with ``rectification="bdcspn", rect_temperature=1, lam=0.7`` (cl2n) / easyfsl
  ``LaplacianShot(feature_centering=base_mean, feature_normalization=2)``; ``base_mean`` is the
  mean of the whole synthetic feature matrix (standing in for the train split's);
* ``ptmap`` with ``preprocess="power:0.5", episode_centering=False, n_epochs=10`` / easyfsl
  ``PTMAP()``. Both get the features divided by their L1 norm (so that the power transform yields
  unit vectors, the paper's power + L2N): on the raw 640-D features easyfsl's
  ``exp(-10 * ||q - m||^2)`` underflows to 0 and its transport plans are NaN;
* ``transductive-ft`` with ``classifier="euclidean", alternate=False, preprocess="none"`` / easyfsl
  ``TransductiveFinetuning()`` (25 Adam steps, lr 5e-5, temperature 1, raw features);
* ``bdcspn:easyfsl`` / easyfsl ``BDCSPN()`` (raw features);
* ``knn:sklearn`` (k=5, euclidean, scikit-learn's tie rule; the ``knn`` default breaks ties by the
  nearest voter, same cost) / scikit-learn ``KNeighborsClassifier(n_neighbors=5)``; in 1-shot every
  class gets one of the 5 votes, so both predict the smallest label for every query (chance);
* ``svm`` (Crammer-Singer dual, C=0.1, duality gap 1e-6) / scikit-learn
  ``LinearSVC(multi_class="crammer_singer", C=0.1, fit_intercept=False)`` (its default tol 1e-4).

easyfsl runs the loop of ``easyfsl.utils.evaluate`` (one model, ``eval()``, ``torch.no_grad()``,
``evaluate_on_one_task``: ``process_support_set`` + ``forward`` per episode, the fine-tuning methods
switch ``torch.enable_grad()`` on themselves) without its DataLoader, backbone ``nn.Identity()``.
scikit-learn fits one estimator per episode. With ``--peer-episodes`` below ``--episodes`` every
per-episode peer runs on the first episodes only and its time is extrapolated linearly to
``--episodes`` (the output says so); its accuracy and its agreement with ours (share of identical
argmax predictions) are on those episodes. ``--threads`` (default 1) sets ``torch.set_num_threads``
and, through threadpoolctl, the BLAS / OpenMP pools, for ours; ``--peer-threads`` (default:
``--threads``) the same for the peers, so that one run can also give each side its best count (the
per-episode peers are fastest on one thread: their tiny ops gain nothing from a second one and pay
OpenMP's start-up). ``--device cuda`` runs ours and the easyfsl peers on the GPU (timings
synchronised; scikit-learn stays on the CPU).

Batched timings are the best of ``--repeats`` runs, per-episode ones of ``min(--repeats, 2)``; each
contender is warmed up on a few episodes first, then a head's contenders are timed in turn, round after
round (ours, the references, the peer, ours again, ...), so that a slow spell of a shared machine hits
them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command_line, timed
from threadpoolctl import threadpool_limits

from fewshot_bench import methods
from fewshot_bench.evaluate import default_batch_episodes

WARMUP_EPISODES = 4


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


@contextmanager
def threads(n: int):
    """torch's intra-op pool and the BLAS / OpenMP pools at ``n`` threads; torch's restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


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


# -- per-episode peers: fn(support (E, N*K, D), query (E, Q, D), support labels (N*K,)) -> (E, Q) ----
Peer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def easyfsl_loop(make_model: Callable[[], torch.nn.Module]) -> Peer:
    """``easyfsl.utils.evaluate``'s loop on features: ``evaluate_on_one_task`` per episode."""

    def run(support, query, s_labels):
        model, preds = make_model(), []
        model.eval()
        with torch.no_grad():
            for s, q in zip(support, query):
                model.process_support_set(s, s_labels)
                preds.append(torch.max(model(q).detach().data, 1)[1])
        return torch.stack(preds)

    return run


def sklearn_loop(make_estimator: Callable[[], object], normalize: bool = False) -> Peer:
    """One scikit-learn estimator fitted per episode (``normalize``: L2-normalise rows first, RFS)."""
    from sklearn.preprocessing import normalize as l2n

    def run(support, query, s_labels):
        prep = l2n if normalize else (lambda x: x)
        y, preds = s_labels.cpu().numpy(), []
        for s, q in zip(support.cpu().numpy(), query.cpu().numpy()):
            preds.append(make_estimator().fit(prep(s), y).predict(prep(q)))
        return torch.from_numpy(np.stack(preds))

    return run


def l1_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L1 norm (non-negative features: ``power:0.5`` of them is a unit vector)."""
    return x / x.sum(-1, keepdim=True).clamp_min(1e-12)


def contenders(
    base_mean: torch.Tensor,
) -> list[tuple[str, methods.FewShotMethod, str, Peer, Callable | None, float]]:
    """``(head, ours, peer description, peer, input transform or None, speed-up target)`` per head."""
    from easyfsl import methods as ef
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    identity = torch.nn.Identity
    return [
        ("protonet", methods.create("protonet"), "easyfsl 1.5.0 PrototypicalNetworks",
         easyfsl_loop(lambda: ef.PrototypicalNetworks(identity())), None, 6.0),
        ("logistic", methods.create("logistic"), "scikit-learn LogisticRegression",
         sklearn_loop(lambda: LogisticRegression(C=1.0, max_iter=1000), normalize=True), None, 20.0),
        ("tim",
         methods.create("tim", classifier="cosine", temperature=10.0, ce_weight=1.0, iterations=50,
                        preprocess="none"),
         "easyfsl 1.5.0 TIM", easyfsl_loop(lambda: ef.TIM(identity())), None, 10.0),
        ("laplacianshot",
         methods.create("laplacianshot", base_mean=base_mean, rectification="bdcspn", rect_temperature=1.0,
                        lam=0.7),
         "easyfsl 1.5.0 LaplacianShot",
         easyfsl_loop(lambda: ef.LaplacianShot(identity(), feature_centering=base_mean, feature_normalization=2)),
         None, 10.0),
        ("ptmap", methods.create("ptmap", preprocess="power:0.5", episode_centering=False, n_epochs=10),
         "easyfsl 1.5.0 PTMAP", easyfsl_loop(lambda: ef.PTMAP(identity())), l1_rows, 10.0),
        ("transductive-ft",
         methods.create("transductive-ft", classifier="euclidean", alternate=False, preprocess="none"),
         "easyfsl 1.5.0 TransductiveFinetuning", easyfsl_loop(lambda: ef.TransductiveFinetuning(identity())),
         None, 10.0),
        ("bdcspn:easyfsl", methods.create("bdcspn:easyfsl"), "easyfsl 1.5.0 BDCSPN",
         easyfsl_loop(lambda: ef.BDCSPN(identity())), None, 10.0),
        ("knn:sklearn", methods.create("knn:sklearn"), "scikit-learn KNeighborsClassifier",
         sklearn_loop(lambda: KNeighborsClassifier(n_neighbors=5)), None, 10.0),
        ("svm", methods.create("svm"), "scikit-learn LinearSVC crammer_singer",
         sklearn_loop(lambda: LinearSVC(multi_class="crammer_singer", C=0.1, fit_intercept=False)), None, 10.0),
    ]  # fmt: skip


HEADS = (
    "protonet",
    "logistic",
    "tim",
    "laplacianshot",
    "ptmap",
    "transductive-ft",
    "bdcspn:easyfsl",
    "knn:sklearn",
    "svm",
)


def bench_shots(args: argparse.Namespace, feats: torch.Tensor, labels: np.ndarray, shots: int):
    """Time every implementation on one shot count; returns table rows and target checks."""
    s_rows, q_rows = sample_episodes(labels, args.episodes, args.ways, shots, args.queries, args.seed + shots)
    s_lab = torch.arange(args.ways, device=feats.device).repeat_interleave(shots)[None]
    q_lab = torch.arange(args.ways).repeat_interleave(args.queries)[None]
    n_peer = min(args.peer_episodes or args.episodes, args.episodes)
    s_rows, q_rows = s_rows.to(feats.device), q_rows.to(feats.device)
    with threads(args.threads):
        t_gather, (support, query) = timed(
            lambda: (gather(feats, s_rows), gather(feats, q_rows)), 1, feats.device
        )

    def rate(a, b) -> float:
        return float((torch.as_tensor(a).cpu() == torch.as_tensor(b).cpu()).double().mean())

    def row(head, implementation, seconds, pred=None, ours=None, t_ours=None, timed_on=args.episodes):
        nan = float("nan")
        return {
            "shots": shots, "head": head, "implementation": implementation, "timed_on": timed_on,
            "seconds": seconds, "accuracy": nan if pred is None else rate(pred, q_lab),
            "agreement": nan if ours is None else rate(pred, ours),
            "ours_faster_by": nan if t_ours is None else seconds / t_ours,
        }  # fmt: skip

    def interleaved(jobs: dict) -> dict:
        """``{key: (threads, warm-up, run, rounds)}`` -> ``{key: (best seconds, result)}``.

        Each job is warmed up, then all are timed in turn, round after round, so that a slow spell of a
        shared machine hits every contender alike rather than whichever ran during it.
        """
        for n, warm, _, _ in jobs.values():
            with threads(n):
                warm()
        best: dict = {}
        for r in range(max(job[3] for job in jobs.values())):
            for key, (n, _, run, rounds) in jobs.items():
                if r < rounds:
                    with threads(n):
                        seconds, out = timed(run, 1, feats.device)
                    if key not in best or seconds < best[key][0]:
                        best[key] = (seconds, out)
        return best

    def batched_job(score_fn, s, q, batch):
        return (
            args.threads,
            lambda: batched(score_fn, s[:WARMUP_EPISODES], q[:WARMUP_EPISODES], s_lab, batch),
            lambda: batched(score_fn, s, q, s_lab, batch),
            args.repeats,
        )

    def peer_job(peer, s, q):
        """Timed on the first ``n_peer`` episodes (extrapolated linearly to all of them by the caller)."""
        return (
            args.peer_threads,
            lambda: peer(s[:WARMUP_EPISODES], q[:WARMUP_EPISODES], s_lab[0]),
            lambda: peer(s[:n_peer], q[:n_peer], s_lab[0]),
            min(args.repeats, 2),
        )

    peer_note = "" if n_peer == args.episodes else f", timed on {n_peer} (extrapolated)"
    rows, checks = [row("(gather)", "index_select the episodes' features", t_gather)], []
    for head, ours, peer_name, peer, transform, target in contenders(feats.mean(0)):
        if head not in args.heads:
            continue
        s, q = (support, query) if transform is None else (transform(support), transform(query))
        batch = args.batch_episodes or default_batch_episodes(
            ours, s.shape[1] + q.shape[1], s.shape[2], feats.device
        )
        refs = (("cdist", reference_protonet_cdist), ("matmul", reference_protonet_matmul))
        jobs = {"ours": batched_job(ours.scores, s, q, batch)}
        if head == "protonet":
            jobs.update({name: batched_job(ref, s, q, batch) for name, ref in refs})
        jobs["peer"] = peer_job(peer, s, q)
        timings = interleaved(jobs)
        t_ours, p_ours = timings["ours"]
        rows.append(row(head, f"fewshot_bench (batched, {batch} episodes per call)", t_ours, p_ours))
        if head == "protonet":
            for name, _ in refs:
                rows.append(row(head, f"batched torch reference, {name}", *timings[name], p_ours, t_ours))
            fastest = min(timings[name][0] for name, _ in refs)
            checks.append(
                (
                    f"{shots}-shot protonet within 1.3x of the fastest batched reference",
                    t_ours <= 1.3 * fastest,
                )
            )
        t_peer, p_peer = timings["peer"]
        t_peer *= args.episodes / n_peer
        rows.append(
            row(head, f"{peer_name} per episode{peer_note}", t_peer, p_peer, p_ours[:n_peer], t_ours, n_peer)
        )
        agreement = rows[-1]["agreement"]
        checks += [
            (f"{shots}-shot {head} >= {target:g}x faster than {peer_name} ({t_peer / t_ours:.1f}x)",
             t_peer >= target * t_ours),
            (f"{shots}-shot {head} >= 99% identical predictions ({100 * agreement:.2f}%)", agreement >= 0.99),
        ]  # fmt: skip
        del s, q
    return rows, checks


def device_name(device: str) -> str:
    """``"cpu"`` or the CUDA device's name."""
    d = torch.device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else d.type


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
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument(
        "--batch-episodes",
        type=int,
        default=None,
        help="episodes per batched call (default: the evaluator's)",
    )
    p.add_argument(
        "--peer-episodes", type=int, default=None,
        help="run the per-episode peers on this many episodes and extrapolate (default: all)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for ours (default 1)")
    p.add_argument(
        "--peer-threads", type=int, default=None,
        help="torch and BLAS threads for the per-episode peers (default: --threads)",
    )  # fmt: skip
    p.add_argument(
        "--device", default="cpu",
        help="where ours and the easyfsl peers run, e.g. cuda (scikit-learn peers: CPU; default cpu)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.peer_threads is None:
        args.peer_threads = args.threads
    for flag, n in (("--threads", args.threads), ("--peer-threads", args.peer_threads)):
        if n < 1:
            p.error(f"{flag} must be >= 1, got {n}")
    feats, labels = make_features(args.features, args.dim, args.classes, args.seed)
    feats = feats.to(args.device)
    load_before = os.getloadavg()
    rows, checks = [], []
    for shots in args.shots:
        r, c = bench_shots(args, feats, labels, shots)
        rows, checks = rows + r, checks + c
    table = pd.DataFrame(rows)
    table["ms_per_episode"] = 1000 * table["seconds"] / args.episodes
    print(
        f"{args.episodes} episodes of {args.ways}-way, {args.queries} queries on {args.features}x{args.dim} "
        f"float32 features; seconds for all {args.episodes} episodes; torch {torch.__version__}, "
        f"threads: ours {args.threads}, peers {args.peer_threads}; {os.cpu_count()} CPUs, "
        f"load average before {load_before[0]:.1f}, "
        f"device {device_name(args.device)}"
    )
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
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
                "threads": {"ours": args.threads, "peers": args.peer_threads},
                "cpu_count": os.cpu_count(),
                "device": device_name(args.device),
                "platform": platform.platform(),
                "load_average_before": load_before,
                "results": table.to_dict("records"),
                "checks": [{"check": n, "pass": bool(ok)} for n, ok in checks],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
