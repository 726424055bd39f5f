"""Published few-shot results, bundled as data, to print beside our own numbers.

A *literature source* is two files with one stem: ``<key>.csv`` (one row per method x
backbone x dataset x ways x shots, numbers in percent exactly as the paper prints them)
and ``<key>.json`` (the citation). The bundled sources live in ``fewshot_bench/published/``
(:func:`bundled_sources`); any other pair of files can be passed by path.

``<key>.csv`` columns (the first six required)::

    source_key  method  backbone  dataset  shots  mean  [ci95]  [ways=5]  [split=test]  [queries]  [n_episodes]  [note]

``mean`` and ``ci95`` (the half-width of the published 95% interval; empty when the
paper prints none) are in percent. ``source_key`` must equal the JSON's ``key``.

``<key>.json``::

    {"key": "...", "citation": "Authors. Title. Venue, year.", "short": "Long et al. (2024)",
     "url": "https://arxiv.org/abs/...", "version": "arXiv v2", "table": "Table 1"}

These rows are **reported, not reproduced**: :func:`fewshot_bench.report.make_table`
marks them ``(reported)``, never bolds them and cites the source in the caption.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import ConfigError, DataError

__all__ = ["DEFAULT_SOURCE", "Literature", "bundled_sources", "load_literature"]

#: The bundled source ``fewshot-bench table --with-literature`` uses when given no value.
DEFAULT_SOURCE = "clce2024_table1"
_REQUIRED = ("source_key", "method", "backbone", "dataset", "shots", "mean")
_OPTIONAL = ("ci95", "ways", "split", "queries", "n_episodes", "note")
_CITATION_FIELDS = ("key", "citation", "url", "table")


@dataclass(frozen=True)
class Literature:
    """One literature source: its citation and its rows.

    ``rows``: one row per published number, columns ``method, backbone, dataset, split,
    ways, shots, queries, n_episodes, mean, ci95, note``; ``mean`` and ``ci95`` as
    **fractions** (the CSV's percent / 100) like every other accuracy in fewshot-bench,
    ``ci95`` NaN where the paper gives none, ``queries``/``n_episodes`` NaN where unknown.
    """

    key: str
    citation: str
    url: str
    table: str
    short: str
    version: str
    path: Path
    rows: pd.DataFrame = field(repr=False)

    @property
    def reference(self) -> str:
        """``"<citation>, <table> (<url>, <version>)"``: what captions cite."""
        where = ", ".join(p for p in (self.url, self.version) if p)
        return f"{self.citation}, {self.table}" + (f" ({where})" if where else "")


def _published_dir():
    return resources.files("fewshot_bench") / "published"


def bundled_sources() -> list[str]:
    """Keys of the literature sources shipped in ``fewshot_bench/published/`` (sorted)."""
    folder = _published_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _resolve(source: str | os.PathLike) -> tuple[Path, Path]:
    text = str(source)
    if Path(text).expanduser().is_dir():
        raise ConfigError(f"--with-literature {text}: a folder, not a literature source; give a bundled key or a "
                          "CSV path, or put a bare --with-literature after the run folders")
    if text.endswith((".csv", ".json")) or os.sep in text or "/" in text:
        p = Path(text).expanduser()
        stem = p.with_suffix("") if p.suffix in (".csv", ".json") else p
        return stem.with_suffix(".csv"), stem.with_suffix(".json")
    folder = _published_dir()
    if text not in bundled_sources():
        known = ", ".join(bundled_sources()) or "none"
        raise ConfigError(f"--with-literature {text}: no such bundled source (bundled: {known}); "
                          "or pass the path of a literature CSV")
    return Path(str(folder / f"{text}.csv")), Path(str(folder / f"{text}.json"))


def load_literature(source: str | os.PathLike = DEFAULT_SOURCE) -> Literature:
    """Read a literature source: a bundled key (:func:`bundled_sources`) or the path of
    ``<key>.csv`` (its ``<key>.json`` citation beside it).

    Raises :class:`~fewshot_bench.errors.DataError` (one line naming the file and row)
    when a file is missing or malformed, and :class:`~fewshot_bench.errors.ConfigError`
    for an unknown bundled key or a source without rows.
    """
    csv_path, json_path = _resolve(source)
    if not json_path.is_file():
        raise DataError(f"{json_path}: no such file; a literature CSV needs its citation file <key>.json "
                        "beside it (format in docs/reports.md)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{json_path}: unreadable JSON ({exc}); fix the citation file") from None
    if not isinstance(meta, dict):
        raise DataError(f"{json_path}: not a JSON object; see docs/reports.md for the citation format")
    missing = [k for k in _CITATION_FIELDS if not isinstance(meta.get(k), str) or not meta.get(k).strip()]
    if missing:
        raise DataError(f"{json_path}: missing or empty {', '.join(missing)}; every reported number needs its "
                        "citation (see docs/reports.md)")
    key = meta["key"]
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such file; the rows of literature source {key!r} go there")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, comment="#")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc}); fix the file") from None
    absent = [c for c in _REQUIRED if c not in df.columns]
    if absent:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(absent)}; columns are "
                        f"{', '.join(_REQUIRED + _OPTIONAL)}")
    if df.empty:
        status = meta.get("status")
        raise ConfigError(f"{csv_path}: literature source {key!r} holds no rows yet"
                          + (f" ({status})" if status else "")
                          + "; add the published rows or pass --with-literature FILE.csv")
    rows = [_row(csv_path, i + 2, r, key) for i, r in enumerate(df.to_dict(orient="records"))]
    out = pd.DataFrame(rows)
    dup = out.duplicated(["method", "backbone", "dataset", "split", "ways", "shots", "queries", "note"], keep=False)
    if dup.any():
        r = out[dup].iloc[0]
        raise DataError(f"{csv_path}: {r['method']} ({r['backbone']}) {r['dataset']} {r['ways']}-way "
                        f"{r['shots']}-shot is listed twice; keep one row or tell them apart in 'note'")
    return Literature(key=key, citation=meta["citation"].strip(), url=meta["url"].strip(), table=meta["table"].strip(),
                      short=str(meta.get("short") or meta["citation"]).strip(), version=str(meta.get("version") or ""),
                      path=csv_path, rows=out)


def _row(path: Path, line: int, r: dict, key: str) -> dict:
    def bad(col: str, why: str) -> DataError:
        return DataError(f"{path}: line {line}, column {col} {r.get(col)!r}: {why}")

    if r["source_key"].strip() != key:
        raise bad("source_key", f"does not match the citation file's key {key!r}")
    for col in ("method", "backbone", "dataset"):
        if not r[col].strip():
            raise bad(col, "is empty")

    def number(col: str, *, integer: bool = False, required: bool = True, low: float = 0.0, high: float = math.inf):
        text = str(r.get(col, "")).strip()
        if not text:
            if required:
                raise bad(col, "is empty")
            return math.nan
        try:
            v = float(text)
        except ValueError:
            raise bad(col, "is not a number") from None
        if math.isnan(v) or not low <= v <= high or (integer and v != int(v)):
            kind = "an integer" if integer else "a number"
            raise bad(col, f"must be {kind} in [{low:g}, {high:g}]")
        return int(v) if integer else v

    ways = number("ways", integer=True, required=False, low=2)
    queries = number("queries", integer=True, required=False, low=1)
    episodes = number("n_episodes", integer=True, required=False, low=1)
    return {
        "method": r["method"].strip(),
        "backbone": r["backbone"].strip(),
        "dataset": r["dataset"].strip(),
        "split": str(r.get("split", "")).strip() or "test",
        "ways": 5 if isinstance(ways, float) else ways,
        "shots": number("shots", integer=True, low=1),
        "queries": queries,
        "n_episodes": episodes,
        "mean": number("mean", high=100.0) / 100.0,
        "ci95": number("ci95", required=False, high=100.0) / 100.0,
        "note": str(r.get("note", "")).strip(),
    }
