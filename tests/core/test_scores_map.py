"""equivariance_map: per-position cosines, masked by each transform's overlap, consistent with the score."""

import math

import pytest
import torch

from equi_ext.core.losses import equivariance_from_maps, transformed_features
from equi_ext.core.scores import equivariance_map
from equi_ext.core.transforms import HFlip, Resize, Rotate


def fixed_map(channels: int = 4, size: int = 6, seed: int = 0):
    """A feature_fn that ignores its input: F(g x) = A, so g⁻¹F(g x) = g⁻¹A is known in closed form."""
    a = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return a, lambda x: a.expand(x.shape[0], -1, -1, -1)


def test_flip_map_is_the_per_position_cosine_with_the_mirrored_position():
    a, feature_fn = fixed_map()
    images = torch.zeros(2, 3, 6, 6)
    base, outputs = transformed_features(feature_fn, images, [HFlip()])
    got = equivariance_map(base, outputs, [HFlip()])
    assert got.shape == (2, 6, 6)
    for y in range(6):
        for x in range(6):
            u, v = a[0, :, y, x], a[0, :, y, 5 - x]
            assert got[1, y, x].item() == pytest.approx((u @ v / (u.norm() * v.norm())).item(), abs=1e-6)


def test_map_averages_transforms_and_its_mean_is_the_score_when_overlaps_are_whole():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16)  # position-dependent: F is not equivariant

    def feature_fn(x):
        with torch.no_grad():
            return conv(x / 255) + torch.nn.functional.interpolate(ramp, size=x.shape[-2:])

    images = torch.rand(2, 3, 16, 16) * 255
    transforms = [HFlip(), Resize(0.5), Resize(1.5)]
    base, outputs = transformed_features(feature_fn, images, transforms)
    got = equivariance_map(base, outputs, transforms)
    singles = torch.stack([equivariance_map(base, [out], [t]) for t, out in zip(transforms, outputs)])
    assert torch.allclose(got, singles.mean(dim=0), atol=1e-6)
    score = equivariance_from_maps(base, outputs, transforms).mean(dim=1)
    assert torch.allclose(got.mean(dim=(1, 2)), score, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1 and got.std() > 0.01  # not constant: positions differ


def test_rotation_map_is_nan_outside_the_overlap_and_its_masked_mean_is_the_term():
    _, feature_fn = fixed_map(size=12)
    rotate = Rotate(30.0)
    base, outputs = transformed_features(feature_fn, torch.zeros(1, 3, 12, 12), [rotate])
    got = equivariance_map(base, outputs, [rotate])[0]
    mask = rotate.valid_mask((12, 12))[0, 0].bool()
    assert not mask.all() and mask.any()
    assert torch.isnan(got[~mask]).all() and not torch.isnan(got[mask]).any()
    term = equivariance_from_maps(base, outputs, [rotate])[0, 0]
    assert got[mask].mean().item() == pytest.approx(term.item(), abs=1e-6)
    # A flip covers the corners the rotation loses: they take the flip's cosine alone.
    both = equivariance_map(base, [outputs[0], transformed_features(feature_fn, torch.zeros(1, 3, 12, 12),
                                                                    [HFlip()])[1][0]], [rotate, HFlip()])[0]
    flip_only = equivariance_map(*transformed_features(feature_fn, torch.zeros(1, 3, 12, 12), [HFlip()]),
                                 [HFlip()])[0]
    assert not math.isnan(both[0, 0].item())
    assert torch.allclose(both[~mask], flip_only[~mask], atol=1e-6)


def test_bad_inputs_are_named():
    a, feature_fn = fixed_map()
    base, outputs = transformed_features(feature_fn, torch.zeros(1, 3, 6, 6), [HFlip()])
    with pytest.raises(ValueError, match="one output per transform"):
        equivariance_map(base, outputs, [HFlip(), HFlip()])
    with pytest.raises(ValueError, match="single-level maps"):
        equivariance_map([a, a], [[a, a]], [HFlip()])
