"""Input protocols and the papers' presets: what each sets, which source wins, and loud contradictions."""

from __future__ import annotations

import pytest

from fewshot_bench.errors import ConfigError, UnknownNameError
from fewshot_bench.protocol import PRESETS, check_arch_agrees, resolve_protocol, transform_from_meta
from fewshot_bench.transforms import EvalTransform, get_transform

MOC_MEAN = (129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255)
MOC_STD = (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255)
MOM_MEAN = (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255)
MOM_STD = (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255)
IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RFS_CIFAR = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
CIFAR10 = ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))

# preset -> arch, pool, {dataset: (size, resize, crop, mean, std)}; numbers retyped from the papers' code
EXPECTED = {
    "rfs-resnet12": ("resnet12", "avg", {"cifar-fs": (32, None, False, *RFS_CIFAR),
                                         "fc100": (32, None, False, *RFS_CIFAR),
                                         "miniimagenet": (84, None, False, MOM_MEAN, MOM_STD),
                                         "tieredimagenet": (84, None, False, MOM_MEAN, MOM_STD)}),
    "rfs-seresnet12": ("seresnet12", "avg", {"cifar-fs": (32, None, False, *RFS_CIFAR),
                                             "miniimagenet": (84, None, False, MOM_MEAN, MOM_STD)}),
    "metaoptnet-resnet12": ("resnet12", "none", {"cifar-fs": (32, None, False, MOC_MEAN, MOC_STD),
                                                 "fc100": (32, None, False, MOC_MEAN, MOC_STD),
                                                 "miniimagenet": (84, None, False, MOM_MEAN, MOM_STD),
                                                 "tieredimagenet": (84, None, False, MOM_MEAN, MOM_STD)}),
    "feat-resnet12": ("resnet12", "avg", {"miniimagenet": (84, 92, True, MOM_MEAN, MOM_STD),
                                          "tieredimagenet": (84, None, False, *CIFAR10)}),
    "s2m2-wrn28": ("wrn28_10", "avg", {"cifar-fs": (32, 36, True, *IMNET),
                                       "miniimagenet": (80, 92, True, *IMNET),
                                       "tieredimagenet": (80, 92, True, *IMNET)}),
    "protonet-conv4": ("conv4", "none", {"miniimagenet": (84, None, False, *IMNET)}),
}


def test_every_preset_is_pinned():
    assert set(PRESETS.list()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_sets_the_papers_protocol(name):
    arch, pool, per_dataset = EXPECTED[name]
    assert PRESETS.get(name).arch == arch
    assert check_arch_agrees(None, preset=name, meta={}) == arch
    for dataset, (size, resize, crop, mean, std) in per_dataset.items():
        p = resolve_protocol(dataset, "unit", preset=name)
        t = p.transform
        assert (t.size, t.resize, t.crop, p.pool, p.source) == (size, resize, crop, pool, f"preset {name}")
        assert t.mean == pytest.approx(mean, abs=1e-12) and t.std == pytest.approx(std, abs=1e-12)


def test_metaoptnet_flattens_and_rfs_pools():
    assert resolve_protocol("miniimagenet", "unit", preset="metaoptnet-resnet12").pool == "none"
    assert resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12").pool == "avg"


def test_preset_without_a_protocol_for_the_dataset_is_refused():
    with pytest.raises(ConfigError, match=r"--preset feat-resnet12 has no protocol for --dataset cifar-fs "
                                          r"\(it covers miniimagenet, tieredimagenet\)"):
        resolve_protocol("cifar-fs", "metaoptnet-cifar", preset="feat-resnet12")


def test_unknown_preset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="rfs-resnet12"):
        resolve_protocol("cifar-fs", "metaoptnet-cifar", preset="rfs-resnet-12")


def test_dataset_default_when_nothing_else_is_known():
    p = resolve_protocol("cifar-fs", "metaoptnet-cifar")
    assert (p.transform.name, p.pool, p.source) == ("metaoptnet-cifar", None, "dataset default")
    p = resolve_protocol("cifar-fs", "metaoptnet-cifar", transform="unit", pool="avg")
    assert (p.transform.name, p.pool, p.source, p.forced) == ("unit", "avg", "flags", False)


def _stored(size=32, pool="avg"):
    t = EvalTransform("finetune-32", size, resize=size, crop=True, mean=MOM_MEAN, std=MOM_STD)
    return t, {"arch": "conv4", "dataset": "miniimagenet", "transform": "finetune-32",
               "protocol": {"transform": t.name, "image_size": t.size, "resize": t.resize, "crop": t.crop,
                            "mean": list(t.mean), "std": list(t.std), "pool": pool, "feature_layer": "final"}}


def test_the_checkpoints_protocol_travels_to_every_dataset():
    t, meta = _stored()
    for dataset in ("miniimagenet", "cifar-fs"):
        p = resolve_protocol(dataset, "metaoptnet-mini", meta=meta)
        assert p.transform.key == t.key and p.pool == "avg" and p.source == "checkpoint"


def test_stored_protocol_round_trips_through_json():
    t, _ = _stored()
    from fewshot_bench.protocol import Protocol

    again = transform_from_meta(Protocol(t, "avg").to_json())
    assert again.key == t.key


def test_checkpoints_without_a_protocol_keep_the_old_rule():
    meta = {"transform": "unit", "dataset": "digits"}
    assert resolve_protocol("digits", "metaoptnet-mini", meta=meta).transform.name == "unit"
    assert resolve_protocol("cifar-fs", "metaoptnet-cifar", meta=meta).transform.name == "metaoptnet-cifar"


def test_a_contradicting_flag_is_refused_unless_forced():
    _, meta = _stored()
    with pytest.raises(ConfigError, match=r"^--transform metaoptnet-mini contradicts the checkpoint, which says "
                                          r"finetune-32; .*--force-protocol"):
        resolve_protocol("miniimagenet", "metaoptnet-mini", meta=meta, transform="metaoptnet-mini")
    with pytest.raises(ConfigError, match=r"^--pool none contradicts the preset rfs-resnet12, which says avg"):
        resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12", pool="none")
    p = resolve_protocol("miniimagenet", "metaoptnet-mini", meta=meta, transform="metaoptnet-mini", force=True)
    assert p.transform.name == "metaoptnet-mini" and p.forced and p.overridden == ("--transform metaoptnet-mini",)
    assert p.to_json()["forced"] is True and "FORCED over --transform metaoptnet-mini" in p.describe()


def test_a_flag_that_agrees_is_not_a_contradiction():
    p = resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12", transform="metaoptnet-mini", pool="avg")
    assert not p.forced and p.transform.key == get_transform("metaoptnet-mini").key


def test_arch_comes_from_preset_or_checkpoint_and_contradictions_fail():
    assert check_arch_agrees(None, preset=None, meta={"arch": "conv4"}) == "conv4"
    assert check_arch_agrees("resnet12", preset="rfs-resnet12", meta={}) == "resnet12"
    with pytest.raises(ConfigError, match=r"^--arch is needed: the checkpoint does not name its architecture"):
        check_arch_agrees(None, preset=None, meta={})
    with pytest.raises(ConfigError, match=r"^--arch resnet12 contradicts the --preset rfs-seresnet12 \(seresnet12\)"):
        check_arch_agrees("resnet12", preset="rfs-seresnet12", meta={})
    with pytest.raises(ConfigError, match=r"^--arch resnet12 contradicts the checkpoint \(conv4\)"):
        check_arch_agrees("resnet12", preset=None, meta={"arch": "conv4"})
    assert check_arch_agrees("resnet12", preset=None, meta={"arch": "conv4"}, force=True) == "resnet12"


def test_bad_pool_flag():
    with pytest.raises(ConfigError, match=r"^--pool 'max' is not one of avg, none"):
        resolve_protocol("cifar-fs", "metaoptnet-cifar", pool="max")


def test_a_size_free_flag_agrees_with_the_size_it_was_pinned_to():
    meta = {"protocol": {"transform": "unit", "image_size": 16, "resize": None, "crop": False, "mean": None,
                         "std": None, "pool": "none", "feature_layer": "final"}}
    p = resolve_protocol("digits", "unit", meta=meta, transform="unit")
    assert not p.forced and p.transform.size == 16
    with pytest.raises(ConfigError, match="contradicts the checkpoint"):
        resolve_protocol("digits", "unit", meta=meta, transform="imagenet-84")


def test_a_preset_must_agree_with_the_checkpoints_own_protocol():
    _, meta = _stored(size=84, pool="none")
    with pytest.raises(ConfigError, match=r"^--preset rfs-resnet12 \(metaoptnet-mini, pool avg\) contradicts the "
                                          r"checkpoint's own protocol \(finetune-32, pool none\)"):
        resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12", meta=meta)
    assert resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12", meta=meta, force=True).pool == "avg"


def test_a_stored_protocol_that_cannot_be_rebuilt_exactly_is_refused():
    t, meta = _stored()
    with pytest.raises(ConfigError, match=r"cannot rebuild exactly"):
        resolve_protocol("miniimagenet", "unit", meta={**meta, "transform_key": "my_callable|custom"})
    assert resolve_protocol("miniimagenet", "unit", meta={**meta, "transform_key": t.key}).transform.key == t.key
    bad = {**meta, "protocol": {**meta["protocol"], "pool": "token"}}
    with pytest.raises(ConfigError, match=r"stored pooling 'token' is not one of avg, none"):
        resolve_protocol("miniimagenet", "unit", meta=bad)


def test_pool_given_as_arch_kw_is_checked_like_the_pool_flag():
    from fewshot_bench.benchmark import plan_model

    plan = plan_model(None, "conv4", ["miniimagenet"], arch_kwargs={"pool": "avg", "hidden": 8})
    assert plan.protocols["miniimagenet"].pool == "avg" and plan.features_kwargs("miniimagenet") == {
        "hidden": 8, "pool": "avg"}
    with pytest.raises(ConfigError, match=r"^--pool avg contradicts the preset protonet-conv4, which says none"):
        plan_model(None, None, ["miniimagenet"], preset="protonet-conv4", arch_kwargs={"pool": "avg"})
    with pytest.raises(ConfigError, match=r"^--pool none and --arch-kw pool=avg disagree"):
        plan_model(None, "conv4", ["miniimagenet"], pool="none", arch_kwargs={"pool": "avg"})


def test_every_forced_override_is_recorded():
    from fewshot_bench.benchmark import plan_model

    _, meta = _stored(size=84, pool="none")
    p = resolve_protocol("miniimagenet", "unit", preset="rfs-resnet12", meta=meta, force=True)
    assert p.forced and p.overridden == ("--preset rfs-resnet12",)
    plan = plan_model(None, "conv4", ["miniimagenet"], preset="protonet-conv4", arch_kwargs={"hidden": 32},
                      force=True)
    assert plan.arch_kwargs == {"hidden": 32} and plan.protocols["miniimagenet"].overridden == ("--arch-kw hidden=32",)
    with pytest.raises(ConfigError, match=r"^--arch-kw hidden=32 contradicts the --preset protonet-conv4, which builds "
                                          r"conv4 with hidden=64"):
        plan_model(None, None, ["miniimagenet"], preset="protonet-conv4", arch_kwargs={"hidden": 32})
    plan = plan_model(None, "resnet12", ["miniimagenet"], preset="protonet-conv4", force=True)
    assert "--arch resnet12" in plan.protocols["miniimagenet"].overridden


def test_a_bad_arch_kw_fails_early_naming_the_flag():
    from fewshot_bench.benchmark import plan_model

    with pytest.raises(ConfigError, match=r"^--arch-kw hiden=32: architecture 'conv4' does not take hiden"):
        plan_model(None, "conv4", ["miniimagenet"], arch_kwargs={"hiden": 32})
