"""docs/methods.md cannot drift from the code: its "Add your own method" example runs as written (a
transductive head, registered and loaded from a file), and every registered method appears in its
overview table and in a subsection with the paper link, the kind, the declared preprocessing chain,
the defaults of every hyper-parameter and the values of every preset, as the class declares them.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_methods import extract_example

from fewshot_bench import methods
from fewshot_bench.errors import MethodError
from fewshot_bench.methods import METHODS, create, get_method_class
from fewshot_bench.preprocess import _NAMES, parse_preprocessing

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TEXT = DOC.read_text(encoding="utf-8")
ALL_METHODS = methods.available()
NOT_HYPER_PARAMETERS = {"base_mean"}  # data the CLI supplies (the train split's mean feature)


@pytest.fixture
def restore_registry(monkeypatch):
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))


def batch(e=3, n=4, k=2, q=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(e, n, 1, d, generator=g, dtype=torch.float64)
    support = (centres + torch.randn(e, n, k, d, generator=g, dtype=torch.float64)).reshape(e, n * k, d)
    query = (centres + torch.randn(e, n, q, d, generator=g, dtype=torch.float64)).reshape(e, n * q, d)
    return support, torch.arange(n).repeat_interleave(k).repeat(e, 1), query


def refined_loop(support, labels, query, steps):
    """The example's docstring, one episode at a time, on L2-normalised features."""
    out = []
    for s, y, q in zip(F.normalize(support, dim=-1), labels, F.normalize(query, dim=-1)):
        classes = range(int(y.max()) + 1)
        protos = torch.stack([s[y == c].mean(0) for c in classes])
        for _ in range(steps):
            pseudo = torch.tensor(
                [min(classes, key=lambda c: float(((x - protos[c]) ** 2).sum())) for x in q]
            )
            protos = torch.stack([torch.cat([s[y == c], q[pseudo == c]]).mean(0) for c in classes])
        out.append(-(torch.cdist(q, protos) ** 2))
    return torch.stack(out)


# -- the example --------------------------------------------------------------------------------
def test_add_your_own_method_example_runs(restore_registry, capsys):
    code = extract_example(DOC)
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_methods_example"})
    assert "True {'steps': 2} torch.Size([10, 15, 5])" in capsys.readouterr().out
    assert "refined-protos" in METHODS
    cls = get_method_class("refined-protos")
    assert cls.transductive is True and cls.preprocessing == "l2n"
    assert "https://" in cls.paper and "Transductive." in cls.__doc__

    support, labels, query = batch()
    for steps in (0, 1, 2):
        scores = create("refined-protos", steps=steps).scores(support, labels, query)
        assert scores.shape == (3, 24, 4) and torch.isfinite(scores).all()
        torch.testing.assert_close(
            scores, refined_loop(support, labels, query, steps), rtol=1e-10, atol=1e-10
        )
    # transductive indeed: another query set changes the scores of query 0
    other = query.clone()
    other[:, 1:] = torch.flip(other[:, 1:], dims=[-1])
    head = create("refined-protos")
    assert not torch.allclose(
        head.scores(support, labels, query)[:, 0], head.scores(support, labels, other)[:, 0]
    )
    with pytest.raises(MethodError, match=r"^refined-protos: steps must be an integer >= 0, got -1$"):
        create("refined-protos", steps=-1)


def test_add_your_own_method_example_loads_from_a_file(tmp_path, restore_registry, capsys):
    path = tmp_path / "refine.py"
    path.write_text(extract_example(DOC), encoding="utf-8")
    head = create(f"{path}:RefinedPrototypes", steps=1)
    assert type(head).transductive is True
    support, labels, query = batch(seed=1)
    torch.testing.assert_close(head.scores(support, labels, query), refined_loop(support, labels, query, 1))


# -- every registered method, as declared -------------------------------------------------------
def overview_rows() -> dict[str, list[str]]:
    """``{name: [what, paper, kind, preprocessing, presets]}`` from the overview table."""
    table = TEXT.split("## Overview", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        match = re.match(r"\| `([^`]+)` \|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


def subsections() -> dict[str, str]:
    """``{name: text}`` of the ``### `name``` subsections."""
    parts = re.split(r"^### `([^`]+)`\s*$", TEXT, flags=re.M)
    return {name: body.split("\n## ", 1)[0] for name, body in zip(parts[1::2], parts[2::2])}


def bullet(section: str, label: str) -> str:
    match = re.search(rf"{label}: (.*?)(?=^- |\Z)", section, flags=re.S | re.M)
    assert match, f"no '{label}:' in the subsection"
    return match.group(1)


def assignments(text: str) -> dict[str, object]:
    """The ```name=value``` code spans of ``text``, values parsed as Python literals (first wins)."""
    out: dict[str, object] = {}
    for name, value in re.findall(r"`(\w+)=([^`]+)`", text):
        out.setdefault(name, ast.literal_eval(value))
    return out


ROWS, SECTIONS = overview_rows(), subsections()


def test_the_page_lists_exactly_the_registered_methods():
    assert sorted(ROWS) == sorted(ALL_METHODS)
    assert sorted(SECTIONS) == sorted(ALL_METHODS)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_is_documented_as_declared(name):
    cls = get_method_class(name)
    kind = "transductive" if cls.transductive else "inductive"
    spec = parse_preprocessing(cls.preprocessing).spec
    presets = getattr(cls, "presets", None) or {}

    what, paper, row_kind, row_chain, row_presets = ROWS[name]
    assert row_kind == kind
    assert row_chain == f"`{spec}`"
    assert set(re.findall(r"`([^`]+)`", row_presets)) == {f"{name}:{p}" for p in presets}
    assert cls.paper.split()[0].rstrip(",") in paper  # first author

    section = SECTIONS[name]
    for url in re.findall(r"https?://[^\s,;)]+", cls.paper):
        assert url in section, f"{name}: the subsection lacks the paper link {url}"
    assert f"**{kind.capitalize()}.**" in section
    assert f"**{'Inductive' if cls.transductive else 'Transductive'}.**" not in section
    assert re.search(rf"^- Preprocessing: `{re.escape(spec)}`", section, flags=re.M)

    defaults = {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.name not in NOT_HYPER_PARAMETERS
    }
    documented = assignments(bullet(section, "- Defaults"))
    assert documented == defaults, f"{name}: page says {documented}, code has {defaults}"

    text = bullet(section, "Presets")
    if not presets:
        assert text.startswith("none")
    for preset, values in presets.items():
        part = text.split(f"`{name}:{preset}`", 1)[1].split(f"`{name}:", 1)[0]
        assert assignments(part) == values, f"{name}:{preset}"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_class_links_its_paper(name):
    cls = get_method_class(name)
    urls = re.findall(r"https?://\S+", cls.paper)
    assert urls, f"{name}: `paper` has no http link: {cls.paper!r}"
    assert all(url in (cls.__doc__ or "") for url in urls), f"{name}: the docstring lacks {urls}"


def test_the_preprocessing_steps_on_the_page_are_the_grammar():
    table = TEXT.split("## Preprocessing", 1)[1].split("\n## ", 1)[0]
    steps = re.findall(r"^\| `(\w+)(?:\[:β\])?` \|", table, flags=re.M)
    assert sorted(steps) == sorted(("none", *_NAMES))
    for step in steps:
        parse_preprocessing(step)


def test_readme_names_every_built_in_method_and_points_to_the_page():
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Few-shot methods", 1)[1].split("\n## ", 1)[0]
    assert "docs/methods.md" in section
    for name in ALL_METHODS:
        if get_method_class(name).__module__.startswith("fewshot_bench."):
            assert f"`{name}`" in section, f"README's methods section does not name {name}"
