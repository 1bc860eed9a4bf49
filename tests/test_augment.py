"""Augmentations: shapes and dtype kept, each one changes the image when forced, the background stays zero."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fingerprint.model.augment import NO_AUGMENTATION, AugmentConfig, augment_batch

torch.set_num_threads(1)


def _heads(count: int = 4) -> torch.Tensor:
    """Ellipse 'heads' with structure inside and an exactly-zero background."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    inside = (x / 0.7) ** 2 + (y / 0.85) ** 2 < 1
    images = []
    for k in range(count):
        texture = 0.5 + 0.3 * torch.sin(6 * x + k) * torch.cos(5 * y - k)
        images.append(torch.where(inside, texture, torch.zeros(())))
    return torch.stack(images).unsqueeze(1).float()


FORCED = {
    "negative": dict(p_negative=1.0),
    "rotation": dict(rotation_degrees=3.0),
    "shift": dict(p_shift=1.0),
    "bias": dict(p_bias=1.0),
    "patches": dict(p_patches=1.0),
    "elastic": dict(p_elastic=1.0),
}


def test_no_augmentation_is_identity() -> None:
    images = _heads()
    assert torch.allclose(augment_batch(images, NO_AUGMENTATION), images, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FORCED))
def test_each_augmentation_changes_every_image_when_forced(name: str) -> None:
    images = _heads()
    config = replace(NO_AUGMENTATION, **FORCED[name])
    out = augment_batch(images, config, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all()
    changed = (out - images).abs().amax(dim=(1, 2, 3))
    assert bool((changed > 1e-5).all()), f"{name} left an image unchanged: {changed}"


@pytest.mark.parametrize("name", ["negative", "shift", "bias"])
def test_intensity_augmentations_keep_background_zero(name: str) -> None:
    images = _heads()
    out = augment_batch(images, replace(NO_AUGMENTATION, **FORCED[name]), torch.Generator().manual_seed(2))
    background = images == 0
    assert bool((out[background] == 0).all())
    assert bool((out[~background] > 0).all()), "foreground must stay distinguishable from background"


def test_negative_inverts_foreground_range() -> None:
    images = _heads(1)
    out = augment_batch(images, replace(NO_AUGMENTATION, p_negative=1.0))
    fg = images > 0
    assert torch.allclose(out[fg], images[fg].min() + images[fg].max() - images[fg], atol=1e-6)


def test_default_augmentation_is_random_but_seedable_and_keeps_dtype() -> None:
    images = _heads(8).half()
    a = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(5))
    b = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(5))
    c = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(6))
    assert a.dtype == torch.float16 and torch.equal(a, b) and not torch.equal(a, c)


def test_refuses_wrong_shape() -> None:
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(2, 128, 128))


def test_slicer_region_makes_dark_pixels_inside_it_foreground() -> None:
    from fingerprint.model.augment import slicer_region

    images = _heads(2)
    images[:, :, 60:64, 60:64] = 0.0  # dark CSF clipped to zero, inside the head
    region = slicer_region(_heads(2).squeeze(1).numpy())
    out = augment_batch(images, replace(NO_AUGMENTATION, p_negative=1.0), region=region)
    assert bool((out[:, :, 60:64, 60:64] > 0.5).all()), "inside the region, black becomes white"
    assert bool((out[:, :, ~region] == 0).all()), "outside it, the background stays zero"
