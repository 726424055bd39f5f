"""Imports flow one way (ARCHITECTURE.md): no module of fewshot_bench imports from a higher level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot_bench"
LEVELS = {
    "errors": 1, "registry": 1, "_io": 1, "safe_pickle": 1,
    "stats": 2, "episodes": 2, "transforms": 2, "protocol": 2, "preprocess": 2, "methods": 2, "distributed": 2,
    "data": 3, "backbones": 3,
    "features": 4, "evaluate": 4, "report": 4, "literature": 4, "plots": 4, "train": 4, "diagnose": 4,
    "benchmark": 5, "demo": 5, "studies": 5, "cli": 5, "__main__": 5, "__init__": 0,
}


def _top(module_path: Path) -> str:
    """The first component under fewshot_bench/ (``data/base.py`` -> ``data``)."""
    return module_path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_tops(path: Path) -> set[str]:
    """Top-level fewshot_bench components imported by ``path`` (relative and absolute imports)."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for fewshot_bench/x.py
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from ..x import y
                up = node.level - 1
                if up > depth:
                    continue
                base = list(path.relative_to(PACKAGE).parts[:depth - up])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    out.add(parts[0])
                else:  # from . import a, b (at package root): submodules, or names of __init__
                    out.update(a.name if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                               else "__init__" for a in node.names)
            elif node.module and node.module.startswith("fewshot_bench."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fewshot_bench."))
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_level():
    assert {_top(p) for p in MODULES} <= set(LEVELS), "add new modules to ARCHITECTURE.md and LEVELS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    own = LEVELS[_top(path)]
    if own == 0:  # the package __init__ only re-exports the version
        return
    for target in _imported_tops(path) - {_top(path)}:
        assert target in LEVELS, f"{path.name} imports unknown fewshot_bench.{target}"
        assert LEVELS[target] <= own, (f"{path.relative_to(PACKAGE)} (level {own}) imports {target} "
                                       f"(level {LEVELS[target]})")
    assert "cli" not in _imported_tops(path) or _top(path) in ("cli", "__main__")
