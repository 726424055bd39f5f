"""Read run folders, compare runs episode by episode, and render result tables.

A *run folder* is what ``fewshot-bench eval --out RUN`` writes (``summary.json`` and
``per_episode.csv``, format in ``ARCHITECTURE.md``). Everything here starts from
:func:`load_run`; :func:`runs_frame` is one tidy row per run x dataset x split x ways x
shots x queries x method.

* :func:`seed_groups` -- runs of one configuration that differ only in the fine-tuning
  seed form one *row* (a :class:`SeedGroup`); :func:`groups_frame` aggregates each
  row's seeds cell by cell (median or mean of the per-seed means, with the spread).
* :func:`compare` -- paired comparisons of rows evaluated on identical episodes, seed
  by seed (mean difference with CI, paired t and Wilcoxon p-values, Holm-adjusted,
  verdicts); :func:`seed_summary` sums the seed pairs up per row pair;
  :func:`format_compare` renders both for a terminal, :func:`write_compare_json` saves them.
* :func:`make_table` -- the Table-1 layout of few-shot papers (rows: models, columns:
  dataset x 1-shot/5-shot, cells ``mean±ci`` in percent) as LaTeX (booktabs, via
  ``pandas.Styler.to_latex``), Markdown, CSV or long CSV/JSON, with its protocol in the
  caption and, on request, published rows (:mod:`fewshot_bench.literature`) beside ours.

Statistics come from :mod:`fewshot_bench.stats`; the formulas are in
``docs/statistics.md`` and the usage and the seed rules in ``docs/reports.md``.
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from ._io import atomic_write_json, jsonable
from .errors import ConfigError, DataError, EpisodeError
from .literature import DEFAULT_SOURCE, Literature, load_literature

__all__ = [
    "AGGREGATES",
    "FORMAT",
    "FORMAT_VERSION",
    "KEY",
    "Run",
    "SeedGroup",
    "TABLE_EXTENSIONS",
    "aggregate_seeds",
    "compare",
    "dataset_display_name",
    "find_runs",
    "fmt_pct",
    "format_compare",
    "groups_frame",
    "input_protocol_text",
    "latex_escape",
    "load_run",
    "make_table",
    "make_tables",
    "paired_accuracies",
    "pct",
    "protocol_text",
    "runs_frame",
    "seed_groups",
    "seed_pairs",
    "seed_summary",
    "write_compare_json",
]

FORMAT = "fewshot-bench-run"
FORMAT_VERSION = 1
COMPARE_FORMAT = "fewshot-bench-compare"
TABLE_FORMAT = "fewshot-bench-table"
#: The columns that identify one evaluation inside a run.
KEY = ("dataset", "split", "ways", "shots", "queries", "method")
_CSV_COLUMNS = (*KEY, "episode", "accuracy")
_TABLE_FORMATS = ("latex", "markdown", "csv", "csv-long", "json")
_FORMAT_ALIASES = {"md": "markdown", "tex": "latex"}
#: File extension of each table format (``table --out PREFIX`` / ``--out-dir DIR`` write ``PREFIX.<ext>``).
TABLE_EXTENSIONS = {"latex": "tex", "markdown": "md", "csv": "csv", "csv-long": "long.csv", "json": "json"}
#: How a row's fine-tuning seeds are summed up in one table cell.
AGGREGATES = ("median", "mean")
_DISPLAY = {
    "cifarfs": "CIFAR-FS",
    "fc100": "FC100",
    "miniimagenet": "miniImageNet",
    "tieredimagenet": "tieredImageNet",
}
_DATASET_ORDER = ("CIFAR-FS", "FC100", "miniImageNet", "tieredImageNet")
#: Significance level of the table's "beats the baseline" marker.
TABLE_ALPHA = 0.05
#: Training hyper-parameters of the checkpoint metadata that tell configurations apart in
#: automatic row labels (after the entries of ``meta["loss_params"]``, when present).
CONFIG_KEYS = ("temperature", "lam", "contrast_on", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
               "momentum", "warmup_epochs", "embed_dim", "augment", "flip", "keep", "arch_kwargs", "pretrained",
               "image_size", "transform")
#: Entries of :data:`CONFIG_KEYS` that follow from the fine-tuning dataset (its native size and
#: documented transform): they split a row only between runs fine-tuned on the same dataset.
_DATASET_DERIVED = ("image_size", "transform")
_MISSING = object()

Key = tuple  # (dataset, split, ways, shots, queries, method)


def dataset_display_name(name: str) -> str:
    """``cifar-fs`` -> ``CIFAR-FS``, ``fc100`` -> ``FC100``, ``mini-imagenet`` ->
    ``miniImageNet``, ``tiered-imagenet`` -> ``tieredImageNet``; other names unchanged."""
    return _DISPLAY.get(re.sub(r"[-_ .]", "", str(name).lower()), str(name))


def pct(x: float, signed: bool = False) -> str:
    """A fraction as a percentage with two decimals: the one rounding rule of every printed
    accuracy (eval's table, ``table``, ``compare``, plot labels).

    The fraction's shortest decimal form (``repr``, what ``summary.json`` stores) is multiplied
    by 100 in decimal arithmetic (exact) and rounded half to even to two decimals:
    ``pct(0.61245) == "61.24"``, ``pct(0.61255) == "61.26"`` (``f"{100 * x:.2f}"`` would print
    ``61.25`` for the first, because ``100 * 0.61245`` is ``61.245000000000005`` in binary).
    ``signed`` puts ``+`` before non-negative values (differences); NaN is ``"nan"``.
    """
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return f"{x * 100:+}" if signed and not math.isnan(x) else str(x * 100)
    text = f"{(Decimal(repr(x)) * 100).quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}"
    return "+" + text if signed and not text.startswith("-") else text


def fmt_pct(mean: float, ci: float | None = None, pm: str = "±") -> str:
    """``mean`` (and ``ci``, a half-width) as percentages by :func:`pct`: ``"61.24±0.52"``;
    ``pm`` is the separator (``" ± "`` in eval's table, ``"$\\pm$"`` in LaTeX)."""
    return pct(mean) + ("" if ci is None else pm + pct(ci))


def _key_text(key: Key) -> str:
    dataset, split, ways, shots, queries, method = key
    return f"{dataset} {split} {ways}-way {shots}-shot {queries}-query {method}"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True, eq=False)
class Run:
    """One run folder, loaded.

    ``summary`` is ``summary.json`` as a dict; ``results`` maps each evaluation key
    (:data:`KEY`: dataset, split, ways, shots, queries, method) to its entry of
    ``summary["results"]``; ``accuracies`` maps the same keys to the per-episode
    accuracies (fractions) ordered by episode index, and ``episodes`` to those indices.
    """

    path: Path
    summary: dict
    results: dict = field(repr=False)
    accuracies: dict = field(repr=False)
    episodes: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> dict:
        return self.summary.get("checkpoint") or {}

    @property
    def meta(self) -> dict:
        """The checkpoint's metadata (``summary["checkpoint"]["meta"]``), ``{}`` when absent."""
        meta = self.checkpoint.get("meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def label(self) -> str:
        """A row label from the checkpoint metadata: ``"resnet12 (clce)"``; else the folder name."""
        ck = self.checkpoint
        meta = self.meta
        arch = meta.get("arch") or meta.get("backbone") or ck.get("arch")
        loss = meta.get("loss")
        if not arch:
            return self.name
        return f"{arch} ({loss})" if loss else str(arch)

    @property
    def seed(self) -> Any:
        """The seed of the episode sampler (``summary["config"]["seed"]``)."""
        cfg = self.summary.get("config") or {}
        return cfg.get("seed")

    @property
    def finetune_seed(self) -> int | None:
        """The fine-tuning seed (``checkpoint.meta.seed``); ``None`` for a checkpoint without one
        (e.g. a converted third-party checkpoint)."""
        s = self.meta.get("seed")
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            return None
        return int(s)

    @property
    def config(self) -> dict:
        """The training configuration that tells checkpoints of one arch and loss apart:
        the entries of ``meta["loss_params"]`` and the :data:`CONFIG_KEYS` present in the metadata."""
        meta = self.meta
        out: dict[str, Any] = {}
        lp = meta.get("loss_params")
        if isinstance(lp, dict):
            for k in sorted(lp, key=str):
                out[str(k)] = lp[k]
        for k in CONFIG_KEYS:
            if k in meta and k not in out:
                out[k] = meta[k]
        if isinstance(out.get("pretrained"), dict):  # the starting weights, by content
            out["pretrained"] = str(out["pretrained"].get("sha256", ""))[:12] or None
        return out

    def keys(self) -> list[Key]:
        return list(self.results)


def _as_run(run: Run | str | os.PathLike) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder (``summary.json`` + ``per_episode.csv``) written by ``fewshot-bench eval``.

    ``path`` may also name the folder's ``summary.json``. Raises
    :class:`~fewshot_bench.errors.DataError` with a one-line message when the folder is
    missing, is not a run folder, was written by another format version, or its two
    files disagree.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == "summary.json":
        p = p.parent
    if not p.exists():
        raise DataError(f"{p}: no such run folder; pass the --out folder of `fewshot-bench eval`")
    if not p.is_dir():
        raise DataError(f"{p}: is a file, not a run folder; pass the --out folder of `fewshot-bench eval`")
    summary_path = p / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{p}: not a run folder (no summary.json); pass the --out folder of `fewshot-bench eval`")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{summary_path}: unreadable JSON ({exc}); re-run eval to rewrite the run folder") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise DataError(f"{summary_path}: not a fewshot-bench run summary (format is not {FORMAT!r})")
    version = summary.get("format_version", 0)
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise DataError(
                f"{p} was written by fewshot-bench format {version}, newer than this version reads "
                f"({FORMAT_VERSION}); upgrade fewshot-bench"
            )
        raise DataError(f"{p} was written by fewshot-bench format {version}; re-run eval with this version")
    raw_results = summary.get("results")
    if not isinstance(raw_results, list) or not raw_results:
        raise DataError(f"{summary_path}: no results; the run is empty or incomplete, re-run eval")
    results: dict[Key, dict] = {}
    for i, r in enumerate(raw_results):
        try:
            key = (str(r["dataset"]), str(r["split"]), int(r["ways"]), int(r["shots"]), int(r["queries"]),
                   str(r["method"]))
            for name in ("mean", "ci95", "std", "n_episodes"):
                r[name]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{summary_path}: results[{i}] lacks or mangles {exc}; re-run eval") from None
        if key in results:
            raise DataError(f"{summary_path}: results list {_key_text(key)} twice; re-run eval")
        results[key] = r
    accuracies, episodes = _read_per_episode(p / "per_episode.csv", results)
    return Run(path=p, summary=summary, results=results, accuracies=accuracies, episodes=episodes)


def find_runs(patterns: Iterable[str | os.PathLike], flag: str = "RUN") -> list[Path]:
    """Run folders from paths and glob patterns, in the order given (each pattern's matches sorted).

    A path that exists is taken as it is (:func:`load_run` checks it later). Otherwise a pattern
    with ``*``, ``?`` or ``[`` is expanded here (``**`` recursively), so that a quoted pattern
    works as well as one the shell expanded; its matches that are not run folders (no
    ``summary.json``) are passed over, and ``summary.json`` files stand for their folder.
    Duplicates are dropped. A pattern that matches no run folder raises
    :class:`~fewshot_bench.errors.ConfigError` naming ``flag``.
    """
    out: list[Path] = []
    for item in patterns:
        text = os.path.expanduser(str(item))
        if os.path.exists(text) or not glob.has_magic(text):
            found = [Path(text)]
        else:
            found = [Path(m).parent if Path(m).name == "summary.json" else Path(m)
                     for m in sorted(glob.glob(text, recursive=True))]
            found = [m for m in found if (m / "summary.json").is_file()]
            if not found:
                raise ConfigError(f"{flag} {item}: the pattern matches no run folder (a folder with summary.json); "
                                  "check the pattern or pass the --out folders of `fewshot-bench eval`")
        out += [m for m in found if m not in out]
    return out


def _read_per_episode(csv_path: Path, results: dict[Key, dict]) -> tuple[dict, dict]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path.parent}: not a complete run folder (no per_episode.csv); re-run eval")
    try:
        df = pd.read_csv(csv_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc}); re-run eval") from None
    missing = [c for c in _CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; re-run eval with this version")
    try:
        for c in ("ways", "shots", "queries", "episode"):
            df[c] = df[c].astype(np.int64)
        df["accuracy"] = df["accuracy"].astype(np.float64)
        for c in ("dataset", "split", "method"):
            df[c] = df[c].astype(str)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{csv_path}: a value is not of the expected type ({exc}); re-run eval") from None
    accuracies: dict[Key, np.ndarray] = {}
    episodes: dict[Key, np.ndarray] = {}
    groups = {tuple(k): g for k, g in df.groupby(list(KEY), sort=False)}
    for key, r in results.items():
        g = groups.get(key)
        if g is None:
            raise DataError(f"{csv_path}: no rows for {_key_text(key)} listed in summary.json; re-run eval")
        g = g.sort_values("episode", kind="stable")
        if len(g) != int(r["n_episodes"]):
            raise DataError(
                f"{csv_path}: {len(g)} rows for {_key_text(key)} but summary.json says "
                f"{r['n_episodes']} episodes; the run folder is incomplete, re-run eval"
            )
        index = g["episode"].to_numpy(np.int64)  # sorted
        repeated = np.flatnonzero(np.diff(index) == 0)  # pairing by episode index would follow row order
        if len(repeated):
            raise DataError(f"{csv_path}: episode {index[repeated[0]]} is listed twice for {_key_text(key)}; "
                            "the file is damaged, re-run eval")
        accuracies[key] = g["accuracy"].to_numpy(np.float64)
        episodes[key] = index
    return accuracies, episodes


# --------------------------------------------------------------------------- labels and the tidy frame


def _fmt_value(v: Any) -> str:
    if v is _MISSING:
        return "?"
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _auto_labels(runs: Sequence[Run]) -> list[str]:
    """Automatic row labels: :attr:`Run.label` (``"arch (loss)"``), plus ``key=value`` for every
    entry of :attr:`Run.config` that differs between runs of the same arch and loss
    (``"resnet12 (clce, lam=0.5)"``), plus ``[fine-tuned on X]`` for a backbone fine-tuned on a
    dataset the run does not evaluate. Entries that follow from the fine-tuning dataset (image
    size, transform) split a row only between runs fine-tuned on the same dataset."""
    base = [r.label for r in runs]
    for i, r in enumerate(runs):  # a backbone fine-tuned elsewhere is another row than one fine-tuned here
        ft = r.meta.get("dataset")
        if ft and base[i] != r.name and ft not in {k[0] for k in r.results}:
            base[i] = f"{base[i]} [fine-tuned on {ft}]"
    buckets: dict[str, list[int]] = {}
    for i, (r, lab) in enumerate(zip(runs, base, strict=True)):
        if lab != r.name:  # labels from metadata only
            buckets.setdefault(lab, []).append(i)
    out = list(base)
    for idx in buckets.values():
        if len(idx) < 2:
            continue
        configs = {i: {**runs[i].config, "preprocess": _preprocess_flag(runs[i])} for i in idx}
        order = list(dict.fromkeys(k for i in idx for k in configs[i]))
        by_dataset: dict[str, list[int]] = {}
        for i in idx:
            by_dataset.setdefault(str(runs[i].meta.get("dataset")), []).append(i)
        def varies(k: str, members: list[int], configs: dict = configs) -> bool:
            return len({repr(configs[i][k]) if k in configs[i] else "?" for i in members}) > 1

        differ = [k for k in order
                  if (any(varies(k, m) for m in by_dataset.values()) if k in _DATASET_DERIVED else varies(k, idx))]
        if not differ:
            continue
        for i in idx:
            params = ", ".join(f"{k}={_fmt_value(configs[i].get(k, _MISSING))}" for k in differ)
            meta = runs[i].meta
            arch = meta.get("arch") or meta.get("backbone") or runs[i].checkpoint.get("arch")
            loss = meta.get("loss")
            out[i] = f"{arch} ({loss}, {params})" if loss else f"{arch} ({params})"
    return out


def _preprocess_flag(run: Run) -> str:
    """The run's ``--preprocess`` (canonical chain), ``"default"`` when each method used its own
    declared chain (also every run written before the flag existed)."""
    return str((run.summary.get("config") or {}).get("preprocess") or "default")


def _preprocess_of(runs: Sequence[Run], key: Key) -> tuple[str | None, str | None]:
    """``(spec, description)`` of the feature preprocessing ``runs`` recorded for ``key``; ``None``s
    for runs written before it was recorded (the seeds of a row agree, see :func:`seed_groups`)."""
    for r in runs:
        res = r.results.get(key) or {}
        if res.get("preprocess") is not None:
            return str(res["preprocess"]), str(res.get("preprocess_description") or res["preprocess"])
    return None, None


def _explicit_labels(runs: Sequence[Run], labels: Mapping[str, str] | None) -> dict[int, str]:
    """``{run index: text}`` from ``labels`` (``{run path: text}``)."""
    out: dict[int, str] = {}
    for key, text in dict(labels or {}).items():
        rp = Path(key).expanduser().resolve()
        hits = [i for i, r in enumerate(runs) if r.path.resolve() == rp]
        if not hits:
            raise ConfigError(f"--label {key}={text}: {key} is not one of the runs given")
        for i in hits:
            out[i] = str(text)
    return out


def _resolve_labels(runs: Sequence[Run], labels: Mapping[str, str] | None) -> list[str]:
    """One label per run: ``labels[path]`` when given, else the automatic label, made unique
    (one row per run: the seeds of a configuration are *not* merged here, see :func:`seed_groups`)."""
    by_path = _explicit_labels(runs, labels)
    auto = _auto_labels(runs)
    out = [by_path.get(i, auto[i]) for i in range(len(runs))]
    explicit = set(by_path)
    counts: dict[str, int] = {}
    for lab in out:
        counts[lab] = counts.get(lab, 0) + 1
    for i, lab in enumerate(out):
        if counts[lab] > 1:
            if i in explicit and all(j in explicit for j, other in enumerate(out) if other == lab):
                raise ConfigError(f"--label: two runs share the label {lab!r}; give each run its own label")
            if i not in explicit:
                out[i] = f"{lab} [{runs[i].name}]"
    if len(set(out)) != len(out):  # same folder names in different places
        out = [f"{lab} [{r.path}]" if out.count(lab) > 1 else lab for lab, r in zip(out, runs, strict=True)]
    return out


def _unique_runs(runs: Iterable[Run | str | os.PathLike]) -> list[Run]:
    out: list[Run] = []
    seen: set[Path] = set()
    for r in runs:
        run = _as_run(r)
        rp = run.path.resolve()
        if rp not in seen:
            seen.add(rp)
            out.append(run)
    return out


def runs_frame(runs: Iterable[Run | str | os.PathLike], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One tidy row per run x dataset x split x ways x shots x queries x method.

    Columns: ``run`` (folder path), ``label``, the :data:`KEY` columns, ``mean``,
    ``ci95`` (half-width), ``std`` (ddof=1), ``n`` (episodes), ``ci_method``,
    ``transductive``, ``episodes_sha256``, ``seed`` (of the episode sampler),
    ``finetune_seed`` (``None`` when the checkpoint has none), ``input_protocol``, ``preprocess``,
    ``preprocess_text`` (the feature preprocessing chain); accuracies as fractions,
    as stored in ``summary.json``. ``labels`` maps run paths to row labels (default: the
    automatic label, see :func:`seed_groups`); every run keeps its own row here.
    """
    runs = _unique_runs(runs)
    if not runs:
        raise ConfigError("no runs given; pass at least one run folder")
    labs = _resolve_labels(runs, labels)
    rows = []
    for run, lab in zip(runs, labs, strict=True):
        for key, r in run.results.items():
            rows.append({
                "run": str(run.path),
                "label": lab,
                **dict(zip(KEY, key, strict=True)),
                "mean": float(r["mean"]),
                "ci95": _float(r["ci95"]),
                "std": _float(r["std"]),
                "n": int(r["n_episodes"]),
                "ci_method": str(r.get("ci_method", "t")),
                "transductive": bool(r.get("transductive", False)),
                "episodes_sha256": r.get("episodes_sha256"),
                "seed": run.seed,
                "finetune_seed": run.finetune_seed,
                "input_protocol": input_protocol_text(run.summary, key[0]),
                **dict(zip(("preprocess", "preprocess_text"), _preprocess_of([run], key), strict=True)),
            })
    df = pd.DataFrame(rows)
    df["finetune_seed"] = pd.Series([r["finetune_seed"] for r in rows], dtype=object)
    return df


def input_protocol_text(summary: Mapping[str, Any], dataset: str) -> str:
    """Short text of the input protocol a run used on ``dataset``: ``rfs-cifar 32 px, avg pool``,
    with ``[preset NAME]`` / ``FORCED`` where they apply; ``transform NAME`` for runs written before
    protocols were recorded."""
    p = (summary.get("protocols") or {}).get(dataset)
    if not p:
        t = (summary.get("transforms") or {}).get(dataset) or {}
        return f"transform {t.get('name', 'unknown')}"
    geo = f"{p.get('image_size')} px" if p.get("image_size") else "native size"
    if p.get("resize"):
        geo += f" (resize {p['resize']}{' + center crop' if p.get('crop') else ''})"
    pool = {"avg": "avg pool", "none": "flattened"}.get(p.get("pool"), "model pooling")
    src = p.get("source", "")
    text = f"{p.get('transform')} {geo}, {pool}" + (f" [{src}]" if src.startswith("preset") else "")
    return text + (" FORCED" if p.get("forced") else "")


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


# --------------------------------------------------------------------------- seed groups


@dataclass(frozen=True, eq=False)
class SeedGroup:
    """One table row: the runs of one configuration, one per fine-tuning seed.

    ``runs`` are ordered by fine-tuning seed. A run whose checkpoint has no seed is always
    a group of its own. Built by :func:`seed_groups`, which checks that no two runs hold
    the same seed for one evaluation key and that all seeds of a key share its episodes.
    """

    label: str
    runs: tuple[Run, ...]

    @property
    def seeds(self) -> tuple[int | None, ...]:
        return tuple(r.finetune_seed for r in self.runs)

    @property
    def name(self) -> str:
        """How messages name the group: the run folder for one run, else ``row 'label'``."""
        return str(self.runs[0].path) if len(self.runs) == 1 else f"row {self.label!r}"

    def keys(self) -> list[Key]:
        """The evaluation keys any of its runs holds, in order of appearance."""
        return list(dict.fromkeys(k for r in self.runs for k in r.results))

    def runs_for(self, key: Key) -> list[Run]:
        """The runs holding ``key``, by seed."""
        return [r for r in self.runs if key in r.results]


def seed_groups(runs: Iterable[Run | str | os.PathLike], labels: Mapping[str, str] | None = None) -> list[SeedGroup]:
    """Group runs into table rows: runs with the same row label form one row, one run per
    fine-tuning seed.

    The row label is ``labels[path]`` (``--label RUN=TEXT``; give several runs the same
    text to group them) or the automatic label from the checkpoint metadata (arch and
    loss, plus the training hyper-parameters that differ between runs of that arch and
    loss on one fine-tuning dataset, see :data:`CONFIG_KEYS`). Within a row the runs are
    told apart by ``checkpoint.meta.seed``; runs of one seed fine-tuned on different
    datasets (different keys) share the row. A run whose checkpoint has no seed is a row
    of its own (``"label [folder]"`` when its automatic label is taken).

    Raises :class:`~fewshot_bench.errors.ConfigError` when two runs of one row hold the
    same seed for the same dataset x split x ways x shots x queries x method, when an
    explicit label is shared by a run without a seed, or the seeds of a row used different
    CI methods, and :class:`~fewshot_bench.errors.EpisodeError` when the seeds of a row
    were evaluated on different episodes for one key.
    """
    run_list = _unique_runs(runs)
    if not run_list:
        raise ConfigError("no runs given; pass at least one run folder")
    explicit = _explicit_labels(run_list, labels)
    auto = _auto_labels(run_list)
    base = [explicit.get(i, auto[i]) for i in range(len(run_list))]
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(base):
        by_label.setdefault(lab, []).append(i)
    found: list[tuple[int, str, list[int]]] = []  # (first index, label, members)
    for lab, idx in by_label.items():
        if len(idx) == 1:
            found.append((idx[0], lab, idx))
            continue
        seedless = [i for i in idx if run_list[i].finetune_seed is None]
        seeded = [i for i in idx if run_list[i].finetune_seed is not None]
        if seedless and any(i in explicit for i in idx):
            raise ConfigError(
                f"--label: two runs share the label {lab!r} but {run_list[seedless[0]].path} has no fine-tuning "
                "seed in its checkpoint metadata; only seeds of one configuration may share a label, give each "
                "other run its own label"
            )
        if seeded:
            found.append((seeded[0], lab, seeded))
        found += [(i, f"{lab} [{run_list[i].name}]", [i]) for i in seedless]
    found.sort(key=lambda t: t[0])
    names = [lab for _, lab, _ in found]
    if len(set(names)) != len(names):  # a "[folder]" label met another label
        names = [f"{base[members[0]]} [{run_list[members[0]].path}]" if names.count(lab) > 1 and len(members) == 1
                 else lab for lab, (_, _, members) in zip(names, found, strict=True)]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"--label: two rows share the label {dup!r}; give each row its own label")
    groups = []
    for lab, (_, _, members) in zip(names, found, strict=True):
        members = sorted(members, key=lambda i: (run_list[i].finetune_seed is None, run_list[i].finetune_seed or 0, i))
        group = SeedGroup(lab, tuple(run_list[i] for i in members))
        _check_group(group)
        groups.append(group)
    return groups


def _check_group(group: SeedGroup) -> None:
    if len(group.runs) < 2:
        return
    methods = {str(r.results[k].get("ci_method", "t")) for r in group.runs for k in r.results}
    if len(methods) > 1:
        raise ConfigError(f"the runs of row {group.label!r} use different CI methods ({', '.join(sorted(methods))}); "
                          "re-run eval of every seed with one --ci")
    for key in group.keys():
        holders = group.runs_for(key)
        seen: dict[int | None, Run] = {}
        for r in holders:
            other = seen.get(r.finetune_seed)
            if other is not None:
                raise ConfigError(
                    f"{other.path} and {r.path} share the row label {group.label!r} and the fine-tuning seed "
                    f"{r.finetune_seed} for {_key_text(key)}; give different configurations different --label "
                    "values, or pass each seed once"
                )
            seen[r.finetune_seed] = r
        for what, value in (("input protocols", lambda r, k=key: input_protocol_text(r.summary, k[0])),
                            ("method parameters", lambda r, k=key: repr(r.results[k].get("method_params"))),
                            ("feature preprocessing", lambda r, k=key: r.results[k].get("preprocess"))):
            values = {value(r) for r in holders} - {None}  # None: not recorded (older runs)
            if len(values) > 1:
                raise ConfigError(f"the seeds of row {group.label!r} were evaluated with different {what} for "
                                  f"{_key_text(key)} ({' vs '.join(sorted(values))}); give them different --label "
                                  "values or evaluate every seed alike")
        hashes = [(r, r.results[key].get("episodes_sha256")) for r in holders]
        missing = [r for r, h in hashes if not h]
        if len(holders) > 1 and missing:
            raise EpisodeError(
                f"{missing[0].path}: no episodes_sha256 for {_key_text(key)}, so the seeds of row {group.label!r} "
                "cannot be checked to share their episodes; re-run eval with this version"
            )
        first_run, first = hashes[0]
        for r, h in hashes[1:]:
            if h != first:
                raise EpisodeError(
                    f"the seeds of row {group.label!r} were evaluated on different episodes for {_key_text(key)} "
                    f"({first_run.path}: {first[:8]}, {r.path}: {h[:8]}); evaluate every seed on the same "
                    "episode file"
                )
            if not np.array_equal(first_run.episodes[key], r.episodes[key]):
                raise EpisodeError(
                    f"{first_run.path} and {r.path} list different episode indices for {_key_text(key)}; "
                    "re-run eval of every seed on the same episode file"
                )


def aggregate_seeds(means: Sequence[float] | np.ndarray, how: str = "median") -> tuple[float, tuple[int, ...]]:
    """Sum the per-seed means of one cell up; returns ``(value, positions)``.

    ``how="median"``: sort the seeds by mean (ties by position); with an odd number ``S``
    of seeds the value is the middle seed's mean (``positions`` = that seed), with an even
    ``S`` the mean of the two middle ones (``numpy.median``; ``positions`` = both).
    ``how="mean"``: the mean of all per-seed means (``positions`` = all). ``positions``
    are the seeds the value is made of; the cell's ± is the episode CI of their
    per-episode accuracies averaged over them (see :func:`groups_frame`).
    """
    if how not in AGGREGATES:
        raise ConfigError(f"--aggregate {how}: unknown rule; use one of: {', '.join(AGGREGATES)}")
    m = np.asarray(means, dtype=np.float64).reshape(-1)
    if m.size == 0:
        raise ConfigError("no seeds to aggregate")
    if how == "mean":
        idx = tuple(range(m.size))
    else:
        order = sorted(range(m.size), key=lambda i: (m[i], i))
        half = m.size // 2
        idx = (order[half],) if m.size % 2 else tuple(sorted((order[half - 1], order[half])))
    return float(np.mean(m[list(idx)])), idx


def _cell_stats(group: SeedGroup, key: Key, how: str) -> dict:
    """The aggregated numbers of one row x key (see :func:`groups_frame`)."""
    holders = group.runs_for(key)
    res = [r.results[key] for r in holders]
    means = [float(r["mean"]) for r in res]
    cis = [_float(r["ci95"]) for r in res]
    if len(holders) == 1:
        value, idx, ci = means[0], (0,), cis[0]
    else:
        value, idx = aggregate_seeds(means, how)
        if len(idx) == 1:
            ci = cis[idx[0]]
        else:  # the episodes are identical (checked): CI of the per-episode accuracy averaged over the seeds
            avg = np.mean([holders[i].accuracies[key] for i in idx], axis=0)
            ci = stats.mean_ci(avg, method=str(res[0].get("ci_method", "t"))).ci
    seeds = tuple(r.finetune_seed for r in holders)
    arr = np.asarray(means)
    return {
        "mean": value,
        "ci95": ci,
        "n": int(res[0]["n_episodes"]),
        "n_seeds": len(holders),
        "seeds": seeds,
        "seed_means": tuple(means),
        "seed_ci95": tuple(cis),
        "seed_min": float(arr.min()),
        "seed_max": float(arr.max()),
        "seed_sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
        "aggregate": how if len(holders) > 1 else "single",
        "ci_seeds": tuple(seeds[i] for i in idx),
        "runs": tuple(str(r.path) for r in holders),
        "ci_method": str(res[0].get("ci_method", "t")),
        "transductive": bool(res[0].get("transductive", False)),
        "episodes_sha256": res[0].get("episodes_sha256"),
        "seed": holders[0].seed,
    }


def groups_frame(
    runs: Iterable[Run | str | os.PathLike] | Sequence[SeedGroup],
    labels: Mapping[str, str] | None = None,
    aggregate: str = "median",
) -> pd.DataFrame:
    """One tidy row per table row (:class:`SeedGroup`) x dataset x split x ways x shots x queries x method.

    Columns: ``label``, the :data:`KEY` columns, ``mean`` (the aggregate of the per-seed
    means, :func:`aggregate_seeds`; the run's own mean for one seed), ``ci95`` (the
    half-width of the episode CI of that value: the median seed's for an odd number of
    seeds, else the CI over episodes of the per-episode accuracy averaged over the seeds
    the value is made of -- identical episodes make that the CI of exactly the value
    shown), ``n`` (episodes), ``n_seeds``, ``seeds``, ``seed_means``, ``seed_ci95``
    (tuples, by seed), ``seed_min``, ``seed_max``, ``seed_sd`` (ddof=1; NaN for one
    seed), ``aggregate`` (``"median"``/``"mean"``, ``"single"`` for one seed),
    ``ci_seeds`` (the seeds behind ``ci95``), ``runs`` (paths), ``ci_method``,
    ``transductive``, ``episodes_sha256``, ``seed`` (of the episode sampler), ``run``
    (the first path), ``input_protocol`` (:func:`input_protocol_text`), ``preprocess`` and
    ``preprocess_text`` (the feature preprocessing chain and its description; ``None`` for runs
    written before it was recorded). Accuracies are fractions.
    """
    groups = list(runs)
    if not groups or not all(isinstance(g, SeedGroup) for g in groups):
        groups = seed_groups(groups, labels)
    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate}: unknown rule; use one of: {', '.join(AGGREGATES)}")
    rows = []
    for g in groups:
        for key in g.keys():
            cell = _cell_stats(g, key, aggregate)
            inputs = sorted({input_protocol_text(r.summary, key[0]) for r in g.runs_for(key)})
            rows.append({"label": g.label, **dict(zip(KEY, key, strict=True)), **cell, "run": cell["runs"][0],
                         "input_protocol": " / ".join(inputs),
                         **dict(zip(("preprocess", "preprocess_text"), _preprocess_of(g.runs_for(key), key),
                                    strict=True))})
    return pd.DataFrame(rows)


def seed_pairs(runs_a: Sequence[Run], runs_b: Sequence[Run], what: str = "") -> list[tuple[Run, Run]]:
    """Pair the seeds of two rows for paired tests: seed ``s`` of ``a`` with seed ``s`` of ``b``.

    Two single runs are paired whatever their seeds (a comparison of two checkpoints);
    otherwise the seeds both rows hold are paired, in seed order, and seeds held by one
    row only are left out; with no seed in common a single run (e.g. a third-party
    checkpoint) is paired with every seed of the other row. Two rows of several seeds
    with no seed in common raise :class:`~fewshot_bench.errors.ConfigError`.
    """
    if len(runs_a) == 1 and len(runs_b) == 1:
        return [(runs_a[0], runs_b[0])]
    by_a = {r.finetune_seed: r for r in runs_a if r.finetune_seed is not None}
    by_b = {r.finetune_seed: r for r in runs_b if r.finetune_seed is not None}
    common = sorted(s for s in by_a if s in by_b)
    if common:
        return [(by_a[s], by_b[s]) for s in common]
    if len(runs_a) == 1:
        return [(runs_a[0], rb) for rb in runs_b]
    if len(runs_b) == 1:
        return [(ra, runs_b[0]) for ra in runs_a]
    sa = ", ".join(str(r.finetune_seed) for r in runs_a)
    sb = ", ".join(str(r.finetune_seed) for r in runs_b)
    raise ConfigError(f"{what}: the rows share no fine-tuning seed (seeds {sa} vs {sb}); fine-tune both with the "
                      "same --seeds to compare them seed by seed")


# --------------------------------------------------------------------------- comparisons


def paired_accuracies(run_a: Run, run_b: Run, key_a: Key, key_b: Key | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-episode accuracies of ``run_a`` on ``key_a`` and ``run_b`` on ``key_b`` (default
    ``key_a``), after checking both were evaluated on identical episodes.

    Raises :class:`~fewshot_bench.errors.EpisodeError` when the ``episodes_sha256`` are
    missing or differ, or the episode indices differ (:func:`_episode_mismatch`).
    """
    key_b = key_a if key_b is None else key_b
    mismatch = _episode_mismatch(run_a, run_b, key_a, key_b)
    if mismatch is not None:
        raise EpisodeError(mismatch[1])
    return run_a.accuracies[key_a], run_b.accuracies[key_b]


def _episode_mismatch(run_a: Run, run_b: Run, key_a: Key, key_b: Key) -> tuple[str, str] | None:
    """``None`` when ``run_a`` on ``key_a`` and ``run_b`` on ``key_b`` were evaluated on identical
    episodes (same ``episodes_sha256``, same episode indices), else ``(reason, one-line message)``
    with reason ``"no_episodes_sha256"``, ``"different_episodes"`` or ``"different_episode_indices"``."""
    ha = run_a.results[key_a].get("episodes_sha256")
    hb = run_b.results[key_b].get("episodes_sha256")
    if not ha or not hb:
        which = run_a.path if not ha else run_b.path
        return "no_episodes_sha256", (
            f"{which}: no episodes_sha256 for {_key_text(key_a)}, so a paired comparison cannot check the "
            "episodes are the same; re-run eval with this version"
        )
    if ha != hb:
        return "different_episodes", (
            f"{run_a.path} and {run_b.path} were evaluated on different episodes for {_key_text(key_a)} "
            f"(episodes_sha256 {ha[:8]} vs {hb[:8]}); re-run eval on the same episode file to compare them"
        )
    ea, eb = run_a.episodes[key_a], run_b.episodes[key_b]
    if ea.shape != eb.shape or not np.array_equal(ea, eb):
        return "different_episode_indices", (
            f"{run_a.path} and {run_b.path} list different episode indices for {_key_text(key_a)} "
            f"({ea.size} vs {eb.size} episodes); re-run eval to compare them"
        )
    return None


def _verdict(diff: float, p: float, alpha: float) -> str:
    if not (p <= alpha):  # also NaN
        return "n.s."
    return "better" if diff > 0 else "worse" if diff < 0 else "n.s."


def compare(
    runs: Sequence[Run | str | os.PathLike],
    baseline: Run | str | os.PathLike | None = None,
    alpha: Sequence[float] = (0.01, 0.05),
    level: float = 0.95,
    labels: Mapping[str, str] | None = None,
    aggregate: str = "median",
) -> pd.DataFrame:
    """Paired comparisons of rows evaluated on identical episodes, fine-tuning seed by seed.

    The runs are grouped into rows by :func:`seed_groups` (runs of one configuration
    that differ only in the fine-tuning seed form one row). Without ``baseline`` every
    pair of rows is compared, ``a`` the earlier in ``runs`` and ``b`` the later,
    ``diff = mean(a) - mean(b)``; with ``baseline`` (any run of the baseline row) every
    other row is ``a`` and the baseline row ``b``. Each pair of rows is compared on every
    dataset x split x ways x shots x queries x method both hold, seed pair by seed pair
    (:func:`seed_pairs`: seed ``s`` of ``a`` against seed ``s`` of ``b``); with one run
    per row this is one comparison of two runs.

    One frame row per row pair x key x seed pair. Columns: ``a``, ``b`` (row labels),
    ``run_a``, ``run_b`` (paths), ``seed_a``, ``seed_b`` (fine-tuning seeds, ``None``
    when unknown), the :data:`KEY` columns, ``n``, ``mean_a``, ``mean_b``, ``diff``,
    ``ci`` (half-width of the paired ``level`` t-interval of ``diff``), ``diff_low``,
    ``diff_high``, ``t``, ``p_t`` (paired t-test, two-sided), ``w``, ``p_wilcoxon``
    (signed-rank, zero_method "wilcox"), ``p_t_holm``, ``p_wilcoxon_holm``
    (Holm-Bonferroni over all rows of the frame -- every seed pair of every key of every
    row pair -- each test separately), ``episodes_sha256``, and ``verdict_<alpha>`` for
    each ``alpha``: ``"better"``/``"worse"`` (for ``a`` against ``b``) where the
    Holm-adjusted t-test p-value is ``<= alpha``, else ``"n.s."``. Accuracies are
    fractions. :func:`seed_summary` sums the seed pairs up per row pair and key
    (``aggregate`` is its rule, kept in ``df.attrs``).

    Only identical episodes pair. What cannot be compared is skipped, not refused, and listed
    in ``df.attrs["skipped"]`` (one record per row pair x key, or per row pair sharing no key:
    ``a``, ``b``, ``run_a``, ``run_b``, the :data:`KEY` columns -- ``None`` for a row pair --,
    ``reason`` and a one-line ``message``); reasons: ``"no_shared_cell"`` (e.g. other ways or
    shots), ``"no_shared_seed"`` (two rows of several seeds with no seed in common),
    ``"different_episodes"``, ``"different_episode_indices"``, ``"no_episodes_sha256"``. Skipped
    comparisons are not in the Holm family.

    Raises :class:`~fewshot_bench.errors.ConfigError` when fewer than two rows are given or the
    seeds of a row are inconsistent (:func:`seed_groups`).
    """
    alphas = tuple(float(a) for a in alpha)
    for a in alphas:
        if not 0 < a < 1:
            raise ConfigError(f"alpha={a}: must lie strictly between 0 and 1, e.g. 0.05")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate}: unknown rule; use one of: {', '.join(AGGREGATES)}")
    all_runs, base_run, pairs = _row_pairs(runs, baseline, labels)
    rows, skipped = _compare_pairs(pairs, level)
    df = _tested_frame(rows, alphas)
    df.attrs.update({"alpha": list(alphas), "level": level, "baseline": None if base_run is None else str(base_run.path),
                     "aggregate": aggregate, "protocol": protocol_text(runs_frame(all_runs)), "skipped": skipped})
    return df


def _row_pairs(runs: Sequence[Run | str | os.PathLike], baseline: Run | str | os.PathLike | None,
               labels: Mapping[str, str] | None) -> tuple[list[Run], Run | None, list[tuple[SeedGroup, SeedGroup]]]:
    """The runs of :func:`compare` (``baseline`` added), the baseline run, and the row pairs to compare."""
    all_runs = _unique_runs(runs)
    base_run = _as_run(baseline) if baseline is not None else None
    if base_run is not None and all(r.path.resolve() != base_run.path.resolve() for r in all_runs):
        all_runs.append(base_run)
    if len(all_runs) < 2:
        raise ConfigError(f"compare needs at least two different runs, got {len(all_runs)}")
    groups = seed_groups(all_runs, labels)
    if len(groups) < 2:
        raise ConfigError(
            f"compare needs at least two different runs or rows, got one row: all {len(all_runs)} runs belong to "
            f"{groups[0].label!r} (fine-tuning seeds {', '.join(str(s) for s in sorted(set(groups[0].seeds)))}); "
            "pass another configuration, or tell the runs apart with --label"
        )
    if base_run is None:
        return all_runs, None, list(itertools.combinations(groups, 2))
    bp = base_run.path.resolve()
    base_group = next(g for g in groups if any(r.path.resolve() == bp for r in g.runs))
    base_run = next(r for r in base_group.runs if r.path.resolve() == bp)
    return all_runs, base_run, [(g, base_group) for g in groups if g is not base_group]


def _compare_pairs(pairs: Sequence[tuple[SeedGroup, SeedGroup]], level: float) -> tuple[list[dict], list[dict]]:
    """The rows of :func:`compare` (every shared key, seed pair by seed pair) and the skipped comparisons."""
    rows: list[dict] = []
    skipped: list[dict] = []
    for ga, gb in pairs:
        keys_b = set(gb.keys())
        shared = [k for k in ga.keys() if k in keys_b]
        if not shared:
            skipped.append(_skip(ga, gb, None, "no_shared_cell", (
                f"{ga.name} and {gb.name} share no dataset x split x ways x shots x queries x method "
                f"({_cells_text(ga.keys())} vs {_cells_text(gb.keys())}); nothing to compare")))
            continue
        for key in shared:
            seed_run_pairs, skip = _paired_runs(ga, gb, key)
            if skip is not None:
                skipped.append(skip)
            rows += [_compare_row(ga, gb, ra, rb, key, level) for ra, rb in seed_run_pairs]
    return rows, skipped


def _tested_frame(rows: list[dict], alphas: Sequence[float]) -> pd.DataFrame:
    """The rows as a frame with the Holm-adjusted p-values (over every row) and a verdict per alpha."""
    df = pd.DataFrame(rows, columns=list(_COMPARE_COLUMNS))
    for col in ("seed_a", "seed_b"):
        df[col] = pd.Series([r[col] for r in rows], dtype=object)
    df["p_t_holm"] = stats.holm(df["p_t"].to_numpy())
    df["p_wilcoxon_holm"] = stats.holm(df["p_wilcoxon"].to_numpy())
    for a in alphas:
        df[f"verdict_{a:g}"] = [_verdict(d, p, a) for d, p in zip(df["diff"], df["p_t_holm"], strict=True)]
    return df


def _compare_row(ga: SeedGroup, gb: SeedGroup, ra: Run, rb: Run, key: Key, level: float) -> dict:
    """One row of :func:`compare`: run ``ra`` of row ``ga`` against ``rb`` of ``gb`` on ``key``."""
    xa, xb = paired_accuracies(ra, rb, key)
    diff, half = stats.mean_difference(xa, xb, level=level)
    tt = stats.paired_ttest(xa, xb) if xa.size >= 2 else stats.TestResult(math.nan, math.nan)
    ww = stats.wilcoxon(xa, xb)
    return {
        "a": ga.label,
        "b": gb.label,
        "run_a": str(ra.path),
        "run_b": str(rb.path),
        "seed_a": ra.finetune_seed,
        "seed_b": rb.finetune_seed,
        **dict(zip(KEY, key, strict=True)),
        "n": int(xa.size),
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "diff": diff,
        "ci": half,
        "diff_low": diff - half,
        "diff_high": diff + half,
        "t": tt.statistic,
        "p_t": tt.pvalue,
        "w": ww.statistic,
        "p_wilcoxon": ww.pvalue,
        "episodes_sha256": ra.results[key].get("episodes_sha256"),
    }


_COMPARE_COLUMNS = ("a", "b", "run_a", "run_b", "seed_a", "seed_b", *KEY, "n", "mean_a", "mean_b", "diff", "ci",
                    "diff_low", "diff_high", "t", "p_t", "w", "p_wilcoxon", "episodes_sha256")


def _skip(ga: SeedGroup, gb: SeedGroup, key: Key | None, reason: str, message: str,
          pair: tuple[Run, Run] | None = None) -> dict:
    """One record of ``compare(...).attrs["skipped"]`` (see :func:`compare`)."""
    return {"a": ga.label, "b": gb.label, "run_a": None if pair is None else str(pair[0].path),
            "run_b": None if pair is None else str(pair[1].path),
            **dict(zip(KEY, key if key is not None else (None,) * len(KEY), strict=True)),
            "reason": reason, "message": message}


def _paired_runs(ga: SeedGroup, gb: SeedGroup, key: Key, key_b: Key | None = None,
                 what: str = "") -> tuple[list[tuple[Run, Run]], dict | None]:
    """The seed pairs (:func:`seed_pairs`) of row ``ga`` on ``key`` and row ``gb`` on ``key_b``
    (default ``key``), all on identical episodes; or ``([], skip record)`` when the rows share no
    seed or a pair's episodes differ (the seeds of a row share their episodes, so one differing
    pair means all do)."""
    key_b = key if key_b is None else key_b
    try:
        pairs = seed_pairs(ga.runs_for(key), gb.runs_for(key_b), what or f"{ga.label!r} vs {gb.label!r}, "
                           f"{_key_text(key)}")
    except ConfigError as exc:
        return [], _skip(ga, gb, key, "no_shared_seed", str(exc))
    for ra, rb in pairs:
        mismatch = _episode_mismatch(ra, rb, key, key_b)
        if mismatch is not None:
            return [], _skip(ga, gb, key, mismatch[0], mismatch[1], (ra, rb))
    return pairs, None


def _cells_text(keys: Iterable[Key]) -> str:
    """``cifar-fs/fc100 test 5-way 1/5-shot 15q protonet``: what a set of keys spans."""
    keys = list(keys)

    def join(i: int) -> str:
        return "/".join(str(v) for v in sorted({k[i] for k in keys}))

    return f"{join(0)} {join(1)} {join(2)}-way {join(3)}-shot {join(4)}q {join(5)}"


def _seed_text(a: Any, b: Any) -> str:
    def one(s: Any) -> str:
        return "-" if s is None or (isinstance(s, float) and math.isnan(s)) else str(int(s))

    return one(a) if one(a) == one(b) else f"{one(a)}/{one(b)}"


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Sum the seed pairs of :func:`compare` up: one row per row pair x key.

    Columns: ``a``, ``b``, the :data:`KEY` columns, ``n_pairs``, ``seeds`` (the pairs,
    ``"0,1,2"``, or ``"0/3"`` where the two seeds differ), ``mean_a``, ``mean_b``, ``diff``
    (the aggregate, ``df.attrs["aggregate"]``, median by default, of the per-pair values),
    ``diff_min``, ``diff_max``, and for each ``alpha``: ``n_better_<alpha>``,
    ``n_worse_<alpha>`` (seed pairs whose Holm-adjusted paired t-test is significant in
    favour of ``a`` / of ``b``) and ``verdict_<alpha>``: ``"better"`` when every seed pair
    is better, ``"worse"`` when every one is worse, ``"n.s."`` when none is significant,
    else ``"mixed"``.
    """
    how = df.attrs.get("aggregate", "median")
    alphas = [c.removeprefix("verdict_") for c in df.columns if c.startswith("verdict_")]
    cols = ["a", "b", *KEY]
    if df.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for keys, g in df.groupby(cols, sort=False):
        row = dict(zip(cols, keys, strict=True))
        row.update({
            "n_pairs": len(g),
            "seeds": ",".join(_seed_text(a, b) for a, b in zip(g["seed_a"], g["seed_b"], strict=True)),
            "mean_a": aggregate_seeds(g["mean_a"], how)[0],
            "mean_b": aggregate_seeds(g["mean_b"], how)[0],
            "diff": aggregate_seeds(g["diff"], how)[0],
            "diff_min": float(g["diff"].min()),
            "diff_max": float(g["diff"].max()),
        })
        for a in alphas:
            v = g[f"verdict_{a}"]
            better, worse = int((v == "better").sum()), int((v == "worse").sum())
            row[f"n_better_{a}"] = better
            row[f"n_worse_{a}"] = worse
            row[f"verdict_{a}"] = ("better" if better == len(g) else "worse" if worse == len(g)
                                   else "n.s." if better + worse == 0 else "mixed")
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["aggregate"] = how
    return out


def format_compare(df: pd.DataFrame) -> str:
    """The output of :func:`compare` as a fixed-width text table for a terminal.

    Differences and CIs in percentage points; p-values Holm-adjusted; one verdict
    column per alpha. When a row pair was compared over several seed pairs, a ``seed``
    column names each pair and a second table (:func:`seed_summary`) sums them up. Percentages
    follow :func:`pct`. Every skipped comparison (``df.attrs["skipped"]``) ends the text as one
    ``skipped: ...`` line.
    """
    skipped = "".join(f"\nskipped: {s['message']}" for s in df.attrs.get("skipped", []))
    if df.empty:
        return "(no comparisons: nothing was evaluated on identical episodes)" + skipped
    summary = seed_summary(df)
    several = bool((summary["n_pairs"] > 1).any())
    text = _compare_rows_text(df, several)
    if several:
        text += _seed_pairs_text(summary)
    protocol = df.attrs.get("protocol")
    return text + (f"\nprotocol: {protocol}" if protocol else "") + skipped


def _compare_rows_text(df: pd.DataFrame, several: bool) -> str:
    """:func:`format_compare`'s first table: one line per row of ``df`` (a ``seed`` column when ``several``)."""
    verdicts = [c for c in df.columns if c.startswith("verdict_")]
    out = pd.DataFrame({
        "a": df["a"],
        "b": df["b"],
        "dataset": [dataset_display_name(d) for d in df["dataset"]],
        "split": df["split"],
        "ways": df["ways"].astype(str) + "-way",
        "shots": df["shots"].astype(str) + "-shot",
        "method": df["method"],
        **({"seed": [_seed_text(a, b) for a, b in zip(df["seed_a"], df["seed_b"], strict=True)]} if several else {}),
        "n": df["n"],
        "a %": [pct(x) for x in df["mean_a"]],
        "b %": [pct(x) for x in df["mean_b"]],
        "a-b (pp)": [f"{pct(d, signed=True)}±{pct(c)}" for d, c in zip(df["diff"], df["ci"], strict=True)],
        "p_t holm": [_fmt_p(p) for p in df["p_t_holm"]],
        "p_wilcoxon holm": [_fmt_p(p) for p in df["p_wilcoxon_holm"]],
        **{f"α={c.removeprefix('verdict_')}": df[c] for c in verdicts},
    })
    for col in ("split", "ways"):
        if out[col].nunique() == 1:
            out = out.drop(columns=col)
    level = df.attrs.get("level", 0.95)
    note = (
        f"a-b: mean paired difference ± half-width of its {100 * level:g}% t-interval, in percentage points; "
        "p-values Holm-adjusted over all rows; verdict from the adjusted paired t-test."
    )
    return out.to_string(index=False) + "\n" + note


def _seed_pairs_text(summary: pd.DataFrame) -> str:
    """:func:`format_compare`'s second table: the seed pairs of each row pair summed up (:func:`seed_summary`)."""
    how = summary.attrs.get("aggregate", "median")
    alphas = [c.removeprefix("verdict_") for c in summary.columns if c.startswith("verdict_")]
    s = pd.DataFrame({
        "a": summary["a"],
        "b": summary["b"],
        "dataset": [dataset_display_name(d) for d in summary["dataset"]],
        "shots": summary["shots"].astype(str) + "-shot",
        "method": summary["method"],
        "seeds": summary["seeds"],
        f"a-b (pp) {how} [min, max]": [
            f"{pct(d, signed=True)} [{pct(lo, signed=True)}, {pct(hi, signed=True)}]"
            for d, lo, hi in zip(summary["diff"], summary["diff_min"], summary["diff_max"], strict=True)],
        **{f"α={a}": [f"{v} ({nb}↑ {nw}↓ of {n})" for v, nb, nw, n in zip(
            summary[f"verdict_{a}"], summary[f"n_better_{a}"], summary[f"n_worse_{a}"], summary["n_pairs"],
            strict=True)]
           for a in alphas},
    })
    return (
        "\n\nseed pairs (seed s of a against seed s of b, same episodes):\n" + s.to_string(index=False) + "\n"
        f"a-b: {how} over the seed pairs of the per-pair mean differences, with their range; verdict: better/"
        "worse when every seed pair is significant in that direction (Holm-adjusted t-test above), mixed when "
        "only some are, n.s. when none is; ↑/↓ count the pairs significant for a / for b."
    )


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def write_compare_json(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the output of :func:`compare` to ``path`` (``compare.json``), atomically.

    ``{"format": "fewshot-bench-compare", "format_version": 1, "alpha": [...],
    "level": 0.95, "baseline": path|null, "aggregate": "median", "holm": "...",
    "comparisons": [row, ...], "seed_groups": [row, ...]}``: ``comparisons`` holds one
    object per seed pair (the rows of :func:`compare`, with ``seed_a``/``seed_b``),
    ``seed_groups`` one per row pair x key (:func:`seed_summary`), ``skipped`` one per comparison
    that could not be made (``df.attrs["skipped"]``, see :func:`compare`); NaN is written as ``null``.
    """
    def records(frame: pd.DataFrame) -> list[dict]:
        return [{str(k): _json_value(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]

    atomic_write_json(path, {
        "format": COMPARE_FORMAT,
        "format_version": 1,
        "alpha": list(df.attrs.get("alpha", [])),
        "level": df.attrs.get("level"),
        "baseline": df.attrs.get("baseline"),
        "aggregate": df.attrs.get("aggregate", "median"),
        "protocol": df.attrs.get("protocol"),
        "tests": "paired t-test (scipy.stats.ttest_rel) and Wilcoxon signed-rank (zero_method='wilcox'), two-sided",
        "holm": "Holm-Bonferroni over all comparisons in this file (every seed pair), t and Wilcoxon separately",
        "seed_pairing": "seed s of a against seed s of b on the same episodes; two single runs are paired whatever "
                        "their seeds; a single run is paired with every seed of a row that shares none of its seeds",
        "comparisons": records(df),
        "seed_groups": records(seed_summary(df)),
        "skipped": [dict(s) for s in df.attrs.get("skipped", [])],
    })


def _json_value(v: Any) -> Any:
    """A table cell as strict JSON: NaN -> null, ±inf -> "inf"/"-inf", numpy scalars -> Python."""
    return jsonable(v, strict=True)


# --------------------------------------------------------------------------- tables

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",  # OT1 text mode prints < as ¡
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_text(text: str) -> str:
    """:func:`latex_escape`, then ``±`` and ``–`` (en dash) in LaTeX's own spelling."""
    return latex_escape(text).replace("±", r"$\pm$").replace("–", "--")


def _column_names(tidy: pd.DataFrame, renames: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Add the display columns ``col_dataset`` (display name, or ``renames[display name]``) and
    ``col_shots`` to the tidy frame, and ``col_rank`` (the column order before renaming)."""
    tidy = tidy.copy()
    renames = dict(renames or {})
    multi_split = tidy.groupby("dataset")["split"].nunique().max() > 1
    multi_ways = tidy["ways"].nunique() > 1
    multi_queries = tidy["queries"].nunique() > 1
    split_text = [f" ({s})" if multi_split else "" for s in tidy["split"]]
    display = [dataset_display_name(d) for d in tidy["dataset"]]
    tidy["col_rank"] = [_dataset_rank(d + s) for d, s in zip(display, split_text, strict=True)]
    tidy["col_dataset"] = [renames.get(d, d) + s for d, s in zip(display, split_text, strict=True)]
    tidy["col_shots"] = [
        (f"{w}-way " if multi_ways else "") + f"{k}-shot" + (f" {q}q" if multi_queries else "")
        for w, k, q in zip(tidy["ways"], tidy["shots"], tidy["queries"], strict=True)
    ]
    return tidy


def _row_labels(tidy: pd.DataFrame, renames: Mapping[str, str] | None = None) -> pd.Series:
    """The row label, with ``", method"`` (``renames[method]`` when given) when the rows hold several."""
    if tidy["method"].nunique() > 1:
        return tidy["label"] + ", " + tidy["method"].map(lambda m: dict(renames or {}).get(m, m))
    return tidy["label"]


def _dataset_rank(name: str) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (_DATASET_ORDER.index(base), name) if base in _DATASET_ORDER else (len(_DATASET_ORDER), name)


def _baseline_key(base: SeedGroup, key: Key) -> Key | None:
    """The baseline's key for ``key``: the same, else the one method it evaluated on that column."""
    keys = base.keys()
    if key in keys:
        return key
    cands = [k for k in keys if k[:5] == key[:5]]
    return cands[0] if len(cands) == 1 else None


_SKIP_SHORT = {"no_baseline_cell": "no baseline result", "no_shared_seed": "no shared seed",
               "different_episodes": "other episodes", "different_episode_indices": "other episode indices",
               "no_episodes_sha256": "no episode hash"}


def _vs_baseline(tidy: pd.DataFrame, groups: Mapping[str, SeedGroup],
                 base: SeedGroup) -> tuple[pd.DataFrame, list[dict], int]:
    """Paired tests of every table cell against the baseline row; returns ``(frame, skipped, n_tests)``.

    Per tidy row (same index), ``frame`` holds ``p_t`` (the two-sided paired t-test p-value of
    each seed pair, :func:`seed_pairs`, on identical episodes), ``p_t_holm`` (Holm-adjusted over
    *every* test of the table: all cells and seed pairs; NaN p-values, e.g. one episode, are left
    out of the family), ``diff_vs_baseline`` (per pair, ``mean(a - baseline)``), and
    ``significance``: ``"better"`` / ``"worse"`` when in every seed pair the difference is > 0 /
    < 0 and the adjusted p < :data:`TABLE_ALPHA`, ``"n.s."`` when no pair is significant,
    ``"mixed"`` otherwise, ``"baseline"`` for the baseline's own cells and ``None`` for cells
    not tested. A cell the baseline has no result for, or whose seed pairs are not on identical
    episodes or share no seed, is not tested and goes to ``skipped`` (records as in
    :func:`compare`, plus ``row`` and ``column``).
    """
    tests: list[tuple[list[float], list[float]] | None] = []
    status: list[str | None] = []
    skipped: list[dict] = []
    for _, row in tidy.iterrows():
        group = groups[row["label"]]
        key = (str(row["dataset"]), str(row["split"]), int(row["ways"]), int(row["shots"]), int(row["queries"]),
               str(row["method"]))
        tests.append(None)
        status.append("baseline" if group is base else None)
        if group is base:
            continue
        bkey = _baseline_key(base, key)
        if bkey is None:
            skip = _skip(group, base, key, "no_baseline_cell",
                         f"--baseline: {base.name} has no result for {_key_text(key)} (nor one method there)")
            pairs: list[tuple[Run, Run]] = []
        else:
            pairs, skip = _paired_runs(group, base, key, bkey,
                                       f"--baseline: {group.label!r} vs {base.label!r}, {_key_text(key)}")
        if skip is not None:
            skipped.append({"row": row["row"], "column": f"{row['col_dataset']} {row['col_shots']}", **skip})
            continue
        diffs, ps = [], []
        for ra, rb in pairs:
            xa, xb = paired_accuracies(ra, rb, key, bkey)
            diffs.append(float(np.mean(xa - xb)))
            ps.append(stats.paired_ttest(xa, xb).pvalue if xa.size >= 2 else math.nan)
        tests[-1] = (diffs, ps)
    flat = [p for t in tests if t is not None for p in t[1]]
    adjusted = iter(stats.holm(flat))
    out = []
    for t, st in zip(tests, status, strict=True):
        if t is None:
            out.append({"significance": st, "p_t": None, "p_t_holm": None, "diff_vs_baseline": None})
            continue
        diffs, ps = t
        adj = [float(next(adjusted)) for _ in ps]
        better = sum(d > 0 and p < TABLE_ALPHA for d, p in zip(diffs, adj, strict=True))
        worse = sum(d < 0 and p < TABLE_ALPHA for d, p in zip(diffs, adj, strict=True))
        sig = ("better" if better == len(ps) else "worse" if worse == len(ps)
               else "n.s." if better + worse == 0 else "mixed")
        out.append({"significance": sig, "p_t": tuple(ps), "p_t_holm": tuple(adj), "diff_vs_baseline": tuple(diffs)})
    n_tests = sum(not math.isnan(p) for p in flat)
    return pd.DataFrame(out, index=tidy.index), skipped, n_tests


def protocol_text(tidy: pd.DataFrame) -> str:
    """One plain-text sentence stating the evaluation protocol of a tidy frame's rows."""

    def values(col: str) -> str:
        vals = sorted({v for v in tidy[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}, key=str)
        return "/".join(str(v) for v in vals) if vals else "unknown"

    ci = tidy["ci_method"].iloc[0] if tidy["ci_method"].nunique() == 1 else "mixed"
    ci_text = {"t": "Student-t interval", "normal": "normal interval"}.get(ci, f"{ci} interval")
    methods = tidy.drop_duplicates("method")
    kinds = ", ".join(
        f"{m} {'transductive' if t else 'inductive'}" for m, t in zip(methods["method"], methods["transductive"], strict=True)
    )
    hashes = []
    for (d, s, k), g in tidy.groupby(["dataset", "split", "shots"], sort=True):
        hs = sorted({h[:8] for h in g["episodes_sha256"] if isinstance(h, str) and h})  # pandas 3: NaN for missing
        hashes.append(f"{dataset_display_name(d)} {s} {k}-shot {'/'.join(hs) if hs else 'unknown'}")
    return (
        f"Mean accuracy (%) with 95% confidence interval ({ci_text}, s with ddof=1) over "
        f"{values('n')} {values('split')} episodes, {values('ways')}-way {values('shots')}-shot, "
        f"{values('queries')} queries per class; {kinds}; episode seed {values('seed')}; "
        f"episode sets (sha256) {'; '.join(hashes)}; {_inputs_text(tidy)}{_features_text(tidy)}."
    )


def _features_text(tidy: pd.DataFrame) -> str:
    """``; features: CL2N (base-class mean)`` when every row used one preprocessing chain, else per
    method (``protonet: none ...; simpleshot: CL2N ...``), else per row and method; ``""`` when no
    row recorded one (runs written before preprocessing was recorded)."""
    if "preprocess" not in tidy:
        return ""
    per = tidy[tidy["preprocess"].notna()].drop_duplicates(["label", "method", "preprocess"])
    if per.empty:
        return ""
    if per["preprocess"].nunique() == 1:
        text = str(per["preprocess_text"].iloc[0])
    elif per.groupby("method")["preprocess"].nunique().max() == 1:
        one = per.drop_duplicates("method")
        text = "; ".join(f"{m}: {t}" for m, t in zip(one["method"], one["preprocess_text"], strict=True))
    else:
        text = "; ".join(f"{lab}, {m}: {t}"
                         for lab, m, t in zip(per["label"], per["method"], per["preprocess_text"], strict=True))
    centred = any(part in ("center", "cl2n") for spec in per["preprocess"] for part in str(spec).split("+"))
    return f"; features: {text}" + ("; base-class mean: the mean feature of the train (base) split" if centred else "")


def _inputs_text(tidy: pd.DataFrame) -> str:
    """``input protocol: X`` when every row shares one, else ``input protocols: label (dataset): X; ...``."""
    if "input_protocol" not in tidy:
        return "input protocol unknown"
    per = tidy.drop_duplicates(["label", "dataset", "input_protocol"])
    if per["input_protocol"].nunique() == 1:
        return f"input protocol {per['input_protocol'].iloc[0]}"
    parts = [f"{lab} ({dataset_display_name(d)}): {t}"
             for lab, d, t in zip(per["label"], per["dataset"], per["input_protocol"], strict=True)]
    return "input protocols " + "; ".join(parts)


def _literature(with_literature: Any) -> Literature | None:
    if with_literature is None or with_literature is False:
        return None
    if isinstance(with_literature, Literature):
        return with_literature
    return load_literature(DEFAULT_SOURCE if with_literature is True else with_literature)


def _literature_rows(lit: Literature, tidy: pd.DataFrame) -> pd.DataFrame:
    """The published rows that fall in a column of ``tidy`` (same dataset display name,
    split, ways and shots; and queries when the source gives them)."""
    columns = tidy.drop_duplicates(["col_dataset", "col_shots"])
    rows = []
    for _, r in lit.rows.iterrows():
        for _, c in columns.iterrows():
            if (dataset_display_name(c["dataset"]) != dataset_display_name(r["dataset"]) or c["split"] != r["split"]
                    or int(c["ways"]) != int(r["ways"]) or int(c["shots"]) != int(r["shots"])
                    or (not math.isnan(r["queries"]) and int(c["queries"]) != int(r["queries"]))):
                continue
            rows.append({
                "row": f"{r['method']}, {r['backbone']} (reported)",
                "label": f"{r['method']}, {r['backbone']}",
                "reported": True,
                "source": lit.key,
                "note": r["note"],
                "dataset": r["dataset"],
                "split": r["split"],
                "ways": int(r["ways"]),
                "shots": int(r["shots"]),
                "queries": None if math.isnan(r["queries"]) else int(r["queries"]),
                "method": "",
                "mean": float(r["mean"]),
                "ci95": float(r["ci95"]),
                "n": None if math.isnan(r["n_episodes"]) else int(r["n_episodes"]),
                "n_seeds": None,
                "col_dataset": c["col_dataset"],
                "col_shots": c["col_shots"],
                "dagger": False,
            })
    if not rows:
        raise ConfigError(f"--with-literature {lit.key}: none of its rows falls in a column of this table "
                          "(dataset x split x ways x shots); evaluate on the datasets the source reports")
    out = pd.DataFrame(rows)
    dup = out.duplicated(["row", "col_dataset", "col_shots"], keep=False)
    if dup.any():
        r = out[dup].iloc[0]
        raise ConfigError(f"{lit.path}: two reported rows fall in one table cell ({r['row']}, {r['col_dataset']} "
                          f"{r['col_shots']}); tell them apart by method or backbone")
    return out


def _seed_caption(tidy: pd.DataFrame, how: str) -> str:
    multi = tidy[tidy["n_seeds"] > 1]
    if multi.empty:
        return ""
    counts = sorted({int(s) for s in multi["n_seeds"]})
    s_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    n_vals = sorted({int(n) for n in multi["n"]})
    n_text = "/".join(f"{n:,}" for n in n_vals)
    if how == "mean":
        rule, whose = "mean", "the per-episode accuracy averaged over the seeds"
    else:
        rule = "median"
        whose = "the median seed"
        if any(c % 2 == 0 for c in counts):
            whose += " (with an even number of seeds: of the per-episode accuracy averaged over the two middle " \
                     "seeds, whose mean is the median)"
    return (f"Rows over several fine-tuning seeds: {rule} over {s_text} fine-tuning seeds of the per-seed mean "
            f"accuracies; ± is the 95% CI over {n_text} episodes of {whose}; brackets give the range (min–max) "
            "of the per-seed means.")


@dataclass(frozen=True, eq=False)
class _Table:
    """Everything :func:`make_tables` renders, computed once for all formats."""

    tidy: pd.DataFrame  # one row per table row x column, ours then the literature's
    rows: list[str]
    col_order: list[tuple[str, str]]
    lit: Literature | None
    lit_rows: list[str]
    base: SeedGroup | None
    several_seeds: bool
    n_tests: int
    skipped: list[dict]
    caption: str | None
    protocol: str
    seed_rule: str
    aggregate: str
    label: str | None


def _table_formats(formats: str | Iterable[str]) -> list[str]:
    """Validate ``formats`` (``"md"`` is ``"markdown"``); duplicates dropped, order kept."""
    out = []
    for f in [formats] if isinstance(formats, str) else list(formats):
        f = _FORMAT_ALIASES.get(str(f), str(f))
        if f not in _TABLE_FORMATS:
            raise ConfigError(f"--format {f}: unknown table format; use one of: {', '.join(_TABLE_FORMATS)} "
                              "(md for markdown)")
        if f not in out:
            out.append(f)
    if not out:
        raise ConfigError(f"--format: give at least one of {', '.join(_TABLE_FORMATS)}")
    return out


def _split_labels(runs: Sequence[Run], labels: Mapping[str, str] | None) -> tuple[dict[str, str], dict, dict]:
    """``labels`` (``--label OLD=NEW``) as ``(row labels {run path: text}, dataset renames
    {display name: text}, method renames {method: text})``: OLD is a run folder (a row label,
    :func:`seed_groups`), else a dataset (any spelling :func:`dataset_display_name` maps to the
    same name) or a method of the runs (renamed for print). Anything else raises
    :class:`~fewshot_bench.errors.ConfigError`."""
    rows: dict[str, str] = {}
    datasets: dict[str, str] = {}
    methods: dict[str, str] = {}
    paths = {r.path.resolve() for r in runs}
    have_ds = {dataset_display_name(k[0]) for r in runs for k in r.results}
    have_m = {k[5] for r in runs for k in r.results}
    for old, new in dict(labels or {}).items():
        if Path(old).expanduser().resolve() in paths:
            rows[old] = new
            continue
        hit = False
        if dataset_display_name(old) in have_ds:
            datasets[dataset_display_name(old)], hit = str(new), True
        if old in have_m:
            methods[old], hit = str(new), True
        if not hit:
            raise ConfigError(
                f"--label {old}={new}: {old} is neither one of the runs given nor a dataset "
                f"({', '.join(sorted(have_ds))}) or method ({', '.join(sorted(have_m))}) of them; "
                "use RUN=TEXT for a row, DATASET=TEXT or METHOD=TEXT to rename one for print")
    return rows, datasets, methods


def _select(tidy: pd.DataFrame, methods: Sequence[str] | None, datasets: Sequence[str] | None) -> pd.DataFrame:
    """Keep the rows of ``methods`` / ``datasets`` (``None``: all), adding ``method_rank`` and
    ``dataset_rank`` (their position in the list given; 0 when not given)."""
    tidy = tidy.copy()
    for col, wanted, flag, norm in (("method", methods, "--methods", str),
                                    ("dataset", datasets, "--datasets", dataset_display_name)):
        if wanted is None:
            tidy[f"{col}_rank"] = 0
            continue
        have = list(dict.fromkeys(norm(v) for v in tidy[col]))
        rank = {}
        for name in wanted:
            if norm(name) not in have:
                raise ConfigError(f"{flag} {name}: no result of the runs has that {col}; they hold "
                                  f"{', '.join(have)}")
            rank.setdefault(norm(name), len(rank))
        tidy = tidy[[norm(v) in rank for v in tidy[col]]].copy()
        tidy[f"{col}_rank"] = [rank[norm(v)] for v in tidy[col]]
    if tidy.empty:
        raise ConfigError("--methods / --datasets: no run holds a result for those methods on those datasets")
    return tidy


def _table(runs: Sequence[Run | str | os.PathLike], baseline: Run | str | os.PathLike | None,
           labels: Mapping[str, str] | None, caption: str | None, label: str | None, aggregate: str,
           with_literature: Any, methods: Sequence[str] | None, datasets: Sequence[str] | None) -> _Table:
    """The format-independent part of :func:`make_tables`."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate}: unknown rule; use one of: {', '.join(AGGREGATES)}")
    lit = _literature(with_literature)
    run_list, base_run = _runs_with_baseline(runs, baseline)
    row_labels, ds_names, method_names = _split_labels(run_list, labels)
    groups = seed_groups(run_list, row_labels)
    base_group = None
    if base_run is not None:
        base_group = next(g for g in groups if any(r is base_run for r in g.runs))
    tidy = _column_names(_select(groups_frame(groups, aggregate=aggregate), methods, datasets), ds_names)
    tidy["row"] = _row_labels(tidy, method_names)
    dup = tidy.duplicated(["row", "col_dataset", "col_shots"], keep=False)
    if dup.any():
        r = tidy[dup].iloc[0]
        raise ConfigError(f"two results fall in one table cell ({r['row']}, {r['col_dataset']} {r['col_shots']}); "
                          "give the runs distinct --label values")
    tidy, skipped, n_tests = _mark_cells(tidy, {g.label: g for g in groups}, base_group)
    shown = tidy.assign(method=[method_names.get(m, m) for m in tidy["method"]],
                        dataset=[ds_names.get(dataset_display_name(d), d) for d in tidy["dataset"]])
    protocol = protocol_text(shown)
    seed_rule = _seed_caption(tidy, aggregate)
    rows = list(dict.fromkeys(tidy.sort_values("method_rank", kind="stable")["row"]))
    col_order = []
    ordered = tidy.sort_values(["dataset_rank", "col_rank", "ways", "shots", "queries"], kind="stable")
    for d in dict.fromkeys(ordered["col_dataset"]):
        col_order += [(d, s) for s in dict.fromkeys(ordered[ordered["col_dataset"] == d]["col_shots"])]
    lit_rows: list[str] = []
    if lit is not None:
        tidy, lit_rows = _with_literature_rows(lit, tidy, rows)
        rows += lit_rows
    return _Table(tidy=tidy, rows=rows, col_order=col_order, lit=lit, lit_rows=lit_rows, base=base_group,
                  several_seeds=any(len(g.runs) > 1 for g in groups), n_tests=n_tests, skipped=skipped,
                  caption=caption, protocol=protocol, seed_rule=seed_rule, aggregate=aggregate, label=label)


def _runs_with_baseline(runs: Sequence[Run | str | os.PathLike],
                        baseline: Run | str | os.PathLike | None) -> tuple[list[Run], Run | None]:
    """The table's runs (``baseline`` added when not among them) and the baseline's :class:`Run` among them."""
    run_list = _unique_runs(runs)
    base_run = _as_run(baseline) if baseline is not None else None
    if base_run is not None:
        bp = base_run.path.resolve()
        match = [r for r in run_list if r.path.resolve() == bp]
        if match:
            base_run = match[0]
        else:
            run_list.append(base_run)
    return run_list, base_run


def _mark_cells(tidy: pd.DataFrame, groups: Mapping[str, SeedGroup],
                base_group: SeedGroup | None) -> tuple[pd.DataFrame, list[dict], int]:
    """Add the tests against the baseline (:func:`_vs_baseline`), the dagger and the bold marks;
    return the frame, the untested cells and the number of tests."""
    skipped: list[dict] = []
    n_tests = 0
    if base_group is not None:
        sig, skipped, n_tests = _vs_baseline(tidy, groups, base_group)
        tidy = tidy.join(sig)
    else:
        tidy = tidy.assign(significance=None, p_t=None, p_t_holm=None, diff_vs_baseline=None)
    tidy["dagger"] = tidy["significance"] == "better"
    tidy["mean_pct"] = [float(pct(m)) for m in tidy["mean"]]  # bold: the best mean as printed
    tidy["best"] = tidy["mean_pct"] == tidy.groupby(["col_dataset", "col_shots"])["mean_pct"].transform("max")
    tidy["reported"] = False
    tidy["source"] = None
    tidy["note"] = ""
    return tidy, skipped, n_tests


def _with_literature_rows(lit: Literature, tidy: pd.DataFrame, rows: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """``tidy`` with the published rows that fall in its columns appended; the new row labels."""
    extra = _literature_rows(lit, tidy)
    extra["mean_pct"] = [float(pct(m)) for m in extra["mean"]]
    extra["best"] = False
    extra["significance"] = None
    lit_rows = [r for r in dict.fromkeys(extra["row"]) if r not in rows]
    return pd.concat([tidy, extra], ignore_index=True), lit_rows


def make_tables(
    runs: Sequence[Run | str | os.PathLike],
    formats: str | Iterable[str] = ("latex",),
    baseline: Run | str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
    caption: str | None = None,
    label: str | None = "tab:fewshot",
    aggregate: str = "median",
    with_literature: bool | str | os.PathLike | Literature | None = None,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> dict[str, str]:
    """Render runs as the Table-1 layout of few-shot papers in several formats at once:
    ``{format: text}`` for each of ``formats`` (see :func:`make_table`; ``"md"`` is
    ``"markdown"``). The rows, cells and tests are computed once for all formats."""
    fmts = _table_formats(formats)
    t = _table(runs, baseline, labels, caption, label, aggregate, with_literature, methods, datasets)
    return {f: _render_table(t, f) for f in fmts}


def make_table(
    runs: Sequence[Run | str | os.PathLike],
    fmt: str = "latex",
    baseline: Run | str | os.PathLike | None = None,
    labels: Mapping[str, str] | None = None,
    caption: str | None = None,
    label: str | None = "tab:fewshot",
    aggregate: str = "median",
    with_literature: bool | str | os.PathLike | Literature | None = None,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> str:
    """Render runs as the Table-1 layout of few-shot papers; returns the text.

    Rows: one per configuration (:func:`seed_groups`: runs that differ only in the
    fine-tuning seed share a row; x method when the runs hold several), labelled
    from the checkpoint metadata (``"arch (loss)"``) or ``labels``. ``labels`` maps
    ``OLD`` to ``NEW`` (``--label OLD=NEW``): a run path gets row label ``NEW`` (the same
    text for several runs groups them as seeds); a dataset (any spelling of it) or a method
    of the runs is printed as ``NEW`` (columns, row labels and caption; the machine-readable
    records keep the stored names). ``methods`` / ``datasets`` keep only those methods /
    datasets, in that order (rows by method, columns by dataset; unknown names raise
    :class:`~fewshot_bench.errors.ConfigError`). Columns: dataset (display name) x
    ``"1-shot"``/``"5-shot"`` (also split, ways or queries when they vary). Cells:
    ``mean±ci95`` in percent by :func:`pct` (``$\\pm$`` in LaTeX); for a row of several
    seeds the mean is the ``aggregate`` (``"median"`` or ``"mean"``, :func:`aggregate_seeds`)
    of the per-seed means, ± the episode CI of that value (:func:`groups_frame`), followed
    by ``[min–max]`` of the per-seed means. The best mean of each column is bold (ties at
    two decimals all bold).

    With ``baseline`` (any run of the baseline row, added to the rows when not among ``runs``)
    every cell is tested against the baseline's cell (:func:`_vs_baseline`): two-sided paired
    t-tests on identical episodes, seed pair by seed pair, Holm-adjusted over every test of the
    table; ``†`` marks a cell above the baseline in every seed pair with adjusted p <
    :data:`TABLE_ALPHA`, ``‡`` one below it. Cells that cannot be paired (other episodes, no
    baseline result, no shared seed) are not tested; the caption lists them.

    ``with_literature`` (``True`` for the bundled :data:`~fewshot_bench.literature.DEFAULT_SOURCE`,
    a bundled key, a CSV path or a :class:`~fewshot_bench.literature.Literature`) appends
    the published rows that fall in the table's columns, marked ``(reported)``, never bold
    or marked, cited in the caption as reported, not reproduced.

    ``fmt``: ``"latex"`` (``table`` float with booktabs rules via
    ``Styler.to_latex(hrules=True)``; needs ``\\usepackage{booktabs}``), ``"markdown"``
    (pipe table followed by the caption), ``"csv"`` (two header rows, plain cells, no
    bold, marks kept; a ``reported`` column when literature rows are in), ``"csv-long"``
    (one line per row x column with every number: n_seeds, per-seed means, spread,
    ``reported``, the tests against the baseline, ...) or ``"json"`` (the same records with
    the caption and the untested cells). The caption (``caption`` first -- not escaped, so it
    may hold LaTeX --, then the protocol from :func:`protocol_text`, the seed rule and the
    legend) goes into every format. :func:`make_tables` renders several formats in one go.
    """
    return make_tables(runs, (fmt,), baseline=baseline, labels=labels, caption=caption, label=label,
                       aggregate=aggregate, with_literature=with_literature, methods=methods,
                       datasets=datasets)[_FORMAT_ALIASES.get(fmt, fmt)]


def _legend(t: _Table, latex: bool, decorated: bool) -> str:
    """The caption's legend: bold, the marks against the baseline, and the untested cells."""
    legend = "Best mean per column in bold." if decorated else ""
    if t.base is None:
        return legend
    dagger, ddagger = (r"$^\dagger$", r"$^\ddagger$") if latex else ("†", "‡")
    esc = _latex_text if latex else str
    p_text = rf"$p < {TABLE_ALPHA:g}$" if latex else f"p < {TABLE_ALPHA:g}"
    if t.n_tests <= 1:
        holm = f"{p_text} (a single test: not adjusted for multiple comparisons)"
    elif t.several_seeds:
        holm = f"{p_text} after Holm over the seed pairs and cells of this table ({t.n_tests} tests)"
    else:
        holm = f"{p_text} after Holm over the {t.n_tests} cells tested"
    every = "in every fine-tuning seed pair (seed s against seed s) " if t.several_seeds else ""
    legend += (f" {dagger} / {ddagger}: mean above / below the baseline ({esc(t.base.label)}) {every}by a two-sided "
               f"paired t-test on the same episodes, {holm}.")
    if t.skipped:
        cells = "; ".join(f"{s['row']}, {s['column']} ({_SKIP_SHORT.get(s['reason'], s['reason'])})"
                          for s in t.skipped)
        legend += " " + esc(f"Not tested against the baseline: {cells}.")
    return legend


def _render_table(t: _Table, fmt: str) -> str:
    """One format of :func:`make_tables`."""
    latex = fmt == "latex"
    decorated = fmt in ("latex", "markdown")
    pm = r"$\pm$" if latex else "±"
    marks = {"better": r"$^\dagger$" if latex else "†", "worse": r"$^\ddagger$" if latex else "‡"}
    dash = "--" if latex else "–"

    def cell(r: pd.Series) -> str:
        if r["reported"]:
            return fmt_pct(r["mean"], None if math.isnan(r["ci95"]) else r["ci95"], pm)
        text = fmt_pct(r["mean"], r["ci95"], pm)
        if r["best"] and decorated:
            text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
        text += marks.get(r["significance"], "")
        if r["n_seeds"] > 1:
            text += f" [{pct(r['seed_min'])}{dash}{pct(r['seed_max'])}]"
        return text

    tidy = t.tidy.assign(cell=t.tidy.apply(cell, axis=1))
    footnote = ""
    if t.lit is not None:
        footnote = (f"Rows marked (reported): numbers reported in {t.lit.reference}, not reproduced by fewshot-bench; "
                    "their ± is the published 95% CI, over the paper's own episodes.")
    protocol, seed_rule = t.protocol, t.seed_rule
    if latex:
        protocol, seed_rule, footnote = (_latex_text(s) for s in (protocol, seed_rule, footnote))
    parts = (t.caption, protocol, seed_rule, _legend(t, latex, decorated), footnote)
    full_caption = " ".join(p.strip() for p in parts if p and p.strip())

    if fmt in ("csv-long", "json"):
        return _long_output(tidy, t, fmt, full_caption)
    wide = tidy.pivot(index="row", columns=["col_dataset", "col_shots"], values="cell")
    wide = wide.reindex(index=t.rows, columns=pd.MultiIndex.from_tuples(t.col_order)).fillna("--" if latex else "")
    if latex:
        return _to_latex(wide, full_caption, t.label, first_reported=t.lit_rows[0] if t.lit_rows else None)
    if fmt == "markdown":
        return _to_markdown(wide) + "\n\n" + full_caption + "\n"
    flat = wide.copy()
    flat.columns = flat.columns.set_names(["dataset", "model"])
    if t.lit is not None:
        flat[("reported", "reported")] = [r in t.lit_rows for r in flat.index]
    return flat.to_csv(lineterminator="\n") + "# " + full_caption + "\n"


_LONG_COLUMNS = ("row", "column", "label", "reported", "source", "note", "dataset", "split", "ways", "shots", "queries",
                 "method", "mean", "ci95", "n_episodes", "n_seeds", "seeds", "seed_means", "seed_ci95", "seed_min",
                 "seed_max", "seed_sd", "aggregate", "ci_seeds", "best", "dagger", "cell", "episodes_sha256",
                 "significance", "diff_vs_baseline", "p_t", "p_t_holm")


def _long_value(v: Any) -> Any:
    """A tidy value as plain JSON: tuples as lists, NaN as ``None``, numpy scalars as Python ones."""
    if isinstance(v, (tuple, list)):
        return [_long_value(x) for x in v]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return _long_value(v.item())
    return v


def _long_output(tidy: pd.DataFrame, t: _Table, fmt: str, caption: str) -> str:
    """``csv-long`` / ``json``: one record per table row x column, all numbers as fractions."""
    records = []
    order = {r: i for i, r in enumerate(t.rows)}
    for _, r in tidy.sort_values("row", key=lambda s: s.map(order), kind="stable").iterrows():
        rec = {"row": r["row"], "column": f"{r['col_dataset']} {r['col_shots']}"}
        for col in _LONG_COLUMNS[2:]:
            v = _long_value(r.get("n" if col == "n_episodes" else col))
            if col in ("n_episodes", "n_seeds", "queries", "ways", "shots") and isinstance(v, float):
                v = int(v)
            rec[col] = v
        rec["dataset"] = dataset_display_name(rec["dataset"])
        records.append(rec)
    if fmt == "json":
        lit = t.lit
        return json.dumps({
            "format": TABLE_FORMAT,
            "format_version": 1,
            "caption": caption,
            "aggregate": t.aggregate,
            "alpha": TABLE_ALPHA,
            "baseline": None if t.base is None else t.base.label,
            "tests": "two-sided paired t-test (scipy.stats.ttest_rel) of each cell against the baseline's, seed "
                     "pair by seed pair, on identical episodes",
            "holm": "Holm-Bonferroni over every test of this table (all cells and seed pairs)",
            "n_tests": t.n_tests,
            "literature": [] if lit is None else [{"key": lit.key, "citation": lit.citation, "url": lit.url,
                                                   "version": lit.version, "table": lit.table}],
            "rows": records,
            "skipped": [{k: _long_value(v) for k, v in s.items()} for s in t.skipped],
        }, indent=2) + "\n"
    flat = pd.DataFrame([
        {k: (";".join("" if x is None else f"{x:.10g}" if isinstance(x, float) else str(x) for x in v)
             if isinstance(v, list) else v) for k, v in rec.items()}
        for rec in records
    ], columns=list(_LONG_COLUMNS))
    for col in ("ways", "shots", "queries", "n_episodes", "n_seeds"):  # None for published rows: keep 15, not 15.0
        flat[col] = flat[col].astype("Int64")
    return flat.to_csv(index=False, lineterminator="\n") + "# " + caption + "\n"


def _to_latex(wide: pd.DataFrame, caption: str, label: str | None, first_reported: str | None = None) -> str:
    """``wide`` as a booktabs ``table`` float; a ``\\midrule`` sets the reported rows
    (from ``first_reported`` on) apart from ours."""
    table = wide.copy()
    table.index = [latex_escape(i) for i in table.index]
    table.columns = pd.MultiIndex.from_tuples(
        [(latex_escape(d), latex_escape(s)) for d, s in table.columns], names=["", "Model"]
    )
    tex = table.style.to_latex(
        hrules=True,
        multicol_align="c",
        column_format="l" + "c" * table.shape[1],
        caption=caption,
        label=label,
        position_float="centering",
        position="t",
    )
    if first_reported is not None:
        start = latex_escape(first_reported) + " & "
        lines = tex.split("\n")
        at = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
        if at is not None:
            lines.insert(at, "\\midrule")
            tex = "\n".join(lines)
    return tex


def _to_markdown(wide: pd.DataFrame) -> str:
    header = ["Model"] + [f"{d} {s}" for d, s in wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + [":---:"] * wide.shape[1]) + "|"]
    for idx, row in wide.iterrows():
        cells = [str(idx).replace("|", r"\|")] + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
