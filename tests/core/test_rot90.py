"""Rot90: exact quarter turns (the rotation-prediction baseline's views), boxes and ROI maps included."""

import pytest
import torch

from equi_ext.core.transforms import Rot90, build_transforms, parse_transform


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_inverse_of_apply_is_exact_identity_on_non_square_maps(k):
    maps = torch.randn(2, 5, 12, 7)
    t = Rot90(k)
    moved = t.apply(maps)
    assert moved.shape[-2:] == t.output_size((12, 7)) == ((7, 12) if k % 2 else (12, 7))
    assert torch.equal(t.inverse(moved, (12, 7)), maps)
    assert t.valid_mask((12, 7)).min() == 1  # nothing leaves the view


def test_turns_compose_and_go_counter_clockwise():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    assert Rot90(1).apply(x)[0, 0].tolist() == [[2, 5], [1, 4], [0, 3]]  # top-right corner moves to top-left
    assert torch.equal(Rot90(1).apply(Rot90(2).apply(x)), Rot90(3).apply(x))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_boxes_follow_the_content_and_round_trip(k):
    image = torch.zeros(1, 3, 40, 64)
    image[..., 5:17, 30:52] = 255.0
    box = torch.tensor([[30.0, 5.0, 52.0, 17.0]])
    t = Rot90(k)
    ys, xs = torch.nonzero(t.apply(image)[0, 0] > 127, as_tuple=True)
    observed = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
    torch.testing.assert_close(t.apply_boxes(box, (40, 64)), observed)
    torch.testing.assert_close(t.inverse_boxes(t.apply_boxes(box, (40, 64)), (40, 64)), box)


def test_roi_maps_turn_back():
    rois = torch.randn(3, 2, 7, 7)
    assert torch.equal(Rot90(3).inverse_roi(Rot90(3).apply(rois)), rois)
    assert Rot90(1).roi_aligned


def test_specs_and_bad_turns():
    assert parse_transform("rot90:2") == Rot90(2) and build_transforms(["rot90"])[0].k == 1
    assert Rot90(1).sample(torch.Generator()) == Rot90(1) and not Rot90(1).is_random
    for bad in (1.5, 4, -1, True, (0, 3)):
        with pytest.raises(ValueError, match="k must be a number of quarter turns"):
            Rot90(bad)
