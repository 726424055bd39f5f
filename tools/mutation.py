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
that no test reaches count as survivors. With ``--sample N`` only N mutants, drawn at random (seeded by
``--seed``) from all of the target's, are run, and the score is estimated on them, with a Clopper-Pearson
95 % interval (random mutant sampling: modules with thousands of mutants, and integration tests of
seconds each, would take hours on two cores otherwise). Equivalent mutants are listed with a one-line reason in
``tools/mutation_equivalent.toml`` (``"<mutant name>" = "why no test can tell them apart"``).
"""

from __future__ import annotations

import argparse
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
    for rel in filter(None, listed):
        src, dst = ROOT / rel, dest / rel
        if src.is_file() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
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


def run(target: str, max_children: int, sample: int | None = None, seed: int = 0) -> dict[str, str]:
    """Run mutmut for ``target`` (all mutants, or a seeded random ``sample`` of them); return
    ``{mutant name: status}`` for the mutants run.

    mutmut retests a mutant only when its function changed, so survivors of an earlier run are
    retested by name afterwards: new tests may kill them.
    """
    dest = prepare(target)
    if sample is not None:
        if not (dest / "mutants").exists():  # generate the mutants (and the test stats) without running them
            _mutmut(dest, max_children, ["no-such-mutant-only-generate"])
        status = _results(dest)
        names = set(random.Random(seed).sample(sorted(status), min(sample, len(status))))
        todo = sorted(m for m in names if status[m] not in KILLED)  # survivors: retested (new tests may kill)
        for i in range(0, len(todo), 200):  # keep the command line short
            _mutmut(dest, max_children, todo[i : i + 200])
        return {m: s for m, s in _results(dest).items() if m in names}
    before = _results(dest) if (dest / "mutants").exists() else {}
    _mutmut(dest, max_children)
    stale = sorted(m for m, s in before.items() if s == "survived")  # not "not checked" of a failed run
    for i in range(0, len(stale), 200):
        _mutmut(dest, max_children, stale[i : i + 200])
    return _results(dest)


def _mutmut(dest: Path, max_children: int, names: list[str] = ()) -> None:
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
                   cwd=dest, check=False, stdout=subprocess.DEVNULL)


def _results(dest: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=dest, check=True, capture_output=True, text=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def score(statuses: dict[str, str], equivalent: dict[str, str]) -> dict[str, float | int]:
    """Killed / (run - judged equivalent), with its Clopper-Pearson 95 % interval (exact on a full run)."""
    from scipy.stats import binomtest

    judged = {m for m in statuses if m in equivalent}
    counted = {m: s for m, s in statuses.items() if m not in judged}
    killed = sum(s in KILLED for s in counted.values())
    ci = binomtest(killed, len(counted)).proportion_ci(0.95) if counted else None
    return {"mutants": len(statuses), "equivalent": len(judged), "killed": killed,
            "survived": len(counted) - killed, "score": killed / max(1, len(counted)),
            "ci95": [ci.low, ci.high] if ci else [0.0, 1.0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="example: python tools/mutation.py stats --survivors")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (default: all): {', '.join(TARGETS)}")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="run a seeded random sample of N mutants per target; the score is an estimate")
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
        statuses = run(target, args.max_children, args.sample, args.seed)
        scores[target] = score(statuses, equivalent)
        s = scores[target]
        print(f"{target:9s} {s['killed']:5d} killed / {s['mutants'] - s['equivalent']:5d} "
              f"({s['equivalent']} equivalent excluded)  score {100 * s['score']:.1f} %"
              + (f" (95 % CI {100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f} %, sample of {args.sample})"
                 if args.sample else ""), flush=True)
        if args.survivors:
            for name, status in sorted(statuses.items()):
                if status not in KILLED and name not in equivalent:
                    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=WORK / target,
                                          capture_output=True, text=True).stdout
                    print(f"  {status}: {name}\n" + "\n".join(
                        "    " + ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")))
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
