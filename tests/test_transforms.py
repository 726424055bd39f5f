"""Eval transforms against torchvision, and the seeded training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from fewshot_bench.errors import ConfigError, DataError, UnknownNameError
from fewshot_bench.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSFORMS,
    EvalTransform,
    get_transform,
    train_augment,
)


def _images(n=3, h=40, w=52, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference(t: EvalTransform) -> v2.Compose:
    ops: list = [v2.ToDtype(torch.float32, scale=True)]
    if t.resize:
        ops.append(v2.Resize(t.resize, antialias=True))
    if t.crop:
        ops.append(v2.CenterCrop(t.size))
    if t.mean is not None:
        ops.append(v2.Normalize(list(t.mean), list(t.std)))
    return v2.Compose(ops)


@pytest.mark.parametrize("name", ["imagenet-84", "imagenet-224"])
@pytest.mark.parametrize("hw", [(100, 120), (130, 90), (96, 96)])
def test_resize_crop_normalise_matches_torchvision(name, hw):
    t = get_transform(name)
    x = _images(2, *hw)
    ours = t(x)
    assert ours.shape == (2, 3, t.size, t.size) and ours.dtype == torch.float32
    chw = torch.from_numpy(x).permute(0, 3, 1, 2)
    ref = torch.stack([_reference(t)(img) for img in chw])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # torchvision's uint8 path rounds after resizing: equal up to that rounding
    ref_u8 = torch.stack(
        [
            v2.Normalize(list(t.mean), list(t.std))(
                v2.ToDtype(torch.float32, scale=True)(v2.CenterCrop(t.size)(v2.Resize(t.resize)(img)))
            )
            for img in chw
        ]
    )
    assert (ours - ref_u8).abs().max() <= 1.01 / 255 / min(t.std)


@pytest.mark.parametrize("name,size", [("metaoptnet-cifar", 32), ("metaoptnet-mini", 84)])
def test_normalise_only_presets(name, size):
    t = get_transform(name)
    x = _images(2, size, size)
    ref = v2.Normalize(list(t.mean), list(t.std))(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(t(x), ref)
    with pytest.raises(DataError, match=rf"expects {size}x{size} images.*resizes"):
        t(_images(1, size + 4, size + 4))


def test_facts_statistics():
    np.testing.assert_allclose(get_transform("metaoptnet-cifar").mean, [0.5074, 0.4867, 0.4411], atol=1e-4)
    np.testing.assert_allclose(get_transform("metaoptnet-mini").std, [0.2772, 0.2678, 0.2845], atol=1e-4)
    assert get_transform("imagenet-84").resize == 96 and get_transform("imagenet-224").resize == 256
    assert (
        get_transform("imagenet-224").mean == IMAGENET_MEAN
        and get_transform("imagenet-224").std == IMAGENET_STD
    )


def test_unit_keeps_size_and_scales():
    x = _images(2, 17, 23)
    out = get_transform("unit")(torch.from_numpy(x))
    torch.testing.assert_close(out, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)


def test_keys_are_stable_and_distinct():
    keys = {TRANSFORMS.get(n).key for n in TRANSFORMS}
    assert len(keys) == len(TRANSFORMS)
    assert (
        get_transform("imagenet-84").key
        == EvalTransform("imagenet-84", 84, 96, True, IMAGENET_MEAN, IMAGENET_STD).key
    )
    assert EvalTransform("x", 84, 96, True).key != EvalTransform("x", 84, 92, True).key


def test_errors():
    with pytest.raises(UnknownNameError, match="imagenet-84"):
        get_transform("imagenet84")
    with pytest.raises(ConfigError, match="both mean and std"):
        EvalTransform("bad", 32, mean=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match=r"uint8 \(B, H, W, 3\)"):
        get_transform("unit")(np.zeros((2, 3, 8, 8), np.float32))


def test_train_augment_deterministic_and_valid():
    x = torch.from_numpy(_images(16, 32, 32))
    a = train_augment(x, torch.Generator().manual_seed(7), pad=4, jitter=0.4)
    b = train_augment(x.numpy(), torch.Generator().manual_seed(7), pad=4, jitter=0.4)
    c = train_augment(x, torch.Generator().manual_seed(8), pad=4, jitter=0.4)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_augment_crop_and_flip_geometry():
    x = torch.from_numpy(_images(64, 12, 12))
    g = torch.Generator().manual_seed(0)
    out = train_augment(x, g, pad=2)
    xp = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1)
    n_flipped = 0
    for i in range(len(x)):  # every output is some crop of the padded image, maybe flipped
        ok = False
        for dy in range(5):
            for dx in range(5):
                crop = xp[i, dy : dy + 12, dx : dx + 12]
                if torch.equal(out[i], crop):
                    ok = True
                elif torch.equal(out[i], crop.flip(1)):
                    ok, n_flipped = True, n_flipped + 1
        assert ok
    assert 10 < n_flipped < 54
    assert torch.equal(train_augment(x, g, pad=0, flip=False), x)


def test_train_augment_jitter_matches_torchvision_ops():
    import torchvision.transforms.v2.functional as TF

    x = torch.from_numpy(_images(4, 16, 16))
    out = train_augment(x, torch.Generator().manual_seed(3), pad=0, flip=False, jitter=0.4)
    g = torch.Generator().manual_seed(3)  # replay the draws: offsets, then jitter factors
    torch.randint(0, 1, (4, 2), generator=g)
    f = 1 + (torch.rand(4, 3, generator=g) * 2 - 1) * 0.4
    for i in range(4):
        y = x[i].permute(2, 0, 1).float() / 255
        y = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(y, f[i, 0].item()), f[i, 1].item()), f[i, 2].item()
        )
        assert torch.equal(out[i], (y * 255).round().to(torch.uint8).permute(1, 2, 0))
