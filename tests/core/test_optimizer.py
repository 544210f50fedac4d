import hashlib
import subprocess
import sys

import pytest
import torch

import equi_ext
from equi_ext.attacks import PGD
from equi_ext.core.losses import equivariance_terms, invariance_terms
from equi_ext.core.optimizer import EquivarianceDefense, InvarianceDefense, sgld_noise_scale
from equi_ext.core.transforms import HFlip, Resize, Rotate, build_transforms


def smooth_images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    return torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 255)


def state_fingerprint(model):
    h = hashlib.sha256()
    for name, tensor in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    flags = [(n, p.requires_grad, p.grad is None) for n, p in model.named_parameters()]
    modes = [(n, m.training) for n, m in model.named_modules()]
    return h.hexdigest(), flags, modes


def test_pointwise_function_is_equivariant_and_position_dependent_one_is_not():
    conv = torch.nn.Conv2d(3, 8, 1)
    images = smooth_images()
    transforms = [HFlip(), Resize(0.5), Resize(1.5)]
    pointwise = equivariance_terms(lambda x: conv(x / 255), images, transforms)
    assert pointwise.min() > 0.98

    def positional(x):
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([conv(x / 255), 5 * ramp], dim=1)

    assert equivariance_terms(positional, images, transforms).mean() < 0.85
    # The invariance objective cannot see the mirrored position information.
    assert invariance_terms(positional, images, [HFlip()]).min() > 0.99


def test_batched_terms_equal_per_transform_reference(toy_task):
    transforms = build_transforms("pilot")
    images = toy_task.images[:3]
    batched = equivariance_terms(toy_task.model.features, images, transforms)
    reference = torch.cat([equivariance_terms(toy_task.model.features, images, [t]) for t in transforms], dim=1)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_attack_lowers_score_and_defense_restores_it_inside_budget(toy_task):
    images, labels = toy_task.images[:12], toy_task.labels[:12]
    features = toy_task.model.features
    adv = PGD(logits_fn=toy_task.logits, eps=8, steps=10)(images, labels)
    clean_score = equi_ext.equivariance_score(features, images)
    adv_score = equi_ext.equivariance_score(features, adv)
    assert adv_score.mean() < clean_score.mean() - 0.01
    out = equi_ext.defend(features, adv, eps_v=12, steps=10, step_size=3, model=toy_task.model)
    assert (out.images - adv).abs().max() <= 12 + 1e-4
    assert out.images.min() >= 0 and out.images.max() <= 255
    restored = equi_ext.equivariance_score(features, out.images)
    assert restored.mean() > adv_score.mean() + 0.03
    torch.testing.assert_close(out.score, restored)  # the returned score is the score of the output
    assert out.loss_trace.shape == (10, 12)
    assert out.loss_trace[-1].mean() > out.loss_trace[0].mean()


def test_defense_leaves_model_untouched_even_when_feature_fn_raises(toy_task):
    model = toy_task.model
    model.head[0].weight.requires_grad_(False)
    model.stem[1].train()  # a mixed state must come back exactly as it was
    before = state_fingerprint(model)
    try:
        equi_ext.defend(model.features, toy_task.images[:2], steps=2, model=model)
        assert state_fingerprint(model) == before

        calls = []

        def failing(x):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("boom")
            return model.features(x)

        with pytest.raises(RuntimeError, match="boom"):
            equi_ext.defend(failing, toy_task.images[:2], steps=3, model=model)
        assert state_fingerprint(model) == before
    finally:
        model.head[0].weight.requires_grad_(True)
        model.eval()


def test_grad_mode_of_caller_is_kept():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        out = equi_ext.defend(lambda x: conv(x / 255), smooth_images(), steps=2)
        assert not torch.is_grad_enabled()
    assert not out.images.requires_grad


@pytest.mark.numerics
def test_same_seed_same_result_and_batch_independence(toy_task64):
    f = toy_task64.model.features
    images = toy_task64.images[:3]
    defense = EquivarianceDefense(steps=3, seed=7)
    a = defense(images, f, image_seeds=[10, 11, 12]).images
    b = defense(images, f, image_seeds=[10, 11, 12]).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    alone = defense(images[2:], f, image_seeds=[12]).images
    torch.testing.assert_close(alone, a[2:], atol=1e-6, rtol=0)
    other = EquivarianceDefense(steps=3, seed=8)(images, f, image_seeds=[10, 11, 12]).images
    assert not torch.equal(a, other)


def test_sgd_variant_has_no_noise(toy_task):
    f = toy_task.model.features
    images = toy_task.images[:2]
    a = EquivarianceDefense(steps=3, optimizer="sgd", seed=1)(images, f).images
    b = EquivarianceDefense(steps=3, optimizer="sgd", seed=2)(images, f).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sgld_noise_falls_linearly_to_zero_at_the_last_step():
    assert [sgld_noise_scale(t, 4) for t in range(4)] == [0.75, 0.5, 0.25, 0.0]
    assert sgld_noise_scale(0, 1) == 0.0
    with pytest.raises(ValueError, match=r"step t must be in \[0, 3\); got 3"):
        sgld_noise_scale(3, 3)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_with_a_flat_objective_only_the_noisy_steps_move_the_image(steps):
    """F constant: the gradient is exactly 0, so each step moves every pixel by η·sign(σ_t ξ): ±η while σ_t > 0,
    and not at all at the last step (σ_{T−1} = 0). After T steps every pixel has moved by an odd or even
    multiple of η as T − 1 is odd or even, never by more than (T − 1)·η."""
    images = torch.full((2, 3, 16, 16), 128.0)
    out = EquivarianceDefense(steps=steps, eps_v=100, step_size=2, transforms="flip_resize", seed=3)(
        images, lambda x: x[:, :1] * 0 + 1, compute_score=False).images
    moved = (out - images).abs() / 2
    assert torch.equal(moved, moved.round()) and moved.max() <= steps - 1
    assert torch.equal(moved.remainder(2), torch.full_like(moved, (steps - 1) % 2))


def test_invariance_and_per_step_resampling_run(toy_task):
    f = toy_task.model.features
    images = toy_task.images[:2]
    inv = InvarianceDefense(steps=2, eps_v=6)(images, f)
    assert (inv.images - images).abs().max() <= 6 + 1e-4
    paper = EquivarianceDefense(preset="paper", steps=2, resample="per_step", reduction="flat")(images, f)
    assert (paper.images - images).abs().max() <= 6 + 1e-4


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (torch.rand(3, 32, 32) * 255, {}, ValueError, r"shape \(N, 3, H, W\)"),
        (torch.rand(1, 4, 32, 32) * 255, {}, ValueError, r"shape \(N, 3, H, W\)"),
        ((torch.rand(1, 3, 32, 32) * 255).to(torch.uint8), {}, TypeError, "floating-point"),
        (torch.full((1, 3, 32, 32), float("nan")), {}, ValueError, "NaN or inf"),
        (torch.full((1, 3, 32, 32), 300.0), {}, ValueError, "must lie in pixel_range"),
        (torch.rand(1, 3, 12, 12) * 255, {}, ValueError, "too small for Resize"),
        (torch.rand(1, 3, 32, 32) * 255, {"eps_v": 0}, ValueError, "eps_v must be > 0"),
        (torch.rand(1, 3, 32, 32) * 255, {"eps_v": -1}, ValueError, "eps_v must be > 0"),
        (torch.rand(1, 3, 32, 32) * 255, {"eps_v": 4 / 255}, ValueError, r"eps_v=0.0156.* is in \(0, 1\)"),
        (torch.rand(1, 3, 32, 32) * 255, {"transforms": ["shear"]}, KeyError, "unknown transform 'shear'"),
        (torch.rand(1, 3, 32, 32) * 255, {"preset": "turbo"}, ValueError, "unknown preset 'turbo'; valid"),
        (torch.rand(1, 3, 32, 32) * 255, {"steps": 0}, ValueError, "steps must be >= 1"),
        (torch.rand(1, 3, 32, 32) * 255, {"method": "magic"}, KeyError, "unknown defense 'magic'; valid names"),
    ],
)
def test_bad_input_is_named(images, kwargs, error, match):
    conv = torch.nn.Conv2d(3, 4, 1)
    with pytest.raises(error, match=match):
        equi_ext.defend(lambda x: conv(x), images, **kwargs)


def test_unit_range_images_take_unit_budgets():
    conv = torch.nn.Conv2d(3, 4, 1)
    images = smooth_images() / 255
    out = equi_ext.defend(lambda x: conv(x), images, eps_v=6 / 255, step_size=1 / 255, steps=2, pixel_range=(0, 1))
    assert (out.images - images).abs().max() <= 6 / 255 + 1e-6 and out.images.max() <= 1


def test_feature_fn_must_return_dense_maps():
    with pytest.raises(ValueError, match=r"dense \(N, C, h, w\)"):
        equi_ext.equivariance_score(lambda x: x.mean(dim=(2, 3)), smooth_images())


def test_core_imports_no_framework():
    code = (
        "import sys, equi_ext, equi_ext.core, equi_ext.attacks, equi_ext.defenses, equi_ext.data.synthetic\n"
        "bad = [m for m in ('mmseg', 'mmengine', 'mmcv', 'detectron2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rotation_transforms_work_inside_the_defense(toy_task):
    f, images = toy_task.model.features, toy_task.images[:2]
    common = dict(steps=2, eps_v=6, step_size=3, optimizer="sgd")
    out = equi_ext.defend(f, images, transforms=[Rotate(10.0), "hflip"], **common)
    flip_only = equi_ext.defend(f, images, transforms=["hflip"], **common)
    assert 0 < (out.images - images).abs().max() <= 6 + 1e-4
    assert not torch.equal(out.images, flip_only.images)  # the rotation term steered the gradient
    torch.testing.assert_close(out.score, equi_ext.equivariance_score(f, out.images, transforms=[Rotate(10.0), "hflip"]))


def test_transforms_per_step_cover_every_transform_and_cut_per_step_work(toy_task):
    calls = []

    def counting_features(x):
        calls.append(x.shape[0])
        return toy_task.model.features(x)

    images = toy_task.images[:2]
    defense = EquivarianceDefense(transforms="flip_resize", steps=5, eps_v=4, transforms_per_step=2, seed=3)
    schedule = defense._subset_schedule(5, torch.Generator().manual_seed(3))
    assert all(len(step) == 2 for step in schedule)
    assert set(schedule[0] + schedule[1] + schedule[2]) == set(range(5))  # all K within ⌈K/m⌉ steps
    out = defense(images, counting_features, compute_score=False)
    assert (out.images - images).abs().max() <= 4 + 1e-4
    # two transformed copies (plus x) per step instead of five
    assert sum(calls) <= 5 * 3 * images.shape[0]
    full_calls = len(calls)
    calls.clear()
    EquivarianceDefense(transforms="flip_resize", steps=5, eps_v=4, seed=3)(images, counting_features,
                                                                          compute_score=False)
    assert sum(calls) == 5 * 6 * images.shape[0] and len(calls) >= full_calls


def test_subset_schedule_never_repeats_a_transform_within_a_step():
    for k, m, steps in [(5, 2, 9), (5, 3, 7), (7, 4, 11), (3, 2, 6)]:
        defense = EquivarianceDefense(transforms="pilot", steps=steps, transforms_per_step=m)
        for seed in range(20):
            schedule = defense._subset_schedule(k, torch.Generator().manual_seed(seed))
            assert all(len(set(window)) == m for window in schedule), (k, m, seed, schedule)
            first = -(-k // m)
            assert set(sum(schedule[:first], [])) == set(range(k))


@pytest.mark.parametrize("kind", ["equivariance", "invariance"])
def test_chunked_gradient_equals_batched_and_holds_one_copy_at_a_time(toy_task, kind):
    images = toy_task.images[:2]
    batch_sizes = []

    def features(x):
        batch_sizes.append(x.shape[0])
        return toy_task.model.features(x)

    cls = EquivarianceDefense if kind == "equivariance" else InvarianceDefense
    transforms = build_transforms("flip_resize")
    plain, chunked = cls(transforms="flip_resize"), cls(transforms="flip_resize", chunked=True)
    x = images.clone().requires_grad_(True)
    terms, grad = plain._terms_and_gradient(features, x, transforms)
    batch_sizes.clear()
    terms_c, grad_c = chunked._terms_and_gradient(features, x, transforms)
    assert max(batch_sizes) == images.shape[0]  # never two copies in one graph
    assert len(batch_sizes) == len(transforms) + 1  # F(x) once
    torch.testing.assert_close(terms_c, terms, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_c, grad, atol=1e-6, rtol=1e-4)
    assert grad.abs().max() > 0
    batch_sizes.clear()
    score_c = chunked.score(images, features, seed=4)
    assert batch_sizes == [images.shape[0]] * (len(transforms) + 1)  # scoring too: F(x) once, one copy at a time
    torch.testing.assert_close(score_c, plain.score(images, features, seed=4), atol=1e-5, rtol=1e-5)
    # One defense step (σ_0 = 0 when T = 1, so the step is η·sign(g / std g)): the two agree wherever the two
    # normalised gradients have one sign; a pixel may move the other way only where |d| <= |d − d_c|, i.e. where
    # the rounding gap between the two gradients can flip the sign. Comparing images after several sign steps
    # instead would compound such ties into whole-step differences that depend on the CPU's kernels.
    one_step = dict(transforms="flip_resize", steps=1, seed=4)
    a = cls(**one_step)(images, toy_task.model.features, compute_score=False).images
    b = cls(**one_step, chunked=True)(images, toy_task.model.features, compute_score=False).images
    d, d_c = (g / g.flatten(1).std(dim=1).view(-1, 1, 1, 1) for g in (grad, grad_c))
    moved_apart = (a - b).abs() > 0
    assert (d.abs() <= (d - d_c).abs())[moved_apart].all()
    assert (a - images).abs().amax() > 0  # the step moved the images


def test_chunked_refuses_an_objective_with_its_own_terms(toy_task):
    from equi_ext.core.losses import Objective

    class Custom(Objective):
        def terms(self, kind, images, transforms, reduction, pixel_range):
            return equivariance_terms(toy_task.model.features, images, transforms, reduction, pixel_range)

    with pytest.raises(ValueError, match="chunked=True needs a dense feature_fn"):
        EquivarianceDefense(chunked=True, steps=1)(toy_task.images[:1], Custom())
    with pytest.raises(TypeError, match="chunked must be True or False"):
        EquivarianceDefense(chunked="yes")


@pytest.mark.numerics
def test_fast_preset_stays_inside_eps_v_and_raises_the_attacked_score_like_the_reference(toy_task):
    """``fast`` (T 4, one transform per step) against the T = 20 reference of docs/benchmarks/speed.md."""
    images, labels = toy_task.images[:8], toy_task.labels[:8]
    features = toy_task.model.features
    adv = PGD(logits_fn=toy_task.logits, eps=8, steps=10)(images, labels)
    before = equi_ext.equivariance_score(features, adv)
    gains = {}
    for name, defense in [("fast", EquivarianceDefense(preset="fast")),
                          ("reference", EquivarianceDefense(transforms="flip_resize", steps=20, eps_v=4,
                                                            step_size=0.5))]:
        out = defense(adv, features, model=toy_task.model)
        assert (out.images - adv).abs().max() <= 4 + 1e-4
        gains[name] = float((equi_ext.equivariance_score(features, out.images) - before).mean())
    assert gains["reference"] > 0.02
    assert gains["fast"] >= 0.5 * gains["reference"], gains  # at a tenth of the reference's feature calls
