"""Each attack's pieces against the formula written out pixel by pixel (float64): the per-pixel objectives of
CW, Houdini, SegPGD, CosPGD and the targeted attack, which of their terms carry gradient, the label checks,
logit resizing, MIM's momentum, IFGSM's derived schedule, the step rule's cap, the defense draws' seeds and the
arguments an attack is built with."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equi_ext.attacks import ATTACKS, CW, IFGSM, MIM, PGD, CosPGD, Houdini, SegPGD, Targeted
from equi_ext.attacks.base import DefenseDraws, attack_kwargs, check_labels, pixel_cross_entropy, resize_logits

C, IGNORE = 4, 255
torch.manual_seed(0)
#: A fixed per-pixel linear map from pixels to C logits (float64), so an objective's value has a closed form.
WEIGHT = torch.randn(C, 3, dtype=torch.float64) / 100


def logits_of(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("kc,nchw->nkhw", WEIGHT, x - 127.5)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64) * 255
    labels = torch.randint(0, C, (2, 5, 6), generator=g)
    labels[0, 0, :3] = IGNORE
    labels[1, 4, 4] = IGNORE
    return images, labels


def per_pixel(fn, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over labelled pixels of fn(logit vector, label), by an explicit loop."""
    values = [fn(logits[n, :, i, j], int(labels[n, i, j]))
              for n in range(labels.shape[0]) for i in range(labels.shape[1]) for j in range(labels.shape[2])
              if labels[n, i, j] != IGNORE]
    return sum(values) / len(values)


def ce(z: torch.Tensor, y: int) -> float:
    return float(torch.logsumexp(z, 0) - z[y])


def margin(z: torch.Tensor, y: int) -> float:
    return float(max(z[k] for k in range(C) if k != y) - z[y])


@pytest.mark.parametrize("step", [0, 3, 9])
def test_objectives_are_their_formulas_over_labelled_pixels(step):
    images, labels = batch()
    z = logits_of(images)
    common = dict(logits_fn=logits_of, steps=10, ignore_index=IGNORE)
    expected = {
        CW(kappa=0.5, **common): per_pixel(lambda v, y: min(margin(v, y), 0.5), z, labels),
        Houdini(**common): per_pixel(lambda v, y: 0.5 * (1 + math.erf(margin(v, y) / math.sqrt(2))), z, labels),
        SegPGD(**common): per_pixel(lambda v, y: ce(v, y) * ((1 - step / 20) if int(v.argmax()) == y else step / 20),
                                    z, labels),
        CosPGD(**common): per_pixel(lambda v, y: ce(v, y) * float(v.softmax(0)[y] / v.softmax(0).norm()), z, labels),
        Targeted(**common): -per_pixel(ce, z, labels),
        PGD(**common): per_pixel(ce, z, labels),
    }
    for attack, value in expected.items():
        assert float(attack.objective(images, labels, step)) == pytest.approx(value, rel=1e-9), type(attack).__name__


def test_segpgd_and_cospgd_weights_carry_no_gradient():
    """SegPGD's split and CosPGD's cosine weight the cross-entropy as constants: the gradient is that of the
    weighted cross-entropy with the weights held fixed."""
    images, labels = batch(2)
    valid = labels != IGNORE
    safe = torch.where(valid, labels, 0)
    for attack in (SegPGD(logits_fn=logits_of, steps=4), CosPGD(logits_fn=logits_of, steps=4)):
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack.objective(x, labels, 1), x)
        with torch.no_grad():
            z = logits_of(images)
            if isinstance(attack, SegPGD):
                right = (z.argmax(1) == safe).double()
                weight = (1 - 1 / 8) * right + (1 / 8) * (1 - right)
            else:
                weight = (z.softmax(1).gather(1, safe[:, None])[:, 0]) / z.softmax(1).norm(dim=1)
        y = images.clone().requires_grad_(True)
        loss = (weight * F.cross_entropy(logits_of(y), safe, reduction="none") * valid).sum() / valid.sum()
        (reference,) = torch.autograd.grad(loss, y)
        torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)


def test_the_task_loss_is_the_loss_function_or_the_labelled_pixels_cross_entropy():
    images, labels = batch(3)
    seen = []
    loss_fn = lambda x, t: seen.append((x, t)) or x.mean()  # noqa: E731
    assert PGD(loss_fn=loss_fn).task_loss(images, labels) == images.mean() and seen[0][0] is images
    assert seen[0][1] is labels
    assert Targeted(loss_fn=loss_fn).objective(images, labels, 0) == -images.mean()
    ignore_7 = labels.clone()
    ignore_7[labels == IGNORE] = 7
    z = logits_of(images)
    assert float(PGD(logits_fn=logits_of, ignore_index=7).task_loss(images, ignore_7)) == pytest.approx(
        per_pixel(ce, z, labels), rel=1e-9)


def test_logits_are_resized_bilinearly_to_the_labels():
    logits = torch.arange(2 * C * 3 * 4, dtype=torch.float64).view(2, C, 3, 4)
    labels = torch.zeros(2, 6, 8, dtype=torch.long)
    expected = F.interpolate(logits, size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_logits(logits, labels), expected)
    assert not torch.allclose(expected, F.interpolate(logits, size=(6, 8), mode="bilinear", align_corners=True))
    assert not torch.allclose(expected, F.interpolate(logits, size=(6, 8), mode="nearest"))
    assert resize_logits(logits, torch.zeros(2, 3, 4, dtype=torch.long)) is logits
    # cross-entropy on the resized logits, ignored pixels left out, any reduction
    labels[0, 0] = IGNORE
    labels[1, 2, 3] = 2
    full = F.cross_entropy(expected, labels, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(pixel_cross_entropy(logits, labels, IGNORE, reduction="none"), full)
    torch.testing.assert_close(pixel_cross_entropy(logits, labels, IGNORE), full[labels != IGNORE].mean())


def test_labels_outside_the_classes_name_the_first_image_and_five_values():
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = IGNORE
    labels[0, 0, 1] = C - 1  # the last class is fine
    check_labels(labels, C, IGNORE)
    labels[1, 0, :] = torch.tensor([C, -1, 9, 10])
    labels[1, 1, :3] = torch.tensor([11, 12, 13])
    labels[2, 0, 0] = 50
    with pytest.raises(ValueError, match=r"^targets of image 1 hold labels \[-1, 4, 9, 10, 11\] outside \[0, 4\) "
                                         r"\(the model's classes\) that are not ignore_index 255$"):
        check_labels(labels, C, IGNORE)
    labels[labels == IGNORE] = 0
    labels[1] = 0
    labels[2, 3, 3] = 7
    for attack, named in ((SegPGD(logits_fn=logits_of), "7, 50"), (PGD(logits_fn=logits_of, ignore_index=7), "50")):
        with pytest.raises(ValueError, match=rf"targets of image 2 hold labels \[{named}\] .* ignore_index "
                                             rf"{attack.ignore_index}$"):
            attack.objective(torch.zeros(3, 3, 4, 4, dtype=torch.float64), labels, 0)


def test_mim_accumulates_l1_normalised_gradients():
    attack = MIM(logits_fn=logits_of, decay=0.5)
    g1 = torch.tensor([1.0, -3.0, 0.5, 0.0]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    g1[1] *= 10
    g2 = -torch.ones_like(g1)
    state: dict = {}
    first = attack.direction(g1, state)
    n1 = g1 / g1.abs().flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(state["momentum"], n1)
    torch.testing.assert_close(first, n1.sign())
    second = attack.direction(g2, state)
    torch.testing.assert_close(state["momentum"], 0.5 * n1 + g2)
    torch.testing.assert_close(second, (0.5 * n1 + g2).sign())
    l2 = MIM(logits_fn=logits_of, decay=1.0, norm="l2", eps=8)
    state = {}
    out = l2.direction(g1, state)
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.ones(2))


@pytest.mark.parametrize(("eps", "pixel_range", "steps"), [(4, None, 5), (20, None, 24), (1e9, None, 259),
                                                          (1e9, (10, 20), 13), (0.5, (0, 1), 1), (2.0, (0, 1), 2)])
def test_ifgsm_derives_its_steps_from_the_budget_within_the_range(eps, pixel_range, steps):
    kwargs = {} if pixel_range is None else {"pixel_range": pixel_range}
    attack = IFGSM(logits_fn=logits_of, eps=eps, **kwargs)
    assert attack.steps == steps and attack.step_size == 1.0 and not attack.random_start
    given = IFGSM(logits_fn=logits_of, eps=eps, steps=3, step_size=0.25, **kwargs)
    assert given.steps == 3 and given.step_size == 0.25


def test_the_step_rule_caps_at_a_share_of_the_range_whatever_its_start():
    assert PGD(logits_fn=logits_of, eps=255).step_scale() == pytest.approx(8.0)
    assert PGD(logits_fn=logits_of, eps=255, pixel_range=(100, 200)).step_scale() == pytest.approx(800 / 255)
    assert PGD(logits_fn=logits_of, eps=2).step_scale() == 2
    assert PGD(logits_fn=logits_of, eps=255).step_scale(3.0) == 3.0


def test_defense_draws_put_the_deployed_defense_first_only_when_asked():
    seen = []

    def defense(x, seed):
        seen.append(seed)
        return x + (0 if seed is None else seed)

    x = torch.zeros(1, 3, 2, 2)
    assert [float(v.max()) for v in DefenseDraws(defense, 3, deployed_first=True)(x)] == [0, 1, 2]
    draws = DefenseDraws(defense, 2)
    draws(x)
    draws(x)
    assert seen[3:] == [0, 1, 2, 3]


def test_an_attack_is_built_with_its_settings_and_only_the_views_it_needs():
    loss_fn, logits_fn, feature_fn, pre = object(), object(), object(), object()
    views = dict(loss_fn=loss_fn, logits_fn=logits_fn, feature_fn=feature_fn, preprocessor=pre)
    pgd = attack_kwargs(PGD, {"type": "pgd", "eps": 2}, transforms=["hflip"], ignore_index=9, **views)
    assert pgd == dict(eps=2, loss_fn=loss_fn, logits_fn=logits_fn, ignore_index=9)
    adaptive = attack_kwargs(ATTACKS.get("adaptive"), {"lambda_e": 3}, transforms=["hflip"], **views)
    assert adaptive == dict(lambda_e=3, loss_fn=loss_fn, logits_fn=logits_fn, feature_fn=feature_fn,
                            transforms=["hflip"])
    own = attack_kwargs(ATTACKS.get("adaptive"), {"transforms": ["vflip"]}, transforms=["hflip"], **views)
    assert own["transforms"] == ["vflip"]
    bpda = attack_kwargs(ATTACKS.get("bpda"), {"attack": "sea"}, **views)
    assert bpda["defense"] is pre and "feature_fn" not in bpda
    # an attack whose needs depend on its settings: BPDA around the adaptive attack needs features too
    inner = attack_kwargs(ATTACKS.get("bpda"), {"attack": "adaptive"}, **views)
    assert inner["feature_fn"] is feature_fn and inner["defense"] is pre


class RecordingDefense:
    """A defense that records how it is called and adds its seed (0 for the deployed draw) to the images."""

    differentiable = False

    def __init__(self):
        self.calls = []

    def __call__(self, images, features, **kwargs):
        self.calls.append(kwargs)
        return type("Out", (), {"images": images + (kwargs.get("seed") or 0)})()


def test_the_defense_as_an_attack_sees_it_gets_the_model_the_seeds_and_no_score():
    from equi_ext.attacks import defense_preprocessor

    defense, model = RecordingDefense(), torch.nn.Identity()
    h = defense_preprocessor(defense, logits_of, model=model, image_seeds=[4, 5])
    assert float(h(torch.zeros(1, 3, 2, 2), 3).max()) == 3
    assert defense.calls == [dict(model=model, image_seeds=[4, 5], seed=3, compute_score=False)]
    with pytest.raises(TypeError, match=r"RecordingDefense has no differentiable form \(use bpda\)"):
        defense_preprocessor(defense, logits_of, differentiable=True)


def test_bpda_hands_its_inner_attack_the_frameworks_settings_unless_the_inner_config_sets_them():
    bpda = ATTACKS.get("bpda")
    h = RecordingDefense()
    inner = bpda(defense=h, attack=dict(type="apgd", steps=2), logits_fn=logits_of, ignore_index=9,
                 pixel_range=(0, 1)).attack
    assert inner.ignore_index == 9 and inner.pixel_range == (0.0, 1.0) and inner.draws.deployed_first
    own = bpda(defense=h, attack=dict(type="pgd", ignore_index=3, pixel_range=(0, 2)), logits_fn=logits_of,
               ignore_index=9, pixel_range=(0, 1)).attack
    assert own.ignore_index == 3 and own.pixel_range == (0.0, 2.0) and not own.draws.deployed_first
    adaptive = bpda(defense=h, attack="adaptive", logits_fn=logits_of, feature_fn=logits_of,
                    transforms=["hflip"]).attack
    assert [type(t).__name__ for t in adaptive.transforms] == ["HFlip"]
    assert bpda.needs({"attack": dict(type="segpgd")}) == {"logits", "defense"}
    assert bpda.needs({"attack": dict(type="bpda", attack="adaptive")}) >= {"features", "defense"}
    with pytest.raises(TypeError, match=r"^eot takes samples=; eot_samples is bpda's name for it$"):
        ATTACKS.get("eot")(defense=h, eot_samples=2, logits_fn=logits_of)


def test_bpda_passes_the_image_seeds_to_its_inner_attack():
    images, labels = batch(4)
    images = images.float()
    attack = ATTACKS.get("bpda")(defense=lambda x, seed: x, eps=8, steps=1, logits_fn=lambda x: logits_of(x.double()))
    a = attack(images, labels, image_seeds=[1, 2])
    torch.testing.assert_close(a, attack(images, labels, image_seeds=[1, 2]))
    assert not torch.equal(a, attack(images, labels, image_seeds=[3, 4]))  # the random start follows the seeds


def test_the_adaptive_objective_adds_the_mean_images_equivariance_sum():
    from equi_ext.core.losses import equivariance_terms

    images, labels = batch(5)
    features = lambda x: logits_of(x).relu()  # noqa: E731
    attack = ATTACKS.get("adaptive")(feature_fn=features, logits_fn=logits_of, lambda_e=2.5,
                                     transforms=["hflip", "resize:0.5"])
    terms = equivariance_terms(features, images, attack.transforms, "dense", (0.0, 255.0))
    expected = attack.task_loss(images, labels) + 2.5 * terms.sum(dim=1).mean()
    torch.testing.assert_close(attack.objective(images, labels, 0), expected)
    assert ATTACKS.get("adaptive")(feature_fn=features, logits_fn=logits_of).transforms == \
        ATTACKS.get("adaptive")(feature_fn=features, logits_fn=logits_of, transform_seed=0).transforms


def test_the_unrolled_attack_draws_the_defense_with_the_step_as_seed():
    seeds = []
    attack = ATTACKS.get("unrolled")(defense=lambda x, seed: seeds.append(seed) or x * 1.0, logits_fn=logits_of,
                                     steps=3, eps=4)
    images, labels = batch(6)
    attack(images, labels)
    assert seeds == [0, 1, 2]


def test_defaults_and_the_errors_of_a_bad_construction_or_call():
    attack = PGD(logits_fn=logits_of)
    assert (attack.steps, attack.seed, attack.ignore_index, attack.progress, attack.eps) == (10, 0, 255, False, 4.0)
    assert attack.step_size == pytest.approx(1.0) and attack.random_start is True
    assert IFGSM(logits_fn=logits_of, random_start=1).random_start is True
    with pytest.raises(ValueError, match=r"^MIM needs loss_fn or logits_fn$"):
        MIM()
    with pytest.raises(ValueError, match=r"^SegPGD weights pixels and needs logits_fn\(images\) -> \(N, C, h, w\)$"):
        SegPGD(loss_fn=lambda x, t: x.sum())
    with pytest.raises(ValueError, match=r"^step_size must be >= 0 pixel levels; got -1.0$"):
        PGD(logits_fn=logits_of, step_size=-1.0)
    images, labels = batch(7)
    with pytest.raises(TypeError, match=r"^targets must be a label tensor \(N, H, W\); got list$"):
        attack(images, [labels])
    with pytest.raises(ValueError, match=r"^targets must have shape \(N, H, W\) = \(2, 5, 6\); got \(2, 5, 6, 1\)$"):
        attack(images, labels[..., None])
    with pytest.raises(TypeError, match=r"^targets must be an integer label map; got dtype torch.float32$"):
        attack(images, labels.float())
    seen = []
    PGD(loss_fn=lambda x, t: seen.append(t) or x.sum(), steps=1)(images, ["instances", "of two images"])
    assert seen == [["instances", "of two images"]]  # e.g. Detectron2 instances, passed on to the loss
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"^attacks need input gradients; they cannot run "
                                                                 r"inside torch.inference_mode\(\)$"):
        attack(images, labels)


def test_every_nonzero_budget_moves_the_images_and_zero_returns_a_copy():
    images, labels = batch(8)
    for eps in (1.0, 2.0, 3.0):
        adv = PGD(logits_fn=logits_of, eps=eps, steps=2, step_size=eps)(images, labels)
        assert (adv - images).abs().max() == pytest.approx(eps)
    same = PGD(logits_fn=logits_of, eps=0)(images, labels)
    assert torch.equal(same, images) and same is not images


def test_l2_steps_are_unit_directions_and_the_projection_scales_to_the_ball():
    images, labels = batch(9)
    attack = PGD(logits_fn=logits_of, eps=50.0, norm="l2", steps=1, step_size=20.0, random_start=False)
    grad = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    grad[1] *= 1000
    torch.testing.assert_close(attack.direction(grad, {}).flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64))
    inside = images.clamp(60, 190)  # room for the steps inside the pixel range
    far = inside + 100 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    near = inside + 10 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close((attack.project(far, inside) - inside).flatten(1).norm(dim=1),
                               torch.full((2,), 50.0, dtype=torch.float64))
    torch.testing.assert_close(attack.project(near, inside), near)
    moved = attack(inside, labels) - inside
    torch.testing.assert_close(moved.flatten(1).norm(dim=1), torch.full((2,), 20.0, dtype=torch.float64))


def test_the_documented_defaults_of_each_attack():
    import inspect

    from equi_ext.attacks import EOT, Adaptive

    assert MIM(logits_fn=logits_of).decay == 1.0 and CW(logits_fn=logits_of).kappa == 0.0
    assert IFGSM(logits_fn=logits_of).eps == 4.0
    assert Adaptive(feature_fn=logits_of, logits_fn=logits_of).lambda_e == 1.0
    assert EOT(defense=lambda x, seed: x, logits_fn=logits_of).attack.draws.samples == 4
    assert inspect.signature(pixel_cross_entropy).parameters["ignore_index"].default == 255
    assert inspect.signature(Adaptive).parameters["transform_seed"].default == 0


def test_edge_cases_of_the_pixel_weights_and_the_checks():
    from equi_ext.attacks import Adaptive
    from equi_ext.attacks.base import check_preprocessor
    from equi_ext.attacks.pixelwise import _masked_mean

    # one labelled pixel: its value, not half of it
    assert float(_masked_mean(torch.tensor([[3.0, 5.0]]), torch.tensor([[True, False]]))) == 3.0
    # CosPGD on a batch without the last class: the one-hot still spans every class of the logits
    images, labels = batch(10)
    labels = labels.clamp(max=1)
    z = logits_of(images)
    cos = per_pixel(lambda v, y: ce(v, y) * float(v.softmax(0)[y] / v.softmax(0).norm()), z, labels)
    assert float(CosPGD(logits_fn=logits_of).objective(images, labels, 0)) == pytest.approx(cos, rel=1e-9)
    # labels are checked against the classes (dim 1), not the height (here 5 > 4 classes)
    bad = labels.clone()
    bad[0, 2, 2] = C
    for attack in (SegPGD(logits_fn=logits_of), PGD(logits_fn=logits_of)):
        with pytest.raises(ValueError, match=r"labels \[4\] outside \[0, 4\)"):
            attack.objective(images, bad, 0)
    # a loss function's targets may have any shape per image, but a batch of (N, H, W, 1) maps is refused
    with pytest.raises(ValueError, match=r"targets must have shape \(N, H, W\)"):
        PGD(loss_fn=lambda x, t: x.sum())(images, labels[..., None])
    with pytest.raises(TypeError, match=r"^defense must be a callable preprocessor h\(images, seed\); got int$"):
        check_preprocessor(3)
    with pytest.raises(TypeError, match=r"^feature_fn must be callable; got str$"):
        Adaptive(feature_fn="backbone", logits_fn=logits_of)


def test_mim_scales_small_gradients_up_and_l2_projection_works_below_one_level():
    attack = MIM(logits_fn=logits_of, decay=1.0)
    small = torch.full((1, 3, 2, 2), 1e-3)
    small[0, 0, 0, 0] = -2e-3
    state: dict = {}
    attack.direction(small, state)
    torch.testing.assert_close(state["momentum"], small / small.abs().mean())
    unit = PGD(logits_fn=logits_of, eps=0.03, norm="l2", pixel_range=(0, 1))
    x = torch.full((1, 3, 4, 4), 0.5)
    delta = torch.zeros_like(x)
    delta[0, 0, 0, 0] = 0.5
    projected = unit.project(x + delta, x) - x
    assert float(projected.flatten(1).norm()) == pytest.approx(0.03)


def test_the_deployed_draw_is_the_defense_without_a_seed():
    seen = []
    draws = DefenseDraws(lambda x, seed: seen.append(seed) or x, 2, deployed_first=True)
    draws(torch.zeros(1, 3, 2, 2))
    draws(torch.zeros(1, 3, 2, 2))
    assert seen == [None, 1, None, 3]


def test_the_adaptive_objective_at_lambda_one_adds_the_equivariance_term():
    from equi_ext.core.losses import equivariance_terms

    images, labels = batch(11)
    features = lambda x: logits_of(x).relu()  # noqa: E731
    attack = ATTACKS.get("adaptive")(feature_fn=features, logits_fn=logits_of, lambda_e=1.0, transforms=["hflip"])
    terms = equivariance_terms(features, images, attack.transforms, "dense", (0.0, 255.0))
    torch.testing.assert_close(attack.objective(images, labels, 0),
                               attack.task_loss(images, labels) + terms.sum(dim=1).mean())


def test_the_adaptive_objective_transforms_within_the_attacks_pixel_range():
    """A colour jitter clips to the pixel range: on [0, 1] images the equivariance term clips at 1, not 255."""
    from equi_ext.core.losses import equivariance_terms
    from equi_ext.core.transforms import ColorJitter

    images, labels = batch(12)
    images = (images / 255).clamp(0.6, 1.0)
    features = lambda x: logits_of(x * 255).relu()  # noqa: E731
    attack = ATTACKS.get("adaptive")(feature_fn=features, logits_fn=lambda x: logits_of(x * 255), lambda_e=1.0,
                                     transforms=[ColorJitter(brightness=1.5)], pixel_range=(0, 1), eps=4 / 255)
    inside = equivariance_terms(features, images, attack.transforms, "dense", (0.0, 1.0))
    outside = equivariance_terms(features, images, attack.transforms, "dense", (0.0, 255.0))
    assert not torch.allclose(inside, outside)
    torch.testing.assert_close(attack.objective(images, labels, 0),
                               attack.task_loss(images, labels) + inside.sum(dim=1).mean())


def test_defaults_seen_through_behaviour():
    """The defaults a signature check cannot see through a wrapper: the ignored label of the pixel loss, the seed
    of the adaptive attack's random transform family, the targeted attack's ignored label and targets."""
    from equi_ext.attacks import Adaptive

    images, labels = batch(13)
    z = logits_of(images)
    assert float(pixel_cross_entropy(z, labels)) == pytest.approx(per_pixel(ce, z, labels), rel=1e-9)
    default = Adaptive(feature_fn=logits_of, logits_fn=logits_of, transforms="paper").transforms
    assert default == Adaptive(feature_fn=logits_of, logits_fn=logits_of, transforms="paper",
                               transform_seed=0).transforms
    assert default != Adaptive(feature_fn=logits_of, logits_fn=logits_of, transforms="paper",
                               transform_seed=1).transforms
    seen = []
    Targeted(loss_fn=lambda x, t: seen.append(t) or x.sum()).objective(images, labels, 0)
    assert seen[0] is labels
    relabelled = torch.where(labels == IGNORE, 7, labels)
    assert float(Targeted(logits_fn=logits_of, ignore_index=7).objective(images, relabelled, 0)) == pytest.approx(
        -per_pixel(ce, z, labels), rel=1e-9)
