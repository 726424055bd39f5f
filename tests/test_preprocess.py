"""Feature preprocessing (fewshot_bench/preprocess.py) and its stage in eval.

Each step against a literal loop over its formula; the parser; SimpleShot bit-identical to the formula
it had before preprocessing became a stage; and, through ``run_benchmark`` on synthetic on-disk data,
that the base-class mean comes from the train split alone and that the chain used is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fewshot_bench import benchmark, methods, report
from fewshot_bench.benchmark import EvalConfig, extract_all, run_benchmark, write_run
from fewshot_bench.cli import main
from fewshot_bench.errors import ConfigError, MethodError
from fewshot_bench.methods.base import class_means, neg_sq_euclidean
from fewshot_bench.preprocess import POWER_EPS, Preprocessing, parse_preprocessing

import runs as runs_helper
import synth


def _rows(n: int = 6, d: int = 5, seed: int = 0, low: float = -1.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(low, 2.0, size=(n, d)))


# ------------------------------------------------------------------------------ literal references
def _close(got, want, rtol, atol):
    """numpy's assert_allclose (torch.testing's first call imports for seconds)."""
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=atol)


def _l2n(x):
    out = x.clone()
    for i in range(x.shape[0]):
        norm = math.sqrt(sum(float(v) ** 2 for v in x[i]))
        for j in range(x.shape[1]):
            out[i, j] = float(x[i, j]) / norm
    return out


def _center(x, mu):
    out = x.clone()
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = float(x[i, j]) - float(mu[j])
    return out


def _power(x, beta):
    out = x.clone()
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (float(x[i, j]) + 1e-6) ** beta
    return out


def _mean(x):
    return torch.tensor([sum(float(x[i, j]) for i in range(x.shape[0])) / x.shape[0] for j in range(x.shape[1])],
                        dtype=torch.float64)


def test_each_step_matches_its_formula():
    x, mu = _rows(), torch.tensor([0.3, -0.2, 0.5, 0.0, 1.0], dtype=torch.float64)
    pos = x.abs()
    _close(parse_preprocessing("l2n")(x), _l2n(x), rtol=1e-12, atol=1e-14)
    _close(parse_preprocessing("center")(x, mu), _center(x, mu), rtol=0, atol=1e-15)
    _close(parse_preprocessing("cl2n")(x, mu), _l2n(_center(x, mu)), rtol=1e-12, atol=1e-14)
    _close(parse_preprocessing("power")(pos), _power(pos, 0.5), rtol=1e-12, atol=1e-14)
    _close(parse_preprocessing("power:0.3")(pos), _power(pos, 0.3), rtol=1e-12, atol=1e-14)
    assert POWER_EPS == 1e-6
    # eps keeps a zero feature differentiable and finite: (0 + 1e-6) ** 0.5 = 1e-3
    assert parse_preprocessing("power")(torch.zeros(1, 3, dtype=torch.float64)).tolist() == [[1e-3] * 3]
    # a (E, M, D) batch is transformed row by row, like a 2-D one
    batch = torch.stack([x, 2 * x])
    _close(parse_preprocessing("cl2n")(batch, mu)[1], _l2n(_center(2 * x, mu)),
                               rtol=1e-12, atol=1e-14)
    assert torch.equal(parse_preprocessing("none")(x), x)


def test_chains_apply_left_to_right_and_order_matters():
    pos, mu = _rows(low=0.0), _rows(n=1, seed=3, low=0.0)[0]
    _close(parse_preprocessing("power:0.5+l2n")(pos), _l2n(_power(pos, 0.5)),
                               rtol=1e-12, atol=1e-14)
    _close(parse_preprocessing("l2n+power:0.5")(pos), _power(_l2n(pos), 0.5),
                               rtol=1e-12, atol=1e-14)
    assert not torch.allclose(parse_preprocessing("power+l2n")(pos), parse_preprocessing("l2n+power")(pos))
    _close(parse_preprocessing("l2n+center")(pos, mu), _center(_l2n(pos), mu),
                               rtol=1e-12, atol=1e-14)
    assert not torch.allclose(parse_preprocessing("l2n+center")(pos, mu), parse_preprocessing("cl2n")(pos, mu))
    _close(parse_preprocessing("center+l2n")(pos, mu), parse_preprocessing("cl2n")(pos, mu),
                               rtol=0, atol=0)


def test_base_mean_is_taken_after_the_steps_before_the_centring():
    base = _rows(n=9, seed=5, low=0.0)
    assert np.array_equal(parse_preprocessing("cl2n").base_mean_from(base.numpy()),
                          np.asarray(base.numpy(), dtype=np.float64).mean(0))  # SimpleShot's raw mean
    for spec, before in (("power:0.5+cl2n", lambda b: _power(b, 0.5)), ("l2n+center", _l2n),
                         ("power:0.25+l2n+center+l2n", lambda b: _l2n(_power(b, 0.25)))):
        got = parse_preprocessing(spec).base_mean_from(base.numpy(), chunk=4)  # several chunks
        np.testing.assert_allclose(got, _mean(before(base)).numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(MethodError, match="'l2n' does not centre; it needs no base_mean"):
        parse_preprocessing("l2n").base_mean_from(base.numpy())
    with pytest.raises(MethodError, match="the base \\(train\\) split has no features"):
        parse_preprocessing("cl2n").base_mean_from(np.zeros((0, 5)))


def test_power_refuses_negative_features():
    x = _rows(low=-1.0)
    with pytest.raises(MethodError, match=r"'power:0\.5\+l2n': the power transform needs non-negative features "
                                          r"\(ReLU outputs\), found a minimum of -0\.\d+; drop 'power'"):
        parse_preprocessing("power:0.5+l2n")(x)
    with pytest.raises(MethodError, match="needs non-negative features"):
        methods.create("protonet", preprocess="power").scores(x[None, :5], torch.arange(5)[None], x[None])



def test_power_looks_past_nans_for_negative_features():
    # the check is one amin, which a NaN turns into NaN: a negative value beside a NaN is still refused,
    # with the smallest real value; NaNs alone pass through (the head's non-finite checks name them)
    x = torch.tensor([[0.5, float("nan"), -0.25, -2.5, 1.0]])
    with pytest.raises(MethodError, match=r"found a minimum of -2\.5; drop 'power'"):
        parse_preprocessing("power")(x)
    out = parse_preprocessing("power")(torch.tensor([[0.25, float("nan")]]))
    assert out[0, 0].item() == pytest.approx((0.25 + 1e-6) ** 0.5, rel=1e-6) and out[0, 1].isnan()
    assert parse_preprocessing("power")(torch.empty(0, 4)).shape == (0, 4)

def test_centring_needs_a_base_mean_of_the_right_shape():
    x = _rows()
    with pytest.raises(MethodError, match=r"'cl2n' needs base_mean, the mean feature of the train \(base\) split"):
        parse_preprocessing("cl2n")(x)
    with pytest.raises(MethodError, match=r"base_mean has shape \(3,\) but support has 5 features"):
        parse_preprocessing("center")(x, np.zeros(3))
    with pytest.raises(MethodError, match="protonet needs base_mean, the mean feature of the train split"):
        methods.create("protonet", preprocess="cl2n").scores(x[None, :5], torch.arange(5)[None], x[None])


# ------------------------------------------------------------------------------ parser
@pytest.mark.parametrize("text, spec", [
    ("l2n", "l2n"), ("CL2N", "cl2n"), (" power : 0.50 + L2N ", "power:0.5+l2n"), ("power", "power:0.5"),
    ("power:1", "power:1"), ("power:0.25+cl2n", "power:0.25+cl2n"), ("l2n+center", "l2n+center"),
    ("none", "none"), ("", "none"), (None, "none"),
])
def test_spec_is_canonical_and_round_trips(text, spec):
    chain = parse_preprocessing(text)
    assert chain.spec == spec
    assert parse_preprocessing(chain.spec) == chain and parse_preprocessing(chain) is chain


def test_describe_and_needs_base_mean():
    assert parse_preprocessing("cl2n").describe() == "CL2N (base-class mean)"
    assert parse_preprocessing("power:0.5+l2n").describe() == "power transform (beta=0.5), then L2N"
    assert parse_preprocessing("center").describe() == "centred on the base-class mean"
    assert parse_preprocessing("none").describe() == "none (features as extracted)"
    assert [parse_preprocessing(s).needs_base_mean for s in ("none", "l2n", "power", "center", "power+cl2n")] == [
        False, False, False, True, True]
    assert Preprocessing().spec == "none" and not Preprocessing().steps


@pytest.mark.parametrize("text, message", [
    ("l3n", r"--preprocess 'l3n': unknown step 'l3n'; use steps joined by '\+': none, l2n, center, cl2n, power"),
    ("l2n+", r"--preprocess 'l2n\+': unknown step ''"),
    ("l2n:2", r"unknown step 'l2n:2'"),
    ("power:abc", r"--preprocess 'power:abc': power needs a number, got 'abc'; use steps joined by"),
    ("power:0", r"power beta must be in \(0, 1\], got 0"),
    ("power:1.5", r"power beta must be in \(0, 1\], got 1.5"),
    ("power:nan", r"power beta must be in \(0, 1\], got nan"),
    ("cl2n+center", r"--preprocess 'cl2n\+center': centres twice; a chain takes one 'center' or 'cl2n'"),
])
def test_parse_errors_name_the_flag_and_the_grammar(text, message):
    with pytest.raises(MethodError, match=message):
        parse_preprocessing(text, what="--preprocess")


# ------------------------------------------------------------------------------ methods
def _episodes(seed=0, e=3, n=4, k=2, q=5, d=7):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n).repeat_interleave(k).expand(e, -1).contiguous()
    support = torch.randn(e, n * k, d, generator=g) + 2.0
    query = torch.randn(e, q, d, generator=g) + 2.0
    return support, labels, query, torch.randn(d, generator=g, dtype=torch.float64) + 2.0


def test_simpleshot_is_bit_identical_to_its_formula_before_the_stage():
    support, labels, query, base_mean = _episodes()
    for dtype in (torch.float32, torch.float64):
        s, q = support.to(dtype), query.to(dtype)
        # SimpleShot.batch_scores as it was before preprocessing became a stage (commit 3a77dd0)
        mean = torch.as_tensor(base_mean.numpy()).to(s)
        want = neg_sq_euclidean(F.normalize(q - mean, dim=-1), class_means(F.normalize(s - mean, dim=-1), labels))
        got = methods.create("simpleshot", base_mean=base_mean.numpy()).scores(s, labels, q)
        assert torch.equal(got, want)
        # the same chain on ProtoNet is SimpleShot; SimpleShot without it is ProtoNet
        assert torch.equal(methods.create("protonet", preprocess="cl2n", base_mean=base_mean.numpy())
                           .scores(s, labels, q), want)
        assert torch.equal(methods.create("simpleshot", preprocess="none").scores(s, labels, q),
                           methods.create("protonet").scores(s, labels, q))


def test_preprocess_replaces_the_declared_chain():
    support, labels, query, _ = _episodes(seed=1)
    l2 = methods.create("protonet", preprocess="l2n").scores(support, labels, query)
    want = neg_sq_euclidean(F.normalize(query, dim=-1), class_means(F.normalize(support, dim=-1), labels))
    assert torch.equal(l2, want)
    assert methods.create("protonet").preprocess_chain.spec == "none"
    assert methods.create("simpleshot", preprocess="l2n").preprocess_chain.spec == "l2n"
    with pytest.raises(MethodError, match="unknown step 'bogus'"):
        methods.create("protonet", preprocess="bogus")


# ------------------------------------------------------------------------------ eval: base_mean from the train split
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """CIFAR-FS pickles on disk (read by the real loader), cut to a few classes so a Conv-4 extracts fast;
    the feature cache is filled here."""
    root = tmp_path_factory.mktemp("pp")
    synth.write_cifar_pickle(root / "data", "cifar-fs", splits=("train", "test"))
    extract_all(_cfg(root, "warm"), load_split=_loader(root))
    return root


def _cfg(data, tag, **kw):
    base = dict(checkpoint=None, arch="conv4", datasets=["cifar-fs"], data_root=str(data / "data"), ways=5,
                shots=(1,), queries=1, episodes=12, seed=0, methods=["simpleshot"], cache_dir=str(data / "cache"),
                episodes_dir=str(data / f"episodes-{tag}"), device="cpu", progress=False)
    return EvalConfig(**{**base, **kw})


@pytest.fixture()
def captured(monkeypatch):
    """Every (method, preprocess, base_mean) that run_benchmark passes to methods.create."""
    seen = []
    real = methods.create

    def create(name, **kw):
        seen.append((name, kw.get("preprocess"), kw.get("base_mean")))
        return real(name, **kw)

    monkeypatch.setattr(methods, "create", create)
    return seen


_CLASSES = {"train": 8, "test": 6}


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _loader(data, changed: str | None = None):
    """``load_split`` over the on-disk pickles, each split cut to its first ``_CLASSES`` classes;
    ``changed`` names a split whose images of every class but the first are inverted."""
    from fewshot_bench.data import load_split

    def load(dataset, split):
        s = load_split(dataset, split, str(data / "data"), cache_dir=str(data / "cache"), progress=False)
        labels = np.asarray(s.labels)
        keep = labels < _CLASSES[split]
        images = np.array(s.images[keep])
        if split == changed:
            images[labels[keep] >= 1] = 255 - images[labels[keep] >= 1]
        return dataclasses.replace(s, images=images, labels=labels[keep], class_names=s.class_names[:_CLASSES[split]],
                                   fingerprint=_fingerprint(s.fingerprint, _CLASSES[split], split == changed))

    return load


def _features_of(data, split):
    cfg = _cfg(data, "x")
    return np.asarray(benchmark._features(cfg, cfg.plan(), _loader(data)("cifar-fs", split)))


def _run(data, cfg, changed=None):
    return run_benchmark(cfg, load_split=_loader(data, changed), log=lambda m: None)


def test_base_mean_is_the_train_split_mean_only(data, captured):
    result = _run(data, _cfg(data, "a"))
    [(name, spec, base_mean)] = captured
    assert (name, spec) == ("simpleshot", "cl2n")
    train, test = _features_of(data, "train"), _features_of(data, "test")
    assert len(train) == 3 * _CLASSES["train"]
    want = _mean(torch.from_numpy(train.astype(np.float64))).numpy()  # literal loop over the train rows
    np.testing.assert_allclose(base_mean, want, rtol=1e-12, atol=1e-12)
    # a mean over the test split, or over train + test, is measurably another vector
    for leaked in (test.astype(np.float64).mean(0), np.concatenate([train, test]).astype(np.float64).mean(0)):
        assert np.abs(base_mean - leaked).max() > 1e3 * np.abs(base_mean - want).max() + 1e-9
    r = result.summary["results"][0]
    assert (r["preprocess"], r["preprocess_description"]) == ("cl2n", "CL2N (base-class mean)")


def test_other_test_pixels_leave_base_mean_alone_other_train_pixels_do_not(data, captured):
    _run(data, _cfg(data, "a"))
    for split in ("test", "train"):  # inverted pixels in every class but the first
        _run(data, _cfg(data, f"changed-{split}"), changed=split)
    (_, _, first), (_, _, new_test), (_, _, new_train) = captured
    assert np.array_equal(first, new_test)
    assert not np.allclose(first, new_train)


def test_the_train_split_is_read_exactly_when_a_used_chain_centres(data, monkeypatch):
    calls = []
    real = benchmark._features

    def spy(cfg, plan, split):
        calls.append(split.split)
        return real(cfg, plan, split)

    monkeypatch.setattr(benchmark, "_features", spy)
    cases = [(["protonet"], None, False), (["protonet"], "l2n", False), (["protonet"], "power:0.5+cl2n", True),
             (["simpleshot"], None, True), (["simpleshot"], "none", False), (["protonet", "simpleshot"], None, True),
             (["simpleshot", "cosine"], "power", False)]
    for i, (names, pre, train) in enumerate(cases):
        for run in (lambda c: extract_all(c, load_split=_loader(data)), lambda c: _run(data, c)):
            calls.clear()
            run(_cfg(data, "spy", methods=names, preprocess=pre))
            assert ("train" in calls) is train, (i, names, pre, run)


def test_summary_records_the_chain_per_result_and_csv_columns(data, tmp_path):
    cfg = _cfg(data, "a", methods=["protonet", "simpleshot"])
    paths = write_run(tmp_path / "default", _run(data, cfg))
    summary = json.loads(paths["summary"].read_text())
    assert summary["config"]["preprocess"] is None
    assert {r["method"]: r["preprocess"] for r in summary["results"]} == {"protonet": "none", "simpleshot": "cl2n"}
    assert pd.read_csv(paths["summary_csv"])["preprocess"].tolist() == ["none", "cl2n"]
    assert list(pd.read_csv(paths["per_episode"]).columns) == runs_helper.CSV_COLUMNS
    forced = _run(data, dataclasses.replace(cfg, preprocess="power:0.5+cl2n")).summary
    assert {r["preprocess"] for r in forced["results"]} == {"power:0.5+cl2n"}
    assert forced["results"][0]["preprocess_description"] == "power transform (beta=0.5), then CL2N (base-class mean)"
    with pytest.raises(MethodError, match="--preprocess 'l2m': unknown step 'l2m'"):
        run_benchmark(dataclasses.replace(cfg, preprocess="l2m"), load_split=lambda d, s: pytest.fail("data read"))


def test_runs_that_differ_in_preprocessing_stay_apart_in_compare_and_table(data, tmp_path):
    # 60 episodes: scipy's Wilcoxon takes its normal approximation, not a slow exact permutation
    cfg = _cfg(data, "many", methods=["protonet", "simpleshot"], episodes=60)
    a = write_run(tmp_path / "a", _run(data, cfg))["summary"].parent
    b = write_run(tmp_path / "b", _run(data, dataclasses.replace(cfg, preprocess="l2n")))["summary"].parent
    df = report.compare([a, b])
    assert set(df["a"]) == {"conv4 (preprocess=default)"} and set(df["b"]) == {"conv4 (preprocess=l2n)"}
    table = report.make_table([a, b], fmt="markdown")
    assert "| conv4 (preprocess=default), simpleshot |" in table and "| conv4 (preprocess=l2n), simpleshot |" in table
    assert ("features: conv4 (preprocess=default), protonet: none (features as extracted); "
            "conv4 (preprocess=default), simpleshot: CL2N (base-class mean); conv4 (preprocess=l2n), protonet: L2N; "
            "conv4 (preprocess=l2n), simpleshot: L2N; base-class mean: the mean feature of the train (base) split."
            ) in table
    one = report.make_table([a], fmt="markdown")
    assert "features: protonet: none (features as extracted); simpleshot: CL2N (base-class mean);" in one
    only_l2n = report.make_table([b], fmt="csv")
    assert only_l2n.rstrip().endswith("features: L2N.")


def test_seeds_of_one_row_must_share_the_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    key = ("cifar-fs", 1, "protonet")
    folders = runs_helper.make_seed_runs(tmp_path, "r", {s: {key: rng.integers(0, 2, 20)} for s in (0, 1)})
    for folder, spec in zip(folders, ("none", "l2n")):
        summary = json.loads((folder / "summary.json").read_text())
        summary["results"][0]["preprocess"] = spec
        (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"were evaluated with different feature preprocessing for .* \(l2n vs none\)"):
        report.make_table(folders, fmt="markdown")
    # runs written before preprocessing was recorded stay comparable with new ones
    summary = json.loads((folders[1] / "summary.json").read_text())
    del summary["results"][0]["preprocess"]
    (folders[1] / "summary.json").write_text(json.dumps(summary))
    assert "resnet12 (ce)" in report.make_table(folders, fmt="markdown")


# ------------------------------------------------------------------------------ CLI
def test_cli_refuses_a_bad_chain_before_reading_data(tmp_path, capsys):
    rc = main(["eval", "--checkpoint", "none", "--arch", "conv4", "--dataset", "cifar-fs", "--data-root",
               str(tmp_path / "missing"), "--preprocess", "power:2+l2n", "--out", str(tmp_path / "run")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err == ("Error: --preprocess 'power:2+l2n': power beta must be in (0, 1], got 2; use steps joined by "
                   "'+': none, l2n, center, cl2n, power or power:BETA (e.g. 'power:0.5+l2n')")
    assert not (tmp_path / "run").exists()


def test_methods_listing_shows_the_declared_chain(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["simpleshot"]["preprocessing"] == "cl2n" and rows["protonet"]["preprocessing"] == "none"
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "preprocessing"]
    assert next(ln for ln in lines if ln.split()[0] == "simpleshot").split()[1:3] == ["inductive", "cl2n"]
