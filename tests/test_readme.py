"""Documentation that cannot drift (issue 14): every ``fewshot-bench`` command line in README.md parses with
the real argparse parser (the cheap listing commands also run), and every command's ``--help`` teaches:
help text on every flag and argument, and an example invocation of the command itself.

The expensive README commands (``demo``, ``finetune``, ``eval`` on real benchmarks) are parsed here, not
run; the same flows run at a tiny scale in tests/test_cli.py and tests/test_cli_episodes.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from fewshot_bench.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
_CHEAP = {"datasets", "archs", "methods", "losses"}  # run for real, they only list registries


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(inline: bool = True) -> list[str]:
    """Every ``fewshot-bench ...`` command of README's fenced shell blocks (continuations joined, ``&&``
    chains split, comments dropped), plus (``inline``) code spans that are whole commands (no ``[...]``,
    ``...``, ``|``, ``{...}`` or ``<...>`` placeholders)."""
    text = README.read_text()
    out = []
    for block in _shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                part = part.strip()
                if part.startswith("fewshot-bench"):
                    out.append(" ".join(part.split()))
    for span in re.findall(r"`(fewshot-bench [^`]+)`", text.replace("\n", " ")) if inline else ():
        if not re.search(r"\[|\.\.\.|\||\{|<", span):
            out.append(" ".join(span.split()))
    return out


COMMANDS = readme_commands()
RUNNABLE = set(readme_commands(inline=False))  # inline spans may hold placeholders such as DIR


def test_readme_has_the_commands_it_promises():
    assert len(COMMANDS) >= 15
    wanted = ("fewshot-bench demo", "fewshot-bench eval", "fewshot-bench finetune", "fewshot-bench reproduce",
              "fewshot-bench sweep", "fewshot-bench episodes import", "fewshot-bench episodes export")
    for start in wanted:
        assert any(c.startswith(start) for c in COMMANDS), start
    floor = [c for c in COMMANDS if "--checkpoint none" in c and "--dataset digits" in c]
    assert floor and all("--out" in c for c in floor), "the random-init floor command needs --out"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command, capsys):
    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 0 and "--help" in argv, f"README command does not parse: {command}\n{err}"
        return
    if args.command in _CHEAP and command in RUNNABLE:
        assert main(argv) == 0


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = list(_parsers(build_parser()))
_NO_HELP_NEEDED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


@pytest.mark.parametrize("path, parser", PARSERS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_flag_and_argument_has_help(path, parser):
    missing = [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
               if not isinstance(action, _NO_HELP_NEEDED) and not (action.help or "").strip()]
    assert not missing, f"fewshot-bench {' '.join(path)}: no help text for {', '.join(missing)}"


@pytest.mark.parametrize("path, parser", PARSERS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_help_shows_an_example_of_itself(path, parser):
    text = parser.format_help()
    assert re.search(r"^examples?:|^typical session:|example", text, flags=re.M | re.I), path
    own = re.compile(r"^\s+fewshot-bench " + (re.escape(" ".join(path)) + r"(\s|$)" if path else r"\w"), flags=re.M)
    assert own.search(text), f"`fewshot-bench {' '.join(path)} --help` shows no example invocation of itself"


def test_help_examples_parse():
    """The example lines in every --help parse too (placeholders such as ... excepted)."""
    for _path, parser in PARSERS:
        text = re.sub(r"\\\n\s*", " ", parser.format_help())
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("fewshot-bench ") and not re.search(r"\.\.\.|\||\[|<", line):
                try:
                    build_parser().parse_args(shlex.split(line)[1:])
                except SystemExit:
                    pytest.fail(f"--help example does not parse: {line}")
