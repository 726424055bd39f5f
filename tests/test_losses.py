"""Losses against slow, literal float64 implementations of their formulas."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
import re
from pathlib import Path

import pytest
import torch

from fewshot_bench.errors import ConfigError, UnknownNameError
from fewshot_bench.train import losses
from fewshot_bench.train.losses import (
    LOSS_REGISTRY,
    LossTerms,
    TrainingLoss,
    available_losses,
    clce_loss,
    create_loss,
    cross_entropy,
    describe_losses,
    get_loss_class,
    lacln_loss,
    supcon_loss,
)

from fake_entry_points import FakeEntryPoint

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- literal references


def _normalise(z):
    z = z.double()
    return [row / math.sqrt(float((row * row).sum())) for row in z]


def literal_lacln(z, labels, tau, hard_negatives=True):
    """CLCE Eq. 3 written out anchor by anchor; returns per-anchor losses (None: no positive)."""
    z = _normalise(z)
    labels = [int(v) for v in labels]
    b = len(labels)
    dot = [[float((z[i] * z[j]).sum()) for j in range(b)] for i in range(b)]
    out = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and labels[p] == labels[i]]
        neg = [k for k in range(b) if labels[k] != labels[i]]
        if not pos:
            out.append(None)
            continue
        e_pos = sum(math.exp(dot[i][p] / tau) for p in pos)
        z_neg = sum(math.exp(dot[i][k] / tau) for k in neg)
        neg_term = 0.0
        for k in neg:
            w = len(neg) * math.exp(dot[i][k] / tau) / z_neg if hard_negatives else 1.0
            neg_term += w * math.exp(dot[i][k] / tau)
        out.append(-math.log((1.0 / len(pos)) * e_pos / (e_pos + neg_term)))
    return out


def literal_supcon(z, labels, tau):
    """Khosla et al. (2020) Eq. 2 (L_out) anchor by anchor."""
    z = _normalise(z)
    labels = [int(v) for v in labels]
    b = len(labels)
    dot = [[float((z[i] * z[j]).sum()) for j in range(b)] for i in range(b)]
    out = []
    for i in range(b):
        pos = [p for p in range(b) if p != i and labels[p] == labels[i]]
        if not pos:
            out.append(None)
            continue
        den = sum(math.exp(dot[i][a] / tau) for a in range(b) if a != i)
        out.append(-sum(math.log(math.exp(dot[i][p] / tau) / den) for p in pos) / len(pos))
    return out


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else 0.0


LABEL_CASES = {
    "balanced": [0, 0, 1, 1, 2, 2, 3, 3],
    "singletons": [0, 0, 0, 1, 2, 3, 3, 4, 5],  # classes 1, 2, 4, 5 have a single sample
    "all-same": [7] * 6,
    "two-classes": [1, 0, 1, 0, 1, 1, 0],
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("hnm", [True, False])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_lacln_matches_literal_formula(case, hnm, tau):
    labels = torch.tensor(LABEL_CASES[case])
    for seed in range(3):
        z = torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = literal_lacln(z, labels, tau, hnm)
        got = lacln_loss(z, labels, tau, hard_negatives=hnm, reduction="none")
        for r, g in zip(ref, got.tolist(), strict=True):
            if r is None:
                assert math.isnan(g)
            else:
                assert g == pytest.approx(r, rel=1e-10, abs=1e-12)
        assert float(lacln_loss(z, labels, tau, hard_negatives=hnm)) == pytest.approx(_mean(ref), rel=1e-10)
        total = sum(v for v in ref if v is not None)
        assert float(lacln_loss(z, labels, tau, hnm, reduction="sum")) == pytest.approx(total, rel=1e-10)
        # detaching the weights changes the gradient, never the value
        assert torch.allclose(
            lacln_loss(z, labels, tau, hnm, detach_weights=True), lacln_loss(z, labels, tau, hnm)
        )


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_supcon_matches_literal_formula(case):
    labels = torch.tensor(LABEL_CASES[case])
    for seed in range(3):
        z = torch.randn(
            len(labels), 4, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64
        )
        ref = literal_supcon(z, labels, 0.1)
        got = supcon_loss(z, labels, 0.1, reduction="none").tolist()
        for r, g in zip(ref, got, strict=True):
            assert math.isnan(g) if r is None else g == pytest.approx(r, rel=1e-10)
        assert float(supcon_loss(z, labels, 0.1)) == pytest.approx(_mean(ref), rel=1e-10)


def test_hnm_upweights_hard_negatives():
    # With HNM the negative term is |N| * E_softmax[exp(s)] >= mean-weighted sum (Jensen / Chebyshev).
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.arange(12) % 3
    assert lacln_loss(z, labels, hard_negatives=True) >= lacln_loss(z, labels, hard_negatives=False)


def test_clce_is_the_convex_mix():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    want = 0.3 * cross_entropy(logits, labels) + 0.7 * lacln_loss(z, labels, 0.2)
    assert torch.allclose(clce_loss(logits, z, labels, lam=0.7, temperature=0.2), want)
    nohnm = 0.3 * cross_entropy(logits, labels) + 0.7 * lacln_loss(z, labels, 0.2, hard_negatives=False)
    assert torch.allclose(clce_loss(logits, z, labels, 0.7, 0.2, hard_negatives=False), nohnm)
    assert torch.allclose(clce_loss(logits, z, labels, lam=0.0), cross_entropy(logits, labels))


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y: lacln_loss(z, y, 0.3),
        lambda z, y: lacln_loss(z, y, 0.3, hard_negatives=False),
        lambda z, y: supcon_loss(z, y, 0.3),
        lambda z, y: clce_loss(z[:, :3] * 2, z, y, lam=0.6, temperature=0.3),
    ],
    ids=["lacln", "lacln-nohnm", "supcon", "clce"],
)
def test_gradcheck(fn):
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 is a singleton anchor
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, labels), (z,), eps=1e-6, atol=1e-6)


def test_detached_weights_change_only_the_gradient():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    z1 = torch.randn(
        6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True
    )
    z2 = z1.detach().clone().requires_grad_(True)
    lacln_loss(z1, labels).backward()
    lacln_loss(z2, labels, detach_weights=True).backward()
    assert not torch.allclose(z1.grad, z2.grad)


@pytest.mark.parametrize("fn", [lacln_loss, supcon_loss])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stable_at_small_temperature_with_near_identical_embeddings(fn, dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, generator=g)
    z = (base + 1e-4 * torch.randn(32, 16, generator=g)).to(dtype).requires_grad_(True)
    labels = torch.arange(32) % 4
    loss = fn(z, labels, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # and far apart embeddings at the same temperature (exp(±40) terms)
    far = torch.eye(8, dtype=torch.float32).repeat(4, 1).requires_grad_(True)
    loss = fn(far, torch.arange(32) % 8, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()


@pytest.mark.parametrize("fn", [lacln_loss, supcon_loss])
def test_no_positive_anywhere_gives_attached_zero(fn):
    z = torch.randn(5, 3, requires_grad=True)
    loss = fn(z, torch.arange(5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    assert torch.isnan(fn(z, torch.arange(5), reduction="none")).all()
    one = torch.randn(1, 3, requires_grad=True)
    assert fn(one, torch.tensor([0])).item() == 0.0


def test_all_same_labels_is_constant_log_p():
    # no negatives: every anchor's loss is log|P(i)| whatever z is
    z = torch.randn(5, 3, dtype=torch.float64)
    assert float(lacln_loss(z, torch.zeros(5, dtype=torch.long))) == pytest.approx(math.log(4))


def test_bad_parameters():
    z, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="--temperature"):
        lacln_loss(z, y, temperature=0)
    with pytest.raises(ConfigError, match="--lam"):
        clce_loss(torch.randn(4, 2), z, y, lam=1.5)
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss(z, y, reduction="avg")
    with pytest.raises(ValueError, match="rows"):
        lacln_loss(z, y[:3])


# --------------------------------------------------------------------------- the registry

BUILTINS = ["ce", "ce+h-scl", "ce+supcon", "clce", "clce-nohnm", "h-scl", "lacln", "supcon"]
DEFAULTS = {
    "ce": {"label_smoothing": 0.0},
    "supcon": {"temperature": 0.1},
    "ce+supcon": {"lam": 0.9, "temperature": 0.5},
    "lacln": {"temperature": 0.5, "hard_negatives": True, "detach_weights": False},
    "clce": {"lam": 0.9, "temperature": 0.5},
    "clce-nohnm": {"lam": 0.9, "temperature": 0.5},
    "h-scl": {"temperature": 0.5, "beta": 1.0, "detach_weights": False},
    "ce+h-scl": {"lam": 0.9, "temperature": 0.5, "beta": 1.0},
}


@pytest.fixture
def restore_loss_registry():
    saved = dict(LOSS_REGISTRY._items)
    yield
    LOSS_REGISTRY._items.clear()
    LOSS_REGISTRY._items.update(saved)


def test_builtins_and_their_defaults():
    assert available_losses() == BUILTINS
    assert {r.name: r.params for r in describe_losses()} == DEFAULTS
    for name, params in DEFAULTS.items():
        assert create_loss(name).params == params


@pytest.mark.parametrize("name", BUILTINS)
def test_every_loss_documents_its_equation_and_source(name):
    cls = get_loss_class(name)
    doc = inspect.getdoc(cls)
    assert cls.name == name and cls.description and cls.paper
    assert "arxiv.org" in cls.paper and ("arxiv.org" in doc or "Source" in doc)
    assert re.search(r"\b(L|l_i|l_ip|CE|FL)\b.*=", doc), f"{name}: no equation in the docstring"
    assert cls.uses_ce or cls.uses_contrastive
    assert repr(create_loss(name)).startswith(f"{cls.__name__}(")


@pytest.mark.parametrize("name", BUILTINS)
def test_every_loss_returns_its_terms(name):
    loss = create_loss(name)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.randn(6, 3, requires_grad=True)
    z = torch.randn(6, 4, requires_grad=True)
    terms = loss(logits if loss.uses_ce else None, z if loss.uses_contrastive else None, labels)
    assert isinstance(terms, LossTerms) and terms.total.ndim == 0
    assert (terms.ce is not None) == loss.uses_ce
    assert (terms.contrastive is not None) == loss.uses_contrastive
    terms.total.backward()
    if loss.uses_contrastive:
        with pytest.raises(ValueError, match="needs embeddings z"):
            loss(logits, None, labels)
        with pytest.raises(ValueError, match="z must be"):
            loss(logits, z[:5], labels)
    if loss.uses_ce:
        with pytest.raises(ValueError, match="needs logits"):
            loss(None, z, labels)
        with pytest.raises(ValueError, match="logits must be"):
            loss(logits[:4], z, labels)
    with pytest.raises(ValueError, match="integer class labels"):
        loss(logits, z, labels.float())


def _params_of(name):
    return set(DEFAULTS[name])


BAD = [
    ("temperature", 0, "--temperature 0 must be a positive number"),
    ("temperature", -0.5, "--temperature -0.5 must be a positive number"),
    ("temperature", math.nan, "--temperature nan must be a positive number"),
    ("temperature", True, "--temperature True must be a positive number"),
    ("lam", 1.5, r"--lam 1.5 is outside \[0, 1\]"),
    ("lam", -0.1, r"--lam -0.1 is outside \[0, 1\]"),
    ("beta", -1.0, "--beta -1.0 must be a number >= 0"),
    ("beta", math.inf, "--beta inf must be a number >= 0"),
    ("label_smoothing", 1.0, r"label_smoothing=1.0 must be in \[0, 1\)"),
    ("hard_negatives", "yes", "hard_negatives='yes' must be True or False"),
    ("detach_weights", 1, "detach_weights=1 must be True or False"),
]


@pytest.mark.parametrize("name", BUILTINS)
def test_bad_parameters_raise_one_line_config_errors(name):
    checked = 0
    for param, value, message in BAD:
        if param not in _params_of(name):
            continue
        with pytest.raises(ConfigError, match=message) as err:
            create_loss(name, **{param: value})
        assert "\n" not in str(err.value)
        checked += 1
    assert checked >= 1
    accepted = ", ".join(DEFAULTS[name])
    with pytest.raises(ConfigError, match=re.escape(f"loss {name!r} has no parameter 'gamma'; its parameters: {accepted}")):
        create_loss(name, gamma=2.0)
    assert create_loss(name, gamma=None).params == DEFAULTS[name]  # None keeps the defaults


def test_issue_example_message():
    with pytest.raises(ConfigError, match=r"^loss 'clce' has no parameter 'beta'; its parameters: lam, temperature$"):
        create_loss("clce", beta=1.0)


def test_unknown_loss_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'hscl' \(--loss\); did you mean: h-scl"):
        create_loss("hscl")


PLUGIN = '''
import torch
from fewshot_bench.train.losses import ContrastiveLoss, lacln_loss

class Spread(ContrastiveLoss):
    """Uniformity, Wang & Isola 2020: L = log mean_{i != j} exp(-t ||z_i - z_j||^2)."""
    name = "spread"
    description = "uniformity"
    paper = "Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242"

    def __init__(self, t: float = 2.0):
        self.t = t

    def term(self, z, labels):
        z = torch.nn.functional.normalize(z, dim=1)
        d2 = torch.cdist(z, z).pow(2)
        off = ~torch.eye(len(z), dtype=torch.bool)
        return torch.log(torch.exp(-self.t * d2[off]).mean())

class NoTerm(ContrastiveLoss):
    name = "noterm"

class NotALoss:
    pass
'''


def test_load_loss_from_file(tmp_path):
    path = tmp_path / "my_losses.py"
    path.write_text(PLUGIN)
    loss = create_loss(f"{path}:Spread", t=1.0)
    assert loss.params == {"t": 1.0} and loss.uses_contrastive and not loss.uses_ce
    terms = loss(None, torch.randn(6, 3), torch.arange(6))
    assert terms.total.ndim == 0 and terms.ce is None
    assert get_loss_class(f"{path}:Spread") is type(loss)  # imported once
    assert "spread" not in LOSS_REGISTRY  # loading from a file does not register
    with pytest.raises(ConfigError, match=r"--loss .*: file .*missing\.py does not exist"):
        create_loss(f"{tmp_path / 'missing.py'}:Spread")
    with pytest.raises(UnknownNameError, match="defines no class 'Sprad'; did you mean: Spread"):
        create_loss(f"{path}:Sprad")
    with pytest.raises(ConfigError, match="NotALoss in .* is not a TrainingLoss subclass"):
        create_loss(f"{path}:NotALoss")
    with pytest.raises(ConfigError, match="NoTerm in .* does not implement term"):
        create_loss(f"{path}:NoTerm")
    with pytest.raises(ConfigError, match="has no parameter 'beta'; its parameters: t"):
        create_loss(f"{path}:Spread", beta=1.0)


def test_entry_point_losses_load_lazily(monkeypatch, restore_loss_registry):
    class Plugged(losses.SupCon):
        name = "plugged"

    calls = []

    def fake_entry_points(group=None, **kw):
        calls.append(group)
        return [
            FakeEntryPoint("plugged", Plugged),
            FakeEntryPoint("broken", ModuleNotFoundError("no module x")),
            FakeEntryPoint("notaloss", dict),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(losses.base, "_WARNED", set())
    assert isinstance(create_loss("clce"), losses.CLCE) and not calls  # built-ins need no scan
    with pytest.warns(RuntimeWarning) as record:
        assert isinstance(create_loss("plugged", temperature=0.2), Plugged)
    assert sorted(str(w.message) for w in record) == [
        "skipping loss plug-in 'broken': no module x",
        "skipping loss plug-in 'notaloss': entry point 'notaloss' (fake:notaloss) is not a TrainingLoss "
        "subclass; derive it from fewshot_bench.train.losses.TrainingLoss",
    ]
    assert calls[0] == "fewshot_bench.losses" == losses.ENTRY_POINT_GROUP
    names = available_losses()  # warned once only
    assert "plugged" in names and "broken" not in names and "notaloss" not in names


def test_register_loss_validates(restore_loss_registry):
    with pytest.raises(TypeError, match="not a TrainingLoss subclass"):
        losses.register_loss(dict)

    class Nameless(losses.SupCon):
        name = ""

    with pytest.raises(TypeError, match="needs a class attribute `name`"):
        losses.register_loss(Nameless)

    class NoInputs(TrainingLoss):
        name = "noinputs"

        def compute(self, logits, z, labels, z_labels):
            return LossTerms(logits.sum(), None, None)

    with pytest.raises(TypeError, match="sets neither uses_ce nor uses_contrastive"):
        losses.register_loss(NoInputs)

    class Again(losses.SupCon):
        name = "supcon"

    with pytest.raises(ValueError, match="already registered"):
        losses.register_loss(Again)


@pytest.mark.parametrize("module", ["", ".base", ".ce", ".supcon", ".lacln", ".clce", ".hscl", ".mixed", "._pairs"])
def test_all_is_sorted_and_exported(module):
    mod = importlib.import_module("fewshot_bench.train.losses" + module)
    assert mod.__all__ == sorted(mod.__all__)
    assert all(hasattr(mod, n) for n in mod.__all__)


def _python_block(markdown: Path, heading: str) -> str:
    text = markdown.read_text(encoding="utf-8")
    assert heading in text, f"{markdown} has no heading {heading!r}"
    match = re.search(r"```python\n(.*?)```", text.split(heading, 1)[1], re.S)
    assert match, f"no ```python block under {heading!r} in {markdown}"
    return match.group(1)


def test_docs_example_runs(restore_loss_registry, capsys):
    exec(compile(_python_block(ROOT / "docs" / "losses.md", "## How to add a loss"), "losses.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "{'gamma': 2.0} True"
    assert "focal" in available_losses()


def test_docs_table_lists_every_loss_with_its_defaults():
    text = (ROOT / "docs" / "losses.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*$", text, re.M)}
    assert sorted(rows) == BUILTINS
    for name, params in DEFAULTS.items():
        for param, default in params.items():
            assert f"`{param}`" in rows[name] and str(default) in rows[name], (name, param)
