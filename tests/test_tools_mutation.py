"""The mutation tool's stratified score (tools/mutation.py; the tool itself is not run in CI)."""

import importlib.util
from pathlib import Path

import pytest
from scipy.stats import binomtest

_SPEC = importlib.util.spec_from_file_location("mutation_tool", Path(__file__).parents[1] / "tools" / "mutation.py")
mutation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutation)


def test_full_run_score_is_killed_over_non_equivalent():
    census = {"a": "killed", "b": "timeout", "c": "survived", "d": "no tests", "e": "survived", "f": "not checked"}
    s = mutation.score(census, {"e": "same output"})
    assert (s["census"], s["killed"], s["equivalent"], s["unrun"]) == (5, 2, 1, 0)
    assert s["score"] == s["ci95"][0] == s["ci95"][1] == pytest.approx(2 / 5, rel=1e-15)


def test_sampled_score_is_census_plus_unrun_times_sampled_rate():
    census = {f"c{i}": "killed" for i in range(30)} | {"s1": "survived", "eq": "survived"}
    sampled = {f"x{i}": "killed" for i in range(17)} | {"y1": "survived", "y2": "no tests", "y3": "survived"}
    s = mutation.score(census, {"eq": "why"}, sampled, unrun=400)
    ci = binomtest(17, 20).proportion_ci(0.95)
    total = 31 + 400
    assert s["score"] == pytest.approx((30 + 400 * 17 / 20) / total, rel=1e-12)
    assert s["ci95"] == pytest.approx([(30 + 400 * ci.low) / total, (30 + 400 * ci.high) / total], rel=1e-12)
    assert (s["sampled"], s["sampled_killed"], s["census"]) == (20, 17, 31)
    assert "17 killed / 20 sampled of 400 never run" in mutation._score_line("train", s)


def test_a_sample_of_the_whole_unrun_stratum_is_exact():
    s = mutation.score({"a": "killed"}, {}, {"x": "killed", "y": "survived"}, unrun=2)
    assert s["score"] == s["ci95"][0] == s["ci95"][1] == pytest.approx(2 / 3, rel=1e-15)
