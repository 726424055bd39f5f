"""Benchmark a checkpoint end to end and write a run folder.

    data split -> fixed episode set -> cached features -> method scores -> per-episode
    accuracies -> mean ± CI

:func:`run_benchmark` does the work and returns a :class:`RunResult`;
:func:`write_run` writes ``per_episode.csv``, ``summary.json`` and ``summary.csv``
(format in ``ARCHITECTURE.md``); :func:`format_summary` renders the readable table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from ._io import atomic_write, atomic_write_json, jsonable, sha256_file
from .episodes import EpisodeSpec, resolve_episode_set
from .errors import ConfigError
from .evaluate import evaluate_episodes
from .stats import mean_ci

__all__ = ["EvalConfig", "ModelPlan", "RUN_FORMAT_VERSION", "RunResult", "check_load", "extract_all", "format_summary",
           "method_chains", "plan_model", "preflight", "run_benchmark", "write_run"]

RUN_FORMAT_VERSION = 1
PER_EPISODE_COLUMNS = ["dataset", "split", "ways", "shots", "queries", "method", "episode", "accuracy"]


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (recorded verbatim in ``summary.json``)."""

    checkpoint: str | None
    arch: str | None
    datasets: Sequence[str]
    data_root: str | None = None
    split: str = "test"
    ways: int | Sequence[int] = (5,)  # one episode set per ways x shots
    shots: Sequence[int] = (1, 5)
    queries: int = 15
    episodes: int = 3000
    seed: int = 0
    methods: Sequence[str] = ("protonet",)
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: feature preprocessing chain for every method (``--preprocess``, e.g. ``"l2n"``, ``"none"``);
    #: ``None``: each method's declared chain (:mod:`fewshot_bench.preprocess`)
    preprocess: str | None = None
    transform: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None
    episodes_dir: str = "episodes"
    #: episode files to evaluate on instead of drawing sets (``--episode-file``, e.g. from ``episodes import``);
    #: each applies to the dataset and split it names, and its spec replaces ways/shots/queries/episodes/seed
    episode_files: Sequence[str] = ()
    device: str | None = None
    batch_size: int = 256
    ci_method: str = "t"
    progress: bool = True
    preset: str | None = None
    pool: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    force_protocol: bool = False
    allow_partial: bool = False

    def plan(self) -> ModelPlan:
        return plan_model(self.checkpoint, self.arch, self.datasets, preset=self.preset, transform=self.transform,
                          pool=self.pool, arch_kwargs=self.arch_kwargs, force=self.force_protocol)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shots"], d["datasets"], d["methods"] = list(self.shots), list(self.datasets), list(self.methods)
        d["ways"], d["episode_files"] = list(_ints(self.ways)), [str(f) for f in self.episode_files]
        d["method_params"] = {k: dict(v) for k, v in self.method_params.items()}
        d["arch_kwargs"] = dict(self.arch_kwargs)
        return d


@dataclass
class RunResult:
    per_episode: pd.DataFrame
    summary: dict[str, Any]


SplitLoader = Callable[[str, str], Any]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "fewshot-bench": __version__}
    for name in ("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "scikit-learn"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _default_loader(cfg: EvalConfig) -> SplitLoader:
    from .data import load_split

    def load(dataset: str, split: str):
        return load_split(dataset, split, cfg.data_root, cache_dir=cfg.cache_dir, image_size=cfg.image_size,
                          progress=cfg.progress)

    return load


@dataclass(frozen=True)
class ModelPlan:
    """What one checkpoint is evaluated as: the architecture, its keyword arguments and, per
    dataset, the input :class:`~fewshot_bench.protocol.Protocol`.

    ``eval``, ``extract`` and ``diagnose`` all build it with :func:`plan_model`, so they share
    cache entries and refuse the same contradictions.
    """

    checkpoint: str | None
    arch: str
    arch_kwargs: Mapping[str, Any]
    preset: str | None
    meta: Mapping[str, Any]
    protocols: Mapping[str, Any]  # dataset -> Protocol

    def features_kwargs(self, dataset: str) -> dict[str, Any]:
        """``arch_kwargs`` for :func:`~fewshot_bench.features.get_features` on ``dataset`` (adds the pooling)."""
        pool = self.protocols[dataset].pool
        return {**self.arch_kwargs, **({"pool": pool} if pool is not None else {})}


def plan_model(checkpoint: str | None, arch: str | None, datasets: Sequence[str], *, preset: str | None = None,
               transform: str | None = None, pool: str | None = None,
               arch_kwargs: Mapping[str, Any] | None = None, force: bool = False) -> ModelPlan:
    """Resolve the architecture and the per-dataset protocol of ``checkpoint`` (see
    :func:`fewshot_bench.protocol.resolve_protocol`): ``--preset``, else the checkpoint's stored
    protocol, else the dataset's documented transform; contradicting flags fail unless ``force``.
    """
    from .backbones import check_arch, read_checkpoint_meta
    from .data import DATASETS
    from .protocol import PRESETS, check_arch_agrees, resolve_protocol

    meta = read_checkpoint_meta(checkpoint) if checkpoint else {}
    given_arch = check_arch(arch) if arch is not None else None  # a typo answers with close names first
    arch = check_arch(check_arch_agrees(given_arch, preset=preset, meta=meta, force=force))
    user = dict(arch_kwargs or {})
    if "pool" in user:  # one way to set the pooling, checked like --pool
        given = user.pop("pool")
        if pool is not None and pool != given:
            raise ConfigError(f"--pool {pool} and --arch-kw pool={given} disagree; give one")
        pool = given
    overridden = []  # flags forced over the preset or the checkpoint (--force-protocol)
    expected = check_arch_agrees(None, preset=preset, meta=meta) if (preset or meta.get("arch")) else None
    if given_arch and expected and given_arch.lower() != str(expected).lower():
        overridden.append(f"--arch {given_arch}")
    # the preset's (or our checkpoint's) keyword arguments belong to its architecture only
    base = {} if overridden else (dict(PRESETS.get(preset).arch_kwargs) if preset
                                  else dict(meta.get("arch_kwargs") or {}))
    base.pop("pool", None)  # the pooling travels in the protocol
    for k, v in user.items():
        if k in base and base[k] != v:
            source = f"--preset {preset}" if preset else "checkpoint"
            if not force:
                raise ConfigError(f"--arch-kw {k}={v} contradicts the {source}, which builds {arch} with {k}={base[k]}; "
                                  f"drop it, or add --force-protocol")
            overridden.append(f"--arch-kw {k}={v}")
    kwargs = {**base, **user}
    _check_arch_kwargs(arch, kwargs)
    protocols = {d: resolve_protocol(d, DATASETS.get(d).eval_transform, preset=preset, meta=meta,
                                     transform=transform, pool=pool, force=force) for d in datasets}
    if overridden:  # forced over the preset or the checkpoint: say so wherever the protocol is shown
        protocols = {d: dataclasses.replace(p, forced=True, overridden=(*p.overridden, *overridden))
                     for d, p in protocols.items()}
    return ModelPlan(checkpoint, arch, kwargs, preset, meta, protocols)


def _check_arch_kwargs(arch: str, kwargs: Mapping[str, Any]) -> None:
    """Build ``arch`` with ``kwargs`` on the meta device (no weights), so an unknown or bad
    ``--arch-kw`` fails before any data is read, naming the flag."""
    if not kwargs:
        return
    import torch

    from .backbones import create_backbone
    from .errors import FewshotBenchError

    try:
        with torch.device("meta"):
            create_backbone(arch, **kwargs)
    except FewshotBenchError as exc:
        raise ConfigError(f"--arch-kw {' '.join(f'{k}={v}' for k, v in kwargs.items())}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--arch-kw {' '.join(f'{k}={v}' for k, v in kwargs.items())} does not build {arch}: "
                          f"{exc}; check the values") from None


def check_load(plan: ModelPlan, split: Any, *, allow_partial: bool = False) -> Any:
    """Account for every key of ``plan.checkpoint`` against the model :func:`get_features` builds for
    ``split`` (on the ``meta`` device, a dry run); return the :class:`~fewshot_bench.backbones.LoadReport`
    (``None`` for ``--checkpoint none``).

    Runs on every evaluation, also when the features are cached, so the report is always current
    and a checkpoint that does not fit fails before any extraction.
    """
    if plan.checkpoint is None:
        return None
    import torch

    from .backbones import create_backbone, load_checkpoint

    side = plan.protocols[split.dataset].transform.size or int(split.images.shape[1])
    with torch.device("meta"):  # shapes only: no weights in memory, nothing copied
        model = create_backbone(plan.arch, **{"image_size": side, **plan.features_kwargs(split.dataset)})
    return load_checkpoint(plan.checkpoint, model, allow_partial=allow_partial, dry_run=True)


def preflight(cfg: EvalConfig, *, load_split: SplitLoader | None = None) -> ModelPlan:
    """Check what can fail before any run folder is written: the arch and protocol of ``cfg``
    (:meth:`EvalConfig.plan`), the methods, and that the checkpoint fits every dataset's model
    (a dry-run load, :func:`check_load`); returns the plan."""
    plan = cfg.plan()
    method_chains(cfg)  # unknown methods and bad --preprocess chains fail here
    load = load_split or _default_loader(cfg)
    for dataset in cfg.datasets:
        check_load(plan, load(dataset, cfg.split), allow_partial=cfg.allow_partial)
    return plan


def extract_all(cfg: EvalConfig, *, load_split: SplitLoader | None = None) -> None:
    """Fill the feature cache for everything :func:`run_benchmark` will read, and nothing else.

    Under ``torchrun`` every rank calls it (each :func:`~fewshot_bench.features.get_features`
    is a collective that shards the images across ranks); then rank 0 alone runs
    :func:`run_benchmark`, which finds every array in the cache.
    """
    plan = cfg.plan()
    load = load_split or _default_loader(cfg)
    needs_base = any(chain.needs_base_mean for chain in method_chains(cfg).values())
    for dataset in cfg.datasets:
        for split_name in dict.fromkeys((cfg.split, "train") if needs_base else (cfg.split,)):
            _features(cfg, plan, load(dataset, split_name))


def method_chains(cfg: EvalConfig) -> dict[str, Any]:
    """``{method: Preprocessing}``: the feature preprocessing each of ``cfg.methods`` uses --
    ``cfg.preprocess`` for every method when given (``"none"`` turns it off), else the chain the
    method declares (:attr:`~fewshot_bench.methods.FewShotMethod.preprocessing`). An unknown
    method or a bad chain raises before any data is read."""
    from .methods import get_method_class
    from .preprocess import parse_preprocessing

    forced = None if cfg.preprocess is None else parse_preprocessing(cfg.preprocess, what="--preprocess")
    return {name: forced if forced is not None else parse_preprocessing(get_method_class(name).preprocessing)
            for name in cfg.methods}


def _features(cfg: EvalConfig, plan: ModelPlan, split: Any) -> np.ndarray:
    from .features import get_features

    return get_features(plan.checkpoint, plan.arch, split, plan.protocols[split.dataset].transform,
                        cache_dir=cfg.cache_dir, device=cfg.device, batch_size=cfg.batch_size,
                        progress=cfg.progress, seed=cfg.seed, arch_kwargs=plan.features_kwargs(split.dataset),
                        allow_partial=cfg.allow_partial)


def _ints(value: int | Sequence[int]) -> tuple[int, ...]:
    """``5`` or ``(5, 10)`` -> a tuple of ints (``EvalConfig.ways`` takes either)."""
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _episode_files(cfg: EvalConfig) -> list[Any]:
    """The :class:`~fewshot_bench.episodes.EpisodeSet` of every ``--episode-file``, each for one of
    ``cfg.datasets`` on ``cfg.split`` (refused otherwise)."""
    from .episodes import EpisodeSet

    sets = [EpisodeSet.load(Path(f)) for f in cfg.episode_files]
    for eps in sets:
        if eps.dataset not in cfg.datasets or eps.split != cfg.split:
            raise ConfigError(f"--episode-file {eps.path} holds {eps.dataset}/{eps.split} episodes, but the run "
                              f"evaluates {' '.join(cfg.datasets)} on {cfg.split}; add --dataset {eps.dataset} "
                              f"--split {eps.split} or drop the file")
    for dataset in cfg.datasets if sets else ():
        if not any(eps.dataset == dataset for eps in sets):
            raise ConfigError(f"--episode-file gives no episodes for --dataset {dataset}; add a file for it or "
                              f"drop the dataset")
    return sets


def _episode_sets(cfg: EvalConfig, specs: Sequence[EpisodeSpec], split: Any, files: Sequence[Any]):
    """``(spec, set, created)`` for every episode set evaluated on ``split``: the ``--episode-file``
    sets of its dataset (checked against the data), else one per spec from ``cfg.episodes_dir`` or the
    shipped files, drawn and written on first use (:func:`~fewshot_bench.episodes.resolve_episode_set`)."""
    if files:
        for eps in files:
            if eps.dataset == split.dataset:
                eps.check_compatible(split)
                yield eps.spec, eps, False
        return
    for spec in specs:
        eps, created = resolve_episode_set(spec, split, cfg.episodes_dir)
        yield spec, eps, created


def run_benchmark(cfg: EvalConfig, *, load_split: SplitLoader | None = None,
                  log: Callable[[str], None] = print) -> RunResult:
    """Evaluate ``cfg.methods`` on every dataset × shots of ``cfg`` and collect the results.

    ``load_split(dataset, split) -> Split`` replaces the on-disk loaders (the demo passes
    its in-memory digits). ``log`` receives the provenance lines (checkpoint, load report,
    protocol) and notes such as newly written episode files.
    """
    plan, specs, episode_sets, chains = _plan_run(cfg)
    load = load_split or _default_loader(cfg)
    checkpoint_sha = sha256_file(cfg.checkpoint) if cfg.checkpoint else None
    provenance = (f"checkpoint {cfg.checkpoint or 'none (random initialisation)'}"
                  + (f" sha256 {checkpoint_sha[:16]}…" if checkpoint_sha else "")
                  + f"; arch {plan.arch}" + (f"; preset {plan.preset}" if plan.preset else ""))
    run = _Collected()
    for dataset in cfg.datasets:
        split = load(dataset, cfg.split)
        feats = _dataset_features(cfg, plan, split, run, log, provenance)
        provenance = ""  # printed once, when the first checkpoint load fits: a refusal stays one line
        methods = _create_methods(cfg, plan, chains, load, dataset)
        for spec, eps, created in _episode_sets(cfg, specs, split, episode_sets):
            if created:
                log(f"wrote episode file {eps.path} ({spec.n_episodes} episodes drawn with seed {spec.seed})")
            _evaluate_set(cfg, split, feats, spec, eps, methods, run)
    summary = _run_summary(cfg, plan, checkpoint_sha, run)
    return RunResult(pd.concat(run.frames, ignore_index=True)[PER_EPISODE_COLUMNS], summary)


def _plan_run(cfg: EvalConfig) -> tuple[ModelPlan, list[EpisodeSpec], list[Any], dict[str, Any]]:
    """Check ``cfg`` before any data is decoded; return the model plan, the episode specs, the
    ``--episode-file`` sets and each method's preprocessing chain."""
    if cfg.ci_method not in ("t", "normal"):
        raise ConfigError(f"--ci must be 't' or 'normal', got {cfg.ci_method!r}")
    if not cfg.datasets:
        raise ConfigError("--dataset needs at least one dataset name; see `fewshot-bench datasets`")
    if not cfg.methods:
        raise ConfigError("--methods needs at least one method name; see `fewshot-bench methods`")
    plan = cfg.plan()  # unknown arch / preset and contradicting flags fail before any data is decoded
    for flag, values in (("--ways", _ints(cfg.ways)), ("--shots", tuple(cfg.shots))):
        if len(set(values)) != len(values):
            raise ConfigError(f"{flag} {' '.join(map(str, values))} lists a value twice; give distinct values")
    specs = [EpisodeSpec(w, k, cfg.queries, cfg.episodes, cfg.seed) for w in _ints(cfg.ways) for k in cfg.shots]
    episode_sets = _episode_files(cfg)  # --episode-file: read and checked before any data is decoded
    chains = method_chains(cfg)  # unknown names and bad --preprocess chains fail here
    unused = sorted(set(cfg.method_params) - set(chains))
    if unused:
        raise ConfigError(f"--param given for {', '.join(unused)}, which is not among --methods "
                          f"{' '.join(cfg.methods)}")
    return plan, specs, episode_sets, chains


@dataclass
class _Collected:
    """What :func:`run_benchmark` gathers over the datasets for ``per_episode.csv`` and ``summary.json``."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    episode_files: list[dict[str, Any]] = field(default_factory=list)
    transforms: dict[str, dict[str, str]] = field(default_factory=dict)
    load_reports: dict[str, Any] = field(default_factory=dict)
    feature_dims: dict[str, int] = field(default_factory=dict)


def _dataset_features(cfg: EvalConfig, plan: ModelPlan, split: Any, run: _Collected,
                      log: Callable[[str], None], provenance: str) -> np.ndarray:
    """Check that the checkpoint fits ``split``'s model, log the provenance, load report and protocol,
    and return the (cached) features ``(N, D)`` of ``split``."""
    dataset = split.dataset
    protocol = plan.protocols[dataset]
    report = check_load(plan, split, allow_partial=cfg.allow_partial)
    if provenance:
        log(provenance)
    if report is not None:
        run.load_reports[dataset] = report.to_json()
        log(f"{dataset}: load {report.summary()}")
    log(f"{dataset}: protocol {protocol.describe()}")
    run.transforms[dataset] = {"name": protocol.transform.name, "key": protocol.transform.key}
    feats = _features(cfg, plan, split)
    run.feature_dims[dataset] = int(feats.shape[1])
    return feats


def _create_methods(cfg: EvalConfig, plan: ModelPlan, chains: Mapping[str, Any], load: SplitLoader,
                    dataset: str) -> dict[str, Any]:
    """``{name: method}`` for ``cfg.methods``, each with its chain; a centring chain (SimpleShot's
    CL2N) gets the mean feature of the base (train) split only, read only when a chain needs it."""
    from .methods import create as create_method

    base_means: dict[str, np.ndarray] = {}  # chain spec -> mu_base
    needs_base = {name for name, chain in chains.items() if chain.needs_base_mean}
    if needs_base:
        base = _features(cfg, plan, load(dataset, "train"))
        for name in sorted(needs_base):
            if chains[name].spec not in base_means:
                base_means[chains[name].spec] = chains[name].base_mean_from(base)
        del base
    return {name: create_method(name, **dict(cfg.method_params.get(name, {})), preprocess=chains[name].spec,
                                base_mean=base_means.get(chains[name].spec))
            for name in cfg.methods}


def _evaluate_set(cfg: EvalConfig, split: Any, feats: np.ndarray, spec: EpisodeSpec, eps: Any,
                  methods: Mapping[str, Any], run: _Collected) -> None:
    """Every method on the episode set ``eps``: per-episode accuracies and their mean ± CI into ``run``."""
    dataset = split.dataset
    eps_sha = eps.sha256()
    cell = {"dataset": dataset, "split": cfg.split, "ways": spec.ways, "shots": spec.shots, "queries": spec.queries}
    run.episode_files.append({**cell, "n_episodes": spec.n_episodes, "seed": spec.seed, "file": str(eps.path),
                              "sha256": eps_sha, "data_fingerprint": split.fingerprint})
    for name, method in methods.items():
        acc = evaluate_episodes(feats, eps, split, method, device=cfg.device, progress=cfg.progress,
                                desc=f"{dataset} {spec.shots}-shot {name}")
        ci = mean_ci(acc, level=0.95, method=cfg.ci_method)
        run.frames.append(pd.DataFrame({**cell, "method": name, "episode": np.arange(len(acc)), "accuracy": acc}))
        params = {k: v for k, v in getattr(method, "params", {}).items() if k != "base_mean"}
        chain = method.preprocess_chain
        run.results.append({**cell, "method": name, "method_params": jsonable(params),
                            "preprocess": chain.spec, "preprocess_description": chain.describe(),
                            "transductive": bool(getattr(method, "transductive", False)),
                            "mean": ci.mean, "std": ci.std, "ci95": ci.ci, "ci_method": ci.method,
                            "n_episodes": ci.n, "episodes_sha256": eps_sha})


def _run_summary(cfg: EvalConfig, plan: ModelPlan, checkpoint_sha: str | None, run: _Collected) -> dict[str, Any]:
    """``summary.json``: the configuration, provenance, protocols, package versions and results."""
    return {
        "format": "fewshot-bench-run",
        "format_version": RUN_FORMAT_VERSION,
        "fewshot_bench_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_json(),
        "transforms": run.transforms,
        "checkpoint": {"path": cfg.checkpoint, "sha256": checkpoint_sha, "arch": plan.arch,
                       "arch_kwargs": jsonable(dict(plan.arch_kwargs)), "preset": plan.preset,
                       "format": next((r.get("format") for r in run.load_reports.values()), None),
                       "load_report": next(iter(run.load_reports.values()), None),
                       "meta": jsonable(dict(plan.meta))},
        "protocols": {d: {**p.to_json(), "feature_dim": run.feature_dims[d]} for d, p in plan.protocols.items()},
        "packages": package_versions(),
        "episode_files": run.episode_files,
        "results": run.results,
    }


def summary_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per dataset × split × shots × method with mean/ci95/std in percent."""
    df = pd.DataFrame(summary["results"])
    cols = ["dataset", "split", "ways", "shots", "queries", "method", "mean", "ci95", "std", "n_episodes",
            "ci_method", "transductive", "preprocess"]
    return df.reindex(columns=cols)  # "preprocess" is absent from runs written before it was recorded


def format_summary(summary: Mapping[str, Any]) -> str:
    """Readable table: accuracy in percent as ``mean ± ci95``, rounded as every report rounds
    (:func:`fewshot_bench.report.pct`)."""
    from .report import fmt_pct

    df = summary_frame(summary).copy()
    df["accuracy (%)"] = [fmt_pct(m, float("nan") if c is None else c, pm=" ± ")
                          for m, c in zip(df["mean"], df["ci95"])]
    df["task"] = [f"{w}-way {k}-shot" for w, k in zip(df["ways"], df["shots"])]
    out = df[["dataset", "split", "task", "method", "accuracy (%)", "n_episodes"]]
    out = out.rename(columns={"n_episodes": "episodes"})
    ci = df["ci_method"].iloc[0] if len(df) else "t"
    note = f"mean ± 95% CI ({'t-interval' if ci == 't' else 'normal'}) over {int(df['n_episodes'].max())} episodes"
    return out.to_string(index=False) + "\n" + note


def write_run(out_dir: str | Path, result: RunResult) -> dict[str, Path]:
    """Write ``per_episode.csv``, ``summary.json`` and ``summary.csv`` atomically into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_episode": out / "per_episode.csv", "summary": out / "summary.json",
             "summary_csv": out / "summary.csv"}
    with atomic_write(paths["per_episode"], "w") as f:
        result.per_episode.to_csv(f, index=False, lineterminator="\n")  # repr floats: exact round trip
    with atomic_write(paths["summary_csv"], "w") as f:
        summary_frame(result.summary).to_csv(f, index=False, lineterminator="\n")
    atomic_write_json(paths["summary"], result.summary)
    return paths
