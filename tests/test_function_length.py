"""No function in the package is longer than MAX_LINES lines unless a comment says why.

A function's length counts from its first decorator (or ``def``) to its last line, docstring
included. A longer one passes only with a ``# long: <reason>`` comment on the line just above it
(above its decorators) or between its ``def`` line and its first statement.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot_bench"
MAX_LINES = 60
_LONG = re.compile(r"#\s*long:\s*\S")

# Functions awaiting their split (none at present); each entry must still be long, so the list cannot go stale.
AWAITING_SPLIT: set[tuple[str, str]] = set()


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(name, def line, length)`` of every function in ``source`` over ``max_lines`` lines
    without a ``# long: <reason>`` comment."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = node.end_lineno - start + 1
        if length <= max_lines:
            continue
        # the line above the function, then its def line(s) up to and including the first body line
        window = [start - 1, *range(node.lineno, node.body[0].lineno + 1)]
        if any(1 <= i <= len(lines) and _LONG.search(lines[i - 1]) for i in window):
            continue
        found.append((node.name, node.lineno, length))
    return found


def _package_long_functions() -> dict[tuple[str, str], str]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line, length in long_functions(path.read_text(encoding="utf-8")):
            out[(rel, name)] = f"fewshot_bench/{rel}:{line} {name}: {length} lines"
    return out


def test_no_function_is_longer_than_max_lines_without_a_reason():
    found = _package_long_functions()
    unexplained = [text for key, text in found.items() if key not in AWAITING_SPLIT]
    assert not unexplained, (
        f"functions over {MAX_LINES} lines: split them along their steps, or put '# long: <reason>' "
        "on the line above the def:\n" + "\n".join(unexplained))


def test_the_awaiting_list_holds_only_long_functions():
    stale = sorted(AWAITING_SPLIT - set(_package_long_functions()))
    assert not stale, f"no longer over {MAX_LINES} lines (or renamed); drop them from AWAITING_SPLIT: {stale}"


def _function(n_lines: int, comment_above: str = "", comment_inside: str = "", decorated: bool = False) -> str:
    """Source of one function of exactly ``n_lines`` lines (decorator included)."""
    head = ["@staticmethod"] if decorated else []
    head += ["def f(", "    x,", "):"]
    inside = [f"    {comment_inside}"] if comment_inside else []
    body_lines = n_lines - len(head) - len(inside)
    body = [f"    x = x + {i}" for i in range(body_lines - 1)] + ["    return x"]
    above = [comment_above] if comment_above else []
    return "\n".join(["import os", "", *above, *head, *inside, *body]) + "\n"


@pytest.mark.parametrize("n, flagged", [(60, False), (61, True)])
def test_the_limit_is_60_lines_counted_from_the_decorator(n, flagged):
    for decorated in (False, True):
        src = _function(n, decorated=decorated)
        assert len(src.splitlines()) - 2 == n
        assert bool(long_functions(src)) is flagged
        if flagged:
            assert long_functions(src) == [("f", 3 + decorated, 61)]


def test_a_long_comment_with_a_reason_exempts_a_function():
    assert long_functions(_function(70, comment_above="# long: a solver whose steps read best together")) == []
    assert long_functions(_function(70, comment_inside="# long: one table of flags")) == []
    assert long_functions(_function(70, comment_above="# long: why", decorated=True)) == []
    # no reason, a comment elsewhere, or a comment two lines up do not count
    assert long_functions(_function(70, comment_above="# long:"))
    assert long_functions(_function(70, comment_above="# a long function"))
    far = _function(70).replace("import os\n", "import os\n# long: too far up\n")
    assert long_functions(far)


def test_nested_functions_and_methods_are_checked():
    inner = textwrap.indent(_function(65).split("\n", 2)[2], "    ")
    src = "class A:\n    def m(self):\n        return 1\n\n" + inner
    assert [name for name, _, _ in long_functions(src)] == ["f"]
