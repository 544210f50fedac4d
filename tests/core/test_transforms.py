import math

import pytest
import torch

from equi_ext.core.transforms import (
    TRANSFORM_SETS,
    ColorJitter,
    HFlip,
    Resize,
    Rotate,
    build_transforms,
    parse_transform,
)

GEOMETRIC = [HFlip(), Resize(0.3), Resize(0.5), Resize(2.0), Rotate(10.0), Rotate(-15.0), Rotate(90.0)]


def smooth_maps(n=2, c=4, h=64, w=48):
    """Low-frequency maps: interpolation round trips are near exact on them."""
    ys = torch.linspace(-1, 1, h)[:, None]
    xs = torch.linspace(-1, 1, w)[None, :]
    if min(h, w) <= 16:  # coarse maps: ramps, which bilinear resampling reproduces exactly inside
        return torch.stack([(1 + k % 3) * ys + (k % 2 - 0.5) * xs + 0 * k for k in range(n * c)]).view(n, c, h, w)
    maps = [torch.sin(ys * (1 + k % 3) * 0.7 + xs) + torch.cos(0.8 * xs - ys * (k % 2)) for k in range(n * c)]
    return torch.stack(maps).view(n, c, h, w)


@pytest.mark.parametrize("transform", GEOMETRIC, ids=repr)
@pytest.mark.parametrize("size", [(128, 96), (16, 12)], ids=["full", "stride8"])
def test_inverse_of_apply_is_identity_on_valid_region(transform, size):
    maps = smooth_maps(h=size[0], w=size[1])
    back = transform.inverse(transform.apply(maps), size)
    mask = transform.valid_mask(size)
    assert back.shape == maps.shape
    assert mask.shape == (1, 1, *size)
    if min(size) <= 16:  # border pixels of coarse maps are clamped by resampling: judge the interior
        mask = mask.clone()
        mask[..., [0, 1, -2, -1], :] = 0
        mask[..., :, [0, 1, -2, -1]] = 0
    err = ((back - maps).abs() * mask).amax()
    # Bilinear/antialiased resampling loses detail (most at 0.3× of a 16×12 map); a wrong
    # inverse (direction, scale or mirror) errs by ~1–2 on these unit-amplitude maps.
    tol = 0.12 if min(size) > 16 else 0.15
    if isinstance(transform, HFlip):
        tol = 0.0
    assert err <= tol + 1e-6
    assert mask.mean() > 0.3


def test_rotation_mask_excludes_zero_filled_region():
    rot = Rotate(30.0)
    ones = torch.ones(1, 1, 64, 64)
    back = rot.inverse(rot.apply(ones), (64, 64))
    mask = rot.valid_mask((64, 64)).bool()
    assert mask.float().mean() < 0.9  # corners leave the view
    # Outside the mask the round trip went through zero fill; inside (away from the rim) it did not.
    assert back[~mask].mean() < 0.5
    eroded = -torch.nn.functional.max_pool2d(-mask.float(), 5, 1, 2) > 0.5
    assert back[eroded].min() > 0.99


def test_flip_and_resize_boxes_round_trip_exactly():
    boxes = torch.tensor([[3.0, 5.0, 20.0, 30.0], [0.0, 0.0, 48.0, 64.0]])
    for t in [HFlip(), Resize(0.5), Resize(1.5), ColorJitter(1.1, 0.9, 1.0)]:
        torch.testing.assert_close(t.inverse_boxes(t.apply_boxes(boxes, (64, 48)), (64, 48)), boxes)


def test_rotation_boxes_round_trip_contains_original():
    boxes = torch.tensor([[20.0, 20.0, 30.0, 40.0]])
    rot = Rotate(12.0)
    back = rot.inverse_boxes(rot.apply_boxes(boxes, (64, 64)), (64, 64))
    assert (back[:, :2] <= boxes[:, :2] + 1e-4).all() and (back[:, 2:] >= boxes[:, 2:] - 1e-4).all()


@pytest.mark.parametrize("transform", [HFlip(), Resize(0.5), Resize(1.5), Rotate(20.0)], ids=repr)
def test_boxes_follow_the_image_content(transform):
    image = torch.zeros(1, 3, 64, 80)
    image[..., 20:40, 10:30] = 255.0
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    moved = transform.apply(image)[0, 0] > 127
    ys, xs = torch.nonzero(moved, as_tuple=True)
    observed = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    assert (transform.apply_boxes(box, (64, 80))[0] - observed).abs().max() <= 2.0


@pytest.mark.parametrize("transform", [Resize(0.5), Resize(1.5), Rotate(10.0), HFlip(), ColorJitter(1.1, 0.9, 1.2)],
                         ids=repr)
def test_apply_is_differentiable(transform):
    x = (torch.rand(1, 3, 6, 5, dtype=torch.float64) * 200 + 20).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: transform.apply(v), (x,), eps=1e-4, atol=1e-3)


def test_jitter_changes_colours_not_geometry():
    x = torch.rand(2, 3, 16, 16) * 255
    jitter = ColorJitter(1.2, 0.8, 0.5)
    y = jitter.apply(x)
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert y.min() >= 0 and y.max() <= 255
    feats = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(jitter.inverse(feats, (4, 4)), feats)


def test_random_families_are_seeded_and_must_be_sampled():
    family = Resize((0.3, 0.5))
    with pytest.raises(ValueError, match="sample"):
        family.apply(torch.zeros(1, 3, 8, 8))
    a = family.sample(torch.Generator().manual_seed(3))
    b = family.sample(torch.Generator().manual_seed(3))
    assert a == b and 0.3 <= a.scale <= 0.5 and not a.is_random


def test_named_sets_and_specs():
    paper = build_transforms("paper")
    assert len(paper) == 8
    assert sum(isinstance(t, Resize) for t in paper) == 4 and sum(isinstance(t, Rotate) for t in paper) == 2
    assert build_transforms(["hflip", "resize:0.5", {"type": "rotate", "degrees": [-5, 5]}])[2].degrees == (-5.0, 5.0)
    assert parse_transform("rotate:7").degrees == 7.0
    assert set(TRANSFORM_SETS) >= {"paper", "flip_resize_rotate"}


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("nope", ValueError, "unknown transform set 'nope'; valid names"),
        (["warp"], KeyError, "unknown transform 'warp'; valid names"),
        (["resize:0"], ValueError, "scale must be in"),
        ([], ValueError, "must not be empty"),
        ([3.0], TypeError, "a transform must be"),
        ([{"type": "rotate", "degrees": 400}], ValueError, "degrees must be in"),
    ],
)
def test_bad_transform_specs(spec, error, match):
    with pytest.raises(error, match=match):
        build_transforms(spec)


def test_rotation_is_rigid_on_non_square_images():
    # A disk must stay a disk (same pixel count) under rotation of a wide image.
    h, w = 40, 120
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disk = (((ys - 20) ** 2 + (xs - 80) ** 2) <= 8**2).float()[None, None] * 255
    rotated = Rotate(30.0).apply(disk.expand(1, 3, h, w))[0, 0]
    assert abs((rotated > 127).sum().item() - (disk > 127).sum().item()) <= 6
    a = math.radians(30)
    cx, cy = (80 - 60) * math.cos(a) - (20 - 20) * math.sin(a) + 60, (80 - 60) * math.sin(a) + 20
    ys_r, xs_r = torch.nonzero(rotated > 127, as_tuple=True)
    assert abs(xs_r.float().mean() + 0.5 - cx) < 1 and abs(ys_r.float().mean() + 0.5 - cy) < 1


def test_colour_jitter_matches_a_hand_computation():
    """Brightness scales and clips, then contrast pulls toward the image's mean over channels and pixels, then
    saturation toward the BT.601 luma, each clipped to the pixel range (found by mutation testing: only the
    geometry of the jitter was tested)."""
    x = torch.tensor([[[[100.0, 200.0]], [[50.0, 0.0]], [[0.0, 250.0]]]])  # (1, 3, 1, 2): two RGB pixels

    def check(jitter, expected, pixel_range=(0.0, 255.0)):
        low, high = pixel_range
        scaled = low + x / 255 * (high - low)
        want = low + torch.tensor(expected).view(1, 3, 1, 2) / 255 * (high - low)
        torch.testing.assert_close(jitter.apply(scaled, pixel_range), want, atol=1e-3 * (high - low) / 255, rtol=0)

    check(ColorJitter(1.0, 1.0, 1.0), [[100, 200], [50, 0], [0, 250]])
    check(ColorJitter(2.0, 1.0, 1.0), [[200, 255], [100, 0], [0, 255]])
    check(ColorJitter(1.0, 0.0, 1.0), [[100, 100], [100, 100], [100, 100]])  # mean of all six values
    check(ColorJitter(1.0, 0.5, 1.0), [[100, 150], [75, 50], [50, 175]])
    luma = [0.299 * 100 + 0.587 * 50, 0.299 * 200 + 0.114 * 250]
    check(ColorJitter(1.0, 1.0, 0.0), [luma, luma, luma])
    check(ColorJitter(1.0, 1.0, 2.0), [[2 * 100 - luma[0], 255], [2 * 50 - luma[0], 0], [0, 255]])
    check(ColorJitter(2.0, 0.5, 1.0), [[167.5, 195], [117.5, 67.5], [67.5, 195]])  # brightness first: mean 135
    check(ColorJitter(1.0, 0.5, 1.0), [[100, 150], [75, 50], [50, 175]], pixel_range=(-1.0, 1.0))


def test_parameters_are_checked_with_inclusive_bounds_and_named():
    Resize(0.05), Resize(8.0), Resize((0.5, 0.5)), Rotate(-180.0), Rotate(180.0), ColorJitter(0.0, 4.0)  # bounds are in
    bad = [
        (lambda: Resize(8.01), r"^scale must be in \[0\.05, 8\.0\]; got 8\.01$"),
        (lambda: Resize(0.049), r"^scale must be in \[0\.05, 8\.0\]; got 0\.049$"),
        (lambda: Resize(True), r"^scale must be in \[0\.05, 8\.0\]; got True$"),
        (lambda: Resize((1.5, 0.5)), r"^scale range must be \(low, high\) with low <= high; got \(1\.5, 0\.5\)$"),
        (lambda: Resize((0.5, 1.0, 1.5)), r"^scale range must be \(low, high\)"),
        (lambda: Resize((0.5, 9.0)), r"^scale must be in \[0\.05, 8\.0\]; got \(0\.5, 9\.0\)$"),
        (lambda: Rotate(-180.5), r"^degrees must be in \[-180\.0, 180\.0\]; got -180\.5$"),
        (lambda: ColorJitter(4.5), r"^brightness must be in \[0\.0, 4\.0\]; got 4\.5$"),
        (lambda: ColorJitter(1.0, 1.0, -0.1), r"^saturation must be in \[0\.0, 4\.0\]; got -0\.1$"),
    ]
    for make, message in bad:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match=r"^transforms must not be empty$"):
        build_transforms([])
    with pytest.raises(ValueError, match=r"^unknown transform set 'nope'; valid names: flip_resize, flip_resize_rotate, paper$"):
        build_transforms("nope")
    with pytest.raises(TypeError, match=r"^transforms must be a set name or a list; got int$"):
        build_transforms(3)


def test_random_families_draw_within_their_range_and_cover_it():
    draws = [Resize((0.5, 0.8)).sample(torch.Generator().manual_seed(s)).scale for s in range(200)]
    assert 0.5 <= min(draws) < 0.52 and 0.78 < max(draws) <= 0.8


@pytest.mark.parametrize("degrees", [30.0, -30.0, 90.0])
def test_rotated_boxes_enclose_the_rotated_content(degrees):
    """apply_boxes of a rotation is the enclosing box of what the image rotation does to the box's pixels,
    clipped to the image (a box at the border stays at 0)."""
    h, w = 64, 96
    image = torch.zeros(1, 3, h, w)
    box = torch.tensor([[10.0, 8.0, 40.0, 24.0]])  # x1, y1, x2, y2 in pixels, off-centre
    image[..., 8:24, 10:40] = 255
    ys, xs = torch.nonzero(Rotate(degrees).apply(image)[0, 0] > 127, as_tuple=True)
    content = torch.tensor([[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]).float()
    torch.testing.assert_close(Rotate(degrees).apply_boxes(box, (h, w)), content, atol=1.5, rtol=0)
    whole = Rotate(degrees).apply_boxes(torch.tensor([[0.0, 0.0, w, h]]), (h, w))  # corners leave the image
    expected = [[16.0, 0.0, 80.0, 64.0]] if degrees == 90 else [[0.0, 0.0, w, h]]  # 90°: 64 wide, clipped in y
    torch.testing.assert_close(whole, torch.tensor(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turn_roi_maps_turn_back(k):
    from equi_ext.core.transforms import Rot90

    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    torch.testing.assert_close(Rot90(k).inverse_roi(torch.rot90(maps, k, dims=(-2, -1))), maps, atol=0, rtol=0)


def test_resize_output_size_and_antialiasing():
    """Each side scales by ``scale``; shrinking low-passes first (an impulse keeps its mass instead of being
    sampled or missed), so an attack's high-frequency pattern cannot alias through a downscale."""
    assert Resize(0.5).apply(torch.zeros(1, 3, 64, 48)).shape == (1, 3, 32, 24)
    assert Resize(1.5).apply(torch.zeros(1, 3, 64, 48)).shape == (1, 3, 96, 72)
    impulse = torch.zeros(1, 3, 16, 16)
    impulse[..., 5, 5] = 255.0
    small = Resize(0.25).apply(impulse)
    assert small.shape == (1, 3, 4, 4)
    # Antialiased: the mass is kept up to the filter's border handling (a few %); plain bilinear sampling keeps
    # a quarter of the impulse at one output pixel, i.e. 4× the mass here (or misses an impulse elsewhere).
    torch.testing.assert_close(small.sum() * 16, impulse.sum(), rtol=0.1, atol=0)


def test_colour_jitter_clips_strong_contrast_and_takes_each_images_own_mean():
    x = torch.tensor([[[[100.0, 200.0]], [[50.0, 0.0]], [[0.0, 250.0]]]])
    # contrast 2 around the mean 100 gives R 100, 300 → 255; G 0, -100 → 0; B -100 → 0, 400 → 255, clipped before
    # saturation 0 takes the luma of the clipped pixels (unclipped ones would give 18.5 and 76.6)
    luma = [0.299 * 100, 0.299 * 255 + 0.114 * 255]
    torch.testing.assert_close(ColorJitter(1.0, 2.0, 0.0).apply(x), torch.tensor([luma] * 3).view(1, 3, 1, 2),
                               atol=1e-3, rtol=0)
    batch = torch.cat([x, 255 - x])
    jitter = ColorJitter(1.2, 0.7, 1.3)
    torch.testing.assert_close(jitter.apply(batch), torch.cat([jitter.apply(x), jitter.apply(255 - x)]), atol=1e-4, rtol=0)
