import pytest
import torch

from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.scores import output_variance_score
from equi_ext.defenses import DEFENSES, DetectThenDefend, RandomNoiseDefense, build_defense


def smooth_images(n=3, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    return torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 255)


def test_registry_names():
    assert {"none", "equi", "invariance", "random", "detect_then_defend"} <= set(DEFENSES.names())


def test_random_noise_stays_in_budget_and_is_seeded():
    images = smooth_images()
    out = RandomNoiseDefense(eps_v=6, seed=1)(images, image_seeds=[0, 1, 2]).images
    assert 0 < (out - images).abs().max() <= 6 and out.min() >= 0 and out.max() <= 255
    again = build_defense(dict(type="random", eps_v=6, seed=1))(images, image_seeds=[0, 1, 2]).images
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="eps_v must be > 0"):
        RandomNoiseDefense(eps_v=0)


@pytest.mark.numerics
def test_detect_then_defend_defends_only_flagged_images(toy_task64):
    f = toy_task64.model.features
    images = toy_task64.images[:4]
    none_flagged = DetectThenDefend(threshold=-1.0, defense=dict(type="equi", steps=2))(images, f)
    assert torch.equal(none_flagged.images, images) and torch.isnan(none_flagged.loss_trace).all()
    all_flagged = DetectThenDefend(threshold=1.0, defense=dict(type="equi", steps=2))(images, f)
    reference = EquivarianceDefense(steps=2)(images, f)
    torch.testing.assert_close(all_flagged.images, reference.images)
    scores = EquivarianceDefense(steps=2).score(images, f)
    middle = float(scores.sort().values[1:3].mean())  # flags exactly the two lowest-scoring images
    detector = DetectThenDefend(threshold=middle, defense=dict(type="equi", steps=2))
    mixed = detector(images, f)
    flagged = mixed.flagged
    assert flagged.sum() == 2
    assert torch.equal(mixed.images[~flagged], images[~flagged])
    torch.testing.assert_close(mixed.images[flagged], reference.images[flagged], atol=1e-6, rtol=0)


def test_detect_then_defend_scores_with_its_own_cheaper_transforms(toy_task):
    images = toy_task.images[:3]
    calls = []

    def features(x):
        calls.append(x.shape[0])
        return toy_task.model.features(x)

    detector = DetectThenDefend(threshold=-1.0, defense=dict(type="equi", steps=2), score_transforms=["hflip"])
    out = detector(images, features)
    assert sum(calls) == 2 * images.shape[0]  # x and its flip, one no-grad call each image
    expected = EquivarianceDefense(transforms=["hflip"]).score(images, toy_task.model.features)
    torch.testing.assert_close(out.score, expected)
    torch.testing.assert_close(detector.score(images, toy_task.model.features), expected)
    # Defended images get the detector's score of their purified version, not the inner defense's.
    flag_all = DetectThenDefend(threshold=1.0, defense=dict(type="equi", steps=2), score_transforms=["hflip"])
    defended = flag_all(images, toy_task.model.features)
    torch.testing.assert_close(defended.score, flag_all.scorer.score(defended.images, toy_task.model.features))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(threshold=2.0), ValueError, r"threshold must be an equivariance score in \[-1, 1\]"),
    (dict(threshold=0.5, defense="random"), TypeError, "wraps an equivariance-type defense"),
    (dict(threshold=0.5, defense="nope"), KeyError, "unknown defense 'nope'"),
])
def test_detect_then_defend_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        DetectThenDefend(**kwargs)


def test_output_variance_score_separates_equivariant_from_positional_outputs():
    conv = torch.nn.Conv2d(3, 4, 1)
    images = smooth_images()
    pointwise = output_variance_score(lambda x: conv(x / 255) * 5, images)

    def positional(x):
        ramp = torch.linspace(-5, 5, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([conv(x / 255) * 5, ramp], dim=1)

    assert pointwise.max() < 0.01
    assert output_variance_score(positional, images).min() > 10 * pointwise.max()


def test_detect_then_defend_defends_an_image_whose_score_is_nan(toy_task, monkeypatch):
    """A score that cannot be computed (NaN) is no all-clear: NaN < threshold is False, so before it let the
    image through undefended."""
    images = toy_task.images[:3]
    detector = DetectThenDefend(threshold=-1.0, defense=dict(type="equi", steps=1))  # would flag nothing
    monkeypatch.setattr(detector.scorer, "score", lambda x, f, seed=None: torch.tensor([0.5, float("nan"), 0.5]))
    out = detector(images, toy_task.model.features, compute_score=False)
    assert out.flagged.tolist() == [False, True, False]
    assert torch.equal(out.images[[0, 2]], images[[0, 2]]) and not torch.equal(out.images[1], images[1])
