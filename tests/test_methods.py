"""Contract, registry, validation and documentation tests for ``fewshot_bench.methods``.

Agreement with reference implementations (easyfsl, scikit-learn) is in ``test_methods_reference.py``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_bench import methods
from fewshot_bench.errors import ConfigError, MethodError, UnknownNameError
from fewshot_bench.methods import METHODS, FewShotMethod, create
from fewshot_bench.preprocess import parse_preprocessing

from fake_entry_points import FakeEntryPoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DOC = ROOT / "README.md"  # its "Add your own method" section is run as written
ALL_METHODS = methods.available()


def episodes(e=6, n=5, k=3, q=4, d=16, sep=3.0, seed=0, dtype=torch.float64, shuffle=True, nonneg=False):
    """Gaussian classes around random centres (+ a common offset); support order shuffled per episode.

    ``nonneg``: shift all features by one constant to be >= 0, like ReLU outputs (see :func:`nonneg`).
    """
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(e, n, 1, d, generator=g, dtype=dtype) + 2.0
    support = (centres + torch.randn(e, n, k, d, generator=g, dtype=dtype)).reshape(e, n * k, d)
    query = (centres + torch.randn(e, n, q, d, generator=g, dtype=dtype)).reshape(e, n * q, d)
    labels = torch.arange(n).repeat_interleave(k).repeat(e, 1)
    if shuffle:
        perm = torch.stack([torch.randperm(n * k, generator=g) for _ in range(e)])
        support, labels = (
            torch.gather(support, 1, perm[..., None].expand_as(support)),
            torch.gather(labels, 1, perm),
        )
    if nonneg:
        low = torch.minimum(support.min(), query.min())
        support, query = support - low, query - low
    return support, labels, query, torch.arange(n).repeat_interleave(q).repeat(e, 1)


def nonneg(name):
    """Whether ``name``'s declared chain has a power transform, which rejects negative features."""
    chain = parse_preprocessing(methods.get_method_class(name).preprocessing)
    return any(s.name == "power" for s in chain.steps)


def make(name, d=16, dtype=torch.float64):
    kw = (
        {"base_mean": torch.full((d,), 2.0, dtype=dtype)}
        if methods.get_method_class(name).needs_base_mean
        else {}
    )
    return create(name, **kw)


@pytest.fixture
def restore_registry(monkeypatch):
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))


# -- the contract, for every registered method --------------------------------------------------
@pytest.mark.parametrize("name", ALL_METHODS)
def test_contract(name):
    support, labels, query, qlabels = episodes(nonneg=nonneg(name))
    method = make(name)
    scores = method.scores(support, labels, query)
    assert scores.shape == (6, 20, 5) and scores.dtype == torch.float64
    assert torch.isfinite(scores).all()
    assert torch.equal(scores, method.scores(support, labels, query)), "not deterministic"
    assert (scores.argmax(-1) == qlabels).double().mean() > 0.9, "not better than chance on separable data"
    # float32 and numpy input; support order does not matter
    s32 = method.scores(support.float(), labels, query.float())
    assert s32.dtype == torch.float32 and (s32.argmax(-1) == scores.argmax(-1)).double().mean() > 0.97
    np_scores = method.scores(support.numpy(), labels.numpy(), query.numpy())
    torch.testing.assert_close(np_scores, scores)
    perm = torch.arange(support.shape[1]).flip(0)
    torch.testing.assert_close(method.scores(support[:, perm], labels[:, perm], query), scores)


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("where", ["support", "query"])
def test_contract_rejects_nan(name, where):
    support, labels, query, _ = episodes(e=3, nonneg=nonneg(name))
    (support if where == "support" else query)[1, 2, 3] = float("nan")
    with pytest.raises(MethodError, match=rf"{where} has 1 NaN/Inf values \(first in episode 1, row 2\)"):
        make(name).scores(support, labels, query)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_contract_metadata(name):
    cls = methods.get_method_class(name)
    assert issubclass(cls, FewShotMethod) and cls.name == name
    assert cls.description and "\n" not in cls.description
    assert "http" in cls.paper and isinstance(cls.transductive, bool)
    assert cls.__doc__ and ("Inductive" in cls.__doc__) != ("Transductive" in cls.__doc__)
    assert ("Transductive" in cls.__doc__) == cls.transductive
    method = make(name)
    assert set(method.params) == set(cls._param_names())
    assert repr(method).startswith(type(method).__name__ + "(")


def test_describe_lists_every_method():
    rows = methods.describe()
    assert [r.name for r in rows] == ALL_METHODS
    assert {"protonet", "simpleshot", "cosine", "logistic", "ridge", "knn", "simnl", "bdcspn"} <= set(
        ALL_METHODS
    )
    transductive = {r.name for r in rows if r.transductive}  # a superset: other heads may join
    assert {"bdcspn", "laplacianshot", "ptmap", "soft-kmeans", "tim", "alpha-tim", "transductive-ft"} <= transductive
    assert not transductive & {"protonet", "simpleshot", "cosine", "logistic", "ridge", "knn", "simnl"}
    assert all(len(r) == 5 for r in rows)
    assert {r.name: r.preprocessing for r in rows}["simpleshot"] == "cl2n"
    assert {r.name: r.preprocessing for r in rows}["protonet"] == "none"


# -- the one validation path ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s, y, q: (s, y, q[..., :12]), "support has 16 features but query has 12"),
        (lambda s, y, q: (s, y, q[:2]), "support has 6 episodes but query has 2"),
        (lambda s, y, q: (s, y[:, :5], q), r"support_labels has shape \(6, 5\); expected \(6, 15\)"),
        (lambda s, y, q: (s[0], y, q), r"support must be 3-D .* got shape \(15, 16\); .* support\[None\]"),
        (lambda s, y, q: (s, y.double(), q), "support_labels must be integers"),
        (lambda s, y, q: (s.long(), y, q), "support must hold floating-point features"),
        (lambda s, y, q: (s, y - 1, q), "support_labels must be in 0..N-1, found -1 in episode 0"),
        (lambda s, y, q: (s, torch.where(y == 2, 5, y), q), "episode 0 has no support sample of class 2"),
        (
            lambda s, y, q: (s, y, q.clone().index_fill_(1, torch.tensor([0]), float("inf"))),
            "query has 96 NaN/Inf",
        ),
        (lambda s, y, q: (s[:, :0], y[:, :0], q), "support has no samples"),
        (lambda s, y, q: ("features", y, q), "support must be a torch tensor or numpy array"),
    ],
)
def test_invalid_inputs_are_explained(mutate, match):
    support, labels, query, _ = episodes()
    with pytest.raises(MethodError, match=match):
        create("protonet").scores(*mutate(support, labels, query))


def test_mixed_precision_is_promoted_and_half_runs_in_float32():
    support, labels, query, _ = episodes()
    assert create("protonet").scores(support.float(), labels, query).dtype == torch.float64
    assert create("cosine").scores(support.half(), labels.int(), query.half()).dtype == torch.float32


def test_bad_hyper_parameters_are_explained():
    support, labels, query, _ = episodes()
    for name, kw, match in [
        ("knn", {"k": 0}, "k must be an integer >= 1"),
        ("knn", {"metric": "l1"}, "metric must be"),
        ("logistic", {"C": -1.0}, "need C > 0"),
        ("ridge", {"alpha": 0.0}, "ridge: alpha must be a number > 0, got 0.0"),
        ("bdcspn", {"temperature": 0}, "bdcspn: temperature must be a number > 0, got 0"),
        ("simnl", {"beta": -1}, "beta"),
    ]:
        with pytest.raises(MethodError, match=match):
            create(name, **kw)
    with pytest.raises(ConfigError, match=r"method 'protonet' has no parameter 'k'; its parameters: none"):
        create("protonet", k=3)
    with pytest.raises(ConfigError, match=r"has no parameter 'kk'; its parameters: k, metric"):
        create("knn", kk=3)
    assert create("knn", k=None).k == 5  # None means "keep the default" (CLI flags left unset)


def test_simpleshot_needs_base_mean():
    support, labels, query, _ = episodes()
    with pytest.raises(MethodError, match="simpleshot needs base_mean, the mean feature of the train split"):
        create("simpleshot")
    method = methods.SimpleShot()  # direct construction only stores; scoring checks
    with pytest.raises(MethodError, match="needs base_mean"):
        method.scores(support, labels, query)
    with pytest.raises(MethodError, match=r"base_mean has shape \(8,\) but support has 16 features"):
        create("simpleshot", base_mean=np.zeros(8)).scores(support, labels, query)
    assert methods.SimpleShot.needs_base_mean and not methods.ProtoNet.needs_base_mean
    assert create("simpleshot", base_mean=np.zeros(16)).params["base_mean"].startswith("array(shape=(16,)")


def test_simnl_needs_two_classes():
    support, labels, query, _ = episodes(n=1)
    with pytest.raises(MethodError, match="at least 2 classes"):
        create("simnl").scores(support, labels, query)


def test_knn_votes_then_breaks_ties_by_nearest_voter():
    support = torch.tensor([[[0.0], [1.1], [1.2], [3.0]]])  # classes 0, 1, 1, 0
    labels = torch.tensor([[0, 1, 1, 0]])
    query = torch.tensor([[[0.9], [1.0]]])
    scores = create("knn", k=4, tie_break="nearest").scores(support, labels, query)  # 2 votes each
    assert scores[0].argmax(-1).tolist() == [1, 1]  # the nearest voter decides
    assert create("knn", k=4).scores(support, labels, query)[0].argmax(-1).tolist() == [1, 1]  # the default
    assert create("knn:sklearn", k=4).scores(support, labels, query)[0].argmax(-1).tolist() == [0, 0]  # as sklearn
    scores = create("knn", k=3).scores(support, labels, torch.tensor([[[-1.0]]]))  # votes 0:1, 1:2
    assert scores[0, 0].floor().tolist() == [1.0, 2.0] and scores[0, 0].argmax() == 1


def test_episode_scores_is_looped_and_output_shape_is_checked(restore_registry):
    class Mean(FewShotMethod):
        name = "mean-test"

        def episode_scores(self, support, support_labels, query):
            return np.zeros((query.shape[0], int(support_labels.max()) + 1))  # numpy is accepted too

    class Wrong(FewShotMethod):
        def batch_scores(self, support, support_labels, query):
            return torch.zeros(1)

    support, labels, query, _ = episodes()
    assert Mean().scores(support, labels, query).shape == (6, 20, 5)
    with pytest.raises(MethodError, match=r"returned scores of shape \(1,\), expected \(6, 20, 5\)"):
        Wrong().scores(support, labels, query)
    with pytest.raises(NotImplementedError, match="must implement batch_scores or episode_scores"):
        FewShotMethod().scores(support, labels, query)


# -- registry: names, files, entry points -----------------------------------------------------
def test_unknown_name_answers_with_close_matches():
    with pytest.raises(
        UnknownNameError, match=r"unknown method 'protonett' \(--methods\); did you mean: protonet"
    ):
        create("protonett")
    with pytest.raises(UnknownNameError, match="did you mean: simpleshot"):
        create("SimpleShoot")
    assert isinstance(create("ProtoNet"), methods.ProtoNet)  # case-insensitive


def test_register_method_validates(restore_registry):
    with pytest.raises(TypeError, match="needs a class attribute `name`"):
        methods.register_method(type("NoName", (FewShotMethod,), {"episode_scores": lambda *a: None}))
    with pytest.raises(TypeError, match="must implement batch_scores or episode_scores"):
        methods.register_method(type("Lazy", (FewShotMethod,), {"name": "lazy"}))
    with pytest.raises(TypeError, match="expects a FewShotMethod subclass"):
        methods.register_method(int)  # type: ignore[arg-type]


PLUGIN = """
import torch
from fewshot_bench.methods import FewShotMethod, ProtoNet

class FarthestMean(ProtoNet):
    name = "farthest"
    def batch_scores(self, support, support_labels, query):
        return -super().batch_scores(support, support_labels, query)

class NotAMethod:
    pass
"""


def test_load_method_from_file(tmp_path):
    path = tmp_path / "my_methods.py"
    path.write_text(PLUGIN)
    support, labels, query, qlabels = episodes()
    method = create(f"{path}:FarthestMean")
    assert (method.scores(support, labels, query).argmax(-1) == qlabels).double().mean() < 0.2
    assert methods.get_method_class(f"{path}:FarthestMean") is type(method)  # loaded once
    assert "farthest" not in METHODS  # loading from a file does not register
    with pytest.raises(ConfigError, match=r"file .*missing\.py does not exist"):
        create(f"{tmp_path / 'missing.py'}:FarthestMean")
    with pytest.raises(UnknownNameError, match="defines no class 'FarthestMaen'; did you mean: FarthestMean"):
        create(f"{path}:FarthestMaen")
    with pytest.raises(ConfigError, match="NotAMethod in .* is not a FewShotMethod subclass"):
        create(f"{path}:NotAMethod")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no such thing')\n")
    with pytest.raises(ConfigError, match="importing .*broken.py failed: ImportError: no such thing"):
        create(f"{broken}:X")


def test_entry_point_plugins_load_lazily(monkeypatch, restore_registry):
    class Plugged(methods.CosineCentroid):
        name = "plugged"

    calls = []

    def fake_entry_points(group=None, **kw):
        calls.append(group)
        return [
            FakeEntryPoint("plugged", Plugged),
            FakeEntryPoint("broken", ModuleNotFoundError("no module x")),
            FakeEntryPoint("notamethod", dict),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(methods._loading, "_WARNED", set())
    assert isinstance(create("protonet"), methods.ProtoNet) and not calls  # built-ins need no scan
    with pytest.warns(RuntimeWarning) as record:
        assert isinstance(create("plugged"), Plugged)
    assert sorted(str(w.message) for w in record) == [
        "skipping method plug-in 'broken': no module x",
        "skipping method plug-in 'notamethod': entry point 'notamethod' (fake:notamethod) is not a "
        "FewShotMethod "
        "subclass; derive it from fewshot_bench.methods.FewShotMethod",
    ]
    names = methods.available()  # warned once only
    assert calls[0] == "fewshot_bench.methods"
    assert "plugged" in names and "broken" not in names and "notamethod" not in names
    assert "plugged" in [r.name for r in methods.describe()]


# -- public API and documentation ----------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [
        "",
        ".base",
        ".protonet",
        ".simpleshot",
        ".cosine",
        ".logistic",
        ".ridge",
        ".knn",
        ".simnl",
        ".svm",
        ".bdcspn",
        ".tim",
        ".transductive_finetuning",
        "._loading",
    ],
)
def test_all_is_sorted_and_exported(module):
    mod = importlib.import_module("fewshot_bench.methods" + module)
    assert mod.__all__ == sorted(mod.__all__)
    assert all(hasattr(mod, n) for n in mod.__all__)


def extract_example(markdown: Path, heading: str = "## Add your own method") -> str:
    """The first ```python block after ``heading`` in ``markdown``."""
    text = markdown.read_text(encoding="utf-8")
    assert heading in text, f"{markdown} has no heading {heading!r}"
    match = re.search(r"```python\n(.*?)```", text.split(heading, 1)[1], re.S)
    assert match, f"no ```python block under {heading!r} in {markdown}"
    return match.group(1)


def test_add_your_own_method_example_runs(restore_registry, capsys):
    code = extract_example(EXAMPLE_DOC)
    assert len(code.strip().splitlines()) < 30
    exec(compile(code, str(EXAMPLE_DOC), "exec"), {"__name__": "readme_example"})
    assert "torch.Size([10, 15, 5])" in capsys.readouterr().out
    assert "median" in METHODS


def test_logistic_warns_when_not_converged():
    support, labels, query, _ = episodes()
    with pytest.warns(RuntimeWarning, match="logistic: not converged after 2 iterations"):
        create("logistic", max_iter=2).scores(support, labels, query)


NUMERIC_PARAMS = [
    ("svm", "C"), ("svm", "dual_ridge"), ("svm", "tol"), ("svm", "max_iter"),
    ("logistic", "C"), ("logistic", "max_iter"), ("logistic", "tol"), ("ridge", "alpha"),
    ("simnl", "beta"), ("simnl", "lam"), ("simnl", "tau"), ("bdcspn", "temperature"), ("bdcspn", "top_z"),
    ("knn", "k"), ("soft-kmeans", "n_iter"), ("laplacianshot", "lam"), ("laplacianshot", "tol"),
    ("laplacianshot", "rect_temperature"), ("laplacianshot", "knn"), ("laplacianshot", "n_iter"),
    ("ptmap", "alpha"), ("ptmap", "lam"), ("ptmap", "sinkhorn_tol"), ("ptmap", "n_epochs"),
    ("ptmap", "sinkhorn_max_iter"), ("tim", "iterations"), ("transductive-ft", "epochs"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "key"), NUMERIC_PARAMS)
@pytest.mark.parametrize("value", [True, "1", float("nan"), torch.tensor(2.0)])
def test_numeric_hyper_parameters_refuse_bools_text_nan_and_tensors(name, key, value):
    """One rule (errors.is_number / is_int) for every head: a bool, text, NaN or a tensor is a MethodError
    naming the head, never a TypeError from a comparison or from the arithmetic, nor a silent 1 (True)."""
    with pytest.raises(MethodError, match=rf"^{re.escape(name)}: .*\b{key}\b") as err:
        create(name, **{key: value})
    if not isinstance(value, torch.Tensor):  # the value as given, quoted if text ("got '1'", not "got 1")
        assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [("svm", "max_iter", 2.5), ("logistic", "max_iter", 10.0), ("knn", "k", 3.0), ("bdcspn", "top_z", 1.5),
     ("soft-kmeans", "n_iter", 2.0), ("laplacianshot", "knn", 3.0)],
)  # fmt: skip
def test_integer_hyper_parameters_refuse_floats(name, key, value):
    with pytest.raises(MethodError, match=rf"^{re.escape(name)}: .*\b{key}\b.*{value}"):
        create(name, **{key: value})


def test_numpy_hyper_parameters_are_numbers():
    """numpy scalars (e.g. from a sweep over np.linspace) count as the numbers they hold."""
    rng = np.random.default_rng(0)
    support, query = rng.random((2, 6, 8)), rng.random((2, 9, 8))
    labels = np.tile(np.repeat(np.arange(3), 2), (2, 1))
    for name, kw, np_kw in (
        ("knn", {"k": 3}, {"k": np.int64(3)}),
        ("svm", {"C": 0.5, "max_iter": 50}, {"C": np.float32(0.5), "max_iter": np.int32(50)}),
        ("ptmap", {"alpha": 0.5, "n_epochs": 3}, {"alpha": np.float64(0.5), "n_epochs": np.int16(3)}),
        ("logistic", {"C": 2.0, "max_iter": 200}, {"C": np.float32(2.0), "max_iter": np.int64(200)}),
        ("soft-kmeans", {"n_iter": 2}, {"n_iter": np.int64(2)}),
        ("laplacianshot", {"knn": 3, "n_iter": 4, "lam": 0.5, "base_mean": np.zeros(8)},
         {"knn": np.int64(3), "n_iter": np.int32(4), "lam": np.float64(0.5), "base_mean": np.zeros(8)}),
        ("tim", {"iterations": 3, "lr": 1e-3}, {"iterations": np.int64(3), "lr": np.float64(1e-3)}),
        ("transductive-ft", {"epochs": 2}, {"epochs": np.int64(2)}),
        ("bdcspn", {"top_z": 2, "temperature": 5.0}, {"top_z": np.int64(2), "temperature": np.float32(5.0)}),
    ):
        torch.testing.assert_close(
            create(name, **np_kw).scores(support, labels, query), create(name, **kw).scores(support, labels, query),
            rtol=0, atol=0,
        )


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [("tim", "temperature", "tim: temperature must be a finite number > 0, got inf"),
     ("tim", "ce_weight", "tim: ce_weight must be a finite number >= 0, got inf"),
     ("transductive-ft", "lr", "transductive-ft: lr must be a finite number > 0, got inf"),
     ("transductive-ft", "entropy_weight", "transductive-ft: entropy_weight must be a finite number >= 0, got inf"),
     ("alpha-tim", "alpha", "alpha-tim: alpha must be a finite number > 0 and != 1")],
)  # fmt: skip
def test_finite_hyper_parameters_refuse_infinity(name, key, message):
    with pytest.raises(MethodError, match=f"^{re.escape(message)}"):
        create(name, **{key: math.inf})
