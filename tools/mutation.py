"""Mutation testing of the core modules, each against the tests that cover it (not a test; not in CI).

    pip install -e ".[test,mutation]"
    python tools/mutation.py                      # every target below, then the score table
    python tools/mutation.py stats methods        # some targets
    python tools/mutation.py stats --survivors    # also list surviving mutants with their diffs
    python tools/mutation.py train --sample 200   # a seeded random sample of 200 mutants, score with a 95 % CI

For each target, a copy of the working tree (tracked and untracked, not ignored) goes to
``.mutation/<target>/`` with a ``[tool.mutmut]`` section that mutates only the target's files and
runs only its test files; ``mutmut run`` (mutmut 3: it runs, per mutant, only the tests that reach
the mutated function) then works there. The copy is kept, so a rerun only retests what changed.

Score = killed (a test failed, or it timed out) / (all mutants - judged equivalent). Mutants
that no test reaches count as survivors. Whole runs of modules with thousands of mutants and integration
tests of seconds each take hours on two cores, so ``--sample N`` estimates the score by stratified
sampling: every mutant already run in ``.mutation/<target>/`` is a census stratum (its survivors are
retested: new tests may kill them), and the mutants never run are the other stratum, estimated from a
random sample of N of them (seeded by ``--seed``). Score = (killed in the census + unrun x sampled kill
rate) / all, with the sample's Clopper-Pearson 95 % interval scaled the same way. Equivalent mutants are
listed with a one-line reason in ``tools/mutation_equivalent.toml`` (``"<mutant name>" = "why no test can
tell them apart"``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.toml"

# target -> (files to mutate, test files that cover them)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "stats": (["fewshot_bench/stats.py"], ["tests/test_stats.py"]),
    "report": (["fewshot_bench/report.py"],
               ["tests/test_report.py", "tests/test_report_seeds.py", "tests/test_report_table.py",
                "tests/test_report_mutants.py", "tests/test_report_golden.py"]),
    "episodes": (["fewshot_bench/episodes.py"], ["tests/test_episodes.py", "tests/test_cli_episodes.py"]),
    "methods": (["fewshot_bench/methods/*", "fewshot_bench/preprocess.py"],
                ["tests/test_methods.py", "tests/test_methods_reference.py", "tests/test_methods_faithful.py",
                 "tests/test_methods_transductive.py", "tests/test_methods_transductive_grad.py",
                 "tests/test_preprocess.py", "tests/test_methods_mutants.py"]),
    "train": (["fewshot_bench/train/*"],
              ["tests/test_losses.py", "tests/test_losses_reference.py", "tests/test_train_loop.py",
               "tests/test_finetune.py", "tests/test_train_mutants.py", "tests/test_distributed.py"]),
    "features": (["fewshot_bench/features.py"], ["tests/test_features.py"]),
}
KILLED = {"killed", "timeout"}


def prepare(target: str) -> Path:
    """Copy the working tree into ``.mutation/<target>`` and configure mutmut for ``target``."""
    files, tests = TARGETS[target]
    dest = WORK / target
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    changed = False
    for rel in filter(None, listed):
        src, dst = ROOT / rel, dest / rel
        if src.is_file() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            changed |= any(fnmatch.fnmatch(rel, pattern) for pattern in files)
    if changed:  # mutmut maps tests to functions once: a new or renamed function would get "no tests"
        (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    tests = [t for t in tests if (ROOT / t).exists()]
    config = {"source_paths": ["fewshot_bench"], "only_mutate": files,
              "pytest_add_cli_args_test_selection": tests,
              "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x"],
              "process_isolation": "forkserver",  # torch is not fork-safe once imported
              "also_copy": ["docs", "README.md", "ARCHITECTURE.md", "benchmarks"]}  # read by doc tests
    body = (ROOT / "pyproject.toml").read_text().split("\n[tool.mutmut]")[0]
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    (dest / "pyproject.toml").write_text(body.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
    return dest


def run(target: str, max_children: int, equivalent: dict[str, str], sample: int | None = None,
        seed: int = 0) -> tuple[dict[str, str], dict[str, str], int]:
    """Run mutmut for ``target``; return ``(census, sampled, unrun)``: ``{mutant name: status}`` of every
    mutant run (all of them without ``sample``), of the random sample of never-run mutants, and how many
    never-run mutants (not judged equivalent) that sample stands for.

    mutmut retests a mutant only when its function changed, so survivors of an earlier run are
    retested by name afterwards: new tests may kill them.
    """
    dest = prepare(target)
    if sample is None:
        before = _results(dest) if (dest / "mutants").exists() else {}
        _mutmut(dest, max_children)
        _mutmut_names(dest, max_children, sorted(m for m, s in before.items() if s == "survived"))
        return _results(dest), {}, 0
    # (re)generate the mutants of changed code (and the test stats) without running any: mutmut marks a
    # changed function's mutants "not checked" only then, and they belong to the never-run stratum
    _mutmut(dest, max_children, ["no-such-mutant-only-generate"], quiet=True)  # mutmut: "nothing matches"
    status = _results(dest)
    unrun = sorted(m for m, s in status.items() if s == "not checked" and m not in equivalent)
    drawn = random.Random(seed).sample(unrun, min(sample, len(unrun)))
    retest = sorted(m for m, s in status.items() if s not in KILLED and s != "not checked")
    _mutmut_names(dest, max_children, retest + drawn)
    status = _results(dest)
    census = {m: s for m, s in status.items() if m not in unrun}
    return census, {m: status[m] for m in drawn}, len(unrun)


def _mutmut_names(dest: Path, max_children: int, names: list[str], retry: bool = True) -> None:
    for i in range(0, len(names), 200):  # keep the command line short
        _mutmut(dest, max_children, names[i : i + 200])
    if names and retry:  # mutmut 3.8 leaves some mutants of a function whose code changed "not checked"
        status = _results(dest)
        _mutmut_names(dest, max_children, [m for m in names if status.get(m) == "not checked"], retry=False)


def _mutmut(dest: Path, max_children: int, names: list[str] = (), quiet: bool = False) -> None:
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
                   cwd=dest, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)


def _results(dest: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=dest, check=True, capture_output=True, text=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def score(census: dict[str, str], equivalent: dict[str, str], sampled: dict[str, str] | None = None,
          unrun: int = 0) -> dict[str, float | int]:
    """Stratified score: (killed in ``census`` + ``unrun`` x kill rate of ``sampled``) / all counted, with
    the sample's Clopper-Pearson 95 % interval scaled the same way (exact when nothing is unrun)."""
    from scipy.stats import binomtest

    counted = {m: s for m, s in census.items() if m not in equivalent}  # "not checked" counts as survived
    killed = sum(s in KILLED for s in counted.values())
    drawn = {m: s for m, s in (sampled or {}).items() if m not in equivalent}
    total = len(counted) + unrun
    rate, low, high = 0.0, 0.0, 1.0
    if drawn:
        k = sum(s in KILLED for s in drawn.values())
        ci = binomtest(k, len(drawn)).proportion_ci(0.95)
        rate, low, high = k / len(drawn), ci.low, ci.high
        if len(drawn) >= unrun:  # the sample is the whole stratum: exact
            low = high = rate
    if not unrun:
        rate = low = high = 0.0
    at = [(killed + unrun * r) / max(1, total) for r in (rate, low, high)]
    return {"mutants": len(census) + unrun, "equivalent": sum(m in equivalent for m in census),
            "census": len(counted), "killed": killed, "unrun": unrun, "sampled": len(drawn),
            "sampled_killed": sum(s in KILLED for s in drawn.values()),
            "score": at[0], "ci95": [at[1], at[2]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="example: python tools/mutation.py stats --survivors")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (default: all): {', '.join(TARGETS)}")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="retest every mutant already run and a seeded random sample of N never-run ones; "
                             "the score is a stratified estimate with a 95 %% CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    import tomllib  # Python >= 3.11, like mutmut 3 itself

    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    scores = {}
    for target in args.targets or list(TARGETS):
        census, sampled, unrun = run(target, args.max_children, equivalent, args.sample, args.seed)
        scores[target] = score(census, equivalent, sampled, unrun)
        print(_score_line(target, scores[target]), flush=True)
        if args.survivors:
            _print_survivors(target, {**census, **sampled}, equivalent)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _score_line(target: str, s: dict) -> str:
    line = (f"{target:9s} score {100 * s['score']:.1f} %  ({s['killed']} killed / {s['census']} run"
            f", {s['equivalent']} equivalent excluded")
    if not s["unrun"]:
        return line + ")"
    return (line + f"; {s['sampled_killed']} killed / {s['sampled']} sampled of {s['unrun']} never run; "
            f"95 % CI {100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f} %)")


def _print_survivors(target: str, statuses: dict[str, str], equivalent: dict[str, str]) -> None:
    for name, status in sorted(statuses.items()):
        if status not in KILLED and name not in equivalent:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=WORK / target,
                                  capture_output=True, text=True).stdout
            print(f"  {status}: {name}\n" + "\n".join(
                "    " + ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")))


if __name__ == "__main__":
    raise SystemExit(main())
