import hashlib
import subprocess
import sys

import pytest
import torch

import equi_ext
from equi_ext.attacks import PGD
from equi_ext.core.defense import EquivarianceDefense, InvarianceDefense, sgld_noise_scale
from equi_ext.core.losses import equivariance_terms, invariance_terms
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
    transforms = build_transforms("flip_resize_rotate")
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
    a = EquivarianceDefense(steps=3, optimizer="sgd", transforms_per_step="all", seed=1)(images, f).images
    b = EquivarianceDefense(steps=3, optimizer="sgd", transforms_per_step="all", seed=2)(images, f).images
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
    EquivarianceDefense(transforms="flip_resize", steps=5, eps_v=4, transforms_per_step="all", seed=3)(
        images, counting_features, compute_score=False)
    assert sum(calls) == 5 * 6 * images.shape[0] and len(calls) >= full_calls


def test_subset_schedule_never_repeats_a_transform_within_a_step():
    for k, m, steps in [(5, 2, 9), (5, 3, 7), (7, 4, 11), (3, 2, 6)]:
        defense = EquivarianceDefense(transforms="flip_resize_rotate", steps=steps, transforms_per_step=m)
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

    with pytest.raises(ValueError, match="chunked=True needs dense features; this Custom computes other terms"):
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
                                                            step_size=0.5, transforms_per_step="all"))]:
        out = defense(adv, features, model=toy_task.model)
        assert (out.images - adv).abs().max() <= 4 + 1e-4
        gains[name] = float((equi_ext.equivariance_score(features, out.images) - before).mean())
    assert gains["reference"] > 0.02
    assert gains["fast"] >= 0.5 * gains["reference"], gains  # at a tenth of the reference's feature calls


def test_each_sgld_step_is_the_sign_of_the_normalised_gradient_plus_annealed_noise(toy_task64):
    """Two steps against the update written out (SPEC §1): x ← P(x + η·sign(∇/std(∇) + σ_t·n_t)), n_t drawn
    from each image's own stream (seed, image seed), σ_0 = 1/2, σ_1 = 0; float64, so no sign is a rounding."""
    from equi_ext.core.losses import OBJECTIVES
    from equi_ext.core.seeding import image_generators, normal_like

    f, images = toy_task64.model.features, toy_task64.images[:2]
    transforms = build_transforms(["hflip", "resize:0.5"])
    defense = EquivarianceDefense(transforms=transforms, steps=2, eps_v=3, step_size=2, transforms_per_step="all",
                                  seed=4)
    out = defense(images, f, image_seeds=[10, 11]).images
    gens = image_generators(4, [10, 11], 2)
    x = images.clone()
    for t in range(2):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(OBJECTIVES["equivariance"](f, leaf, transforms, "dense", (0.0, 255.0)).sum(), leaf)
        direction = grad / grad.flatten(1).std(dim=1).view(-1, 1, 1, 1) + (1 - t) / 2 * normal_like(x, gens)
        x = torch.min(torch.max(x + 2 * direction.sign(), images - 3), images + 3).clamp(0, 255)
    torch.testing.assert_close(out, x, atol=1e-9, rtol=0)


def test_random_transforms_are_drawn_from_the_seed_once_or_per_step(toy_task):
    f, images = toy_task.model.features, toy_task.images[:2]
    draws = []

    def run(resample, seed=None, steps=3, score=False, defense_seed=0):
        defense = EquivarianceDefense(transforms=["hflip", Resize((0.6, 0.9))], steps=steps, eps_v=2, seed=defense_seed,
                                      resample=resample, transforms_per_step="all")
        sample = defense.sample_transforms
        defense.sample_transforms = lambda gen: draws.append(sample(gen)) or draws[-1]
        draws.clear()
        defense.score(images, f, seed=seed) if score else defense(images, f, seed=seed, compute_score=False)
        return [[t.scale for t in d if isinstance(t, Resize)][0] for d in draws]

    fixed = run("fixed")
    assert len(fixed) == 1 and 0.6 <= fixed[0] <= 0.9
    per_step = run("per_step")
    assert len(per_step) == 3 and len(set(per_step)) == 3 and per_step[0] == fixed[0]  # step 0 uses the first draw
    assert run("per_step") == per_step  # seeded: the same draws again
    assert run("per_step", seed=5) == run("per_step", defense_seed=5) != per_step  # the call's seed overrides
    assert run("fixed", seed=5, score=True) == run("per_step", seed=5)[:1]  # the score draws what a call draws first
    assert run("fixed", score=True) == fixed


def test_transform_subsets_per_step_are_seeded(toy_task):
    f, images = toy_task.model.features, toy_task.images[:2]

    def purify(seed):
        defense = EquivarianceDefense(transforms="flip_resize", steps=4, eps_v=4, transforms_per_step=2,
                                      optimizer="sgd", seed=seed)
        return defense(images, f, image_seeds=[0, 1], compute_score=False).images

    assert torch.equal(purify(3), purify(3))


def test_unrolled_steps_differentiate_the_gradient_itself(toy_task64, monkeypatch):
    """The unrolled defense's input gradient includes the second-order terms (the gradient step's own
    derivative), not only what flows through the projection and the straight-through sign."""
    f, images = toy_task64.model.features, toy_task64.images[:2]
    defense = EquivarianceDefense(steps=2, transforms=["hflip", "resize:0.5"], eps_v=6, step_size=3, transforms_per_step="all")

    def input_gradient():
        leaf = images.clone().requires_grad_(True)
        out = defense(leaf, f, seed=5, differentiable=True).images
        return torch.autograd.grad(toy_task64.logits(out).square().mean(), leaf)[0]

    full = input_gradient()
    original = EquivarianceDefense._terms_and_gradient
    monkeypatch.setattr(EquivarianceDefense, "_terms_and_gradient",
                        lambda self, fn, x, tr, create_graph=False: original(self, fn, x, tr, False))
    first_order = input_gradient()
    assert (full - first_order).norm() > 1e-3 * first_order.norm()


def test_outputs_are_detached_and_no_defense_is_the_identity(toy_task):
    from equi_ext.defenses import NoDefense

    f, images = toy_task.model.features, toy_task.images[:2]
    leaf = images.clone().requires_grad_(True)
    out = EquivarianceDefense(steps=1, transforms=["hflip"], eps_v=2)(leaf, f)
    assert not out.images.requires_grad and out.images.grad_fn is None and leaf.grad is None
    none = NoDefense()(leaf)
    assert torch.equal(none.images, images) and not none.images.requires_grad
    assert none.loss_trace.shape == (0, 2) and none.score is None
    with pytest.raises(ValueError, match=r"values must lie in pixel_range \(0.0, 1.0\); got min 0, max 255"):
        NoDefense(pixel_range=(0.0, 1.0))(images)
    NoDefense(pixel_range=(0.0, 1.0))(images / 255)


def test_the_defense_checks_images_in_its_own_pixel_range_and_names_what_cannot_run(toy_task):
    f, images = toy_task.model.features, toy_task.images[:2]
    unit = EquivarianceDefense(steps=1, transforms=["hflip"], eps_v=2 / 255, step_size=1 / 255, pixel_range=(0.0, 1.0))
    for call in (lambda: unit(images, f), lambda: unit.score(images, f)):
        with pytest.raises(ValueError, match=r"values must lie in pixel_range \(0.0, 1.0\); got min 0, max 255"):
            call()
    defense = EquivarianceDefense(steps=1, transforms=["hflip"], eps_v=2)
    with torch.inference_mode(), pytest.raises(
            RuntimeError, match=r"^the defense needs input gradients; it cannot run inside torch.inference_mode\(\)$"):
        defense(images, f)
    with pytest.raises(ValueError, match=r"^differentiable=True needs images that require grad \(the attack's leaf\)$"):
        defense(images, f, differentiable=True)
    with pytest.raises(ValueError, match="^differentiable=True cannot be chunked: the unrolled graph keeps every copy$"):
        EquivarianceDefense(steps=1, transforms=["hflip"], chunked=True)(images.clone().requires_grad_(True), f,
                                                                          differentiable=True)
    from equi_ext.core.losses import Objective

    with pytest.raises(ValueError, match=r"^chunked=True needs dense features; this Objective computes other terms "
                                         r"\(e.g. per-box mask logits\): use chunked=False$"):
        EquivarianceDefense(steps=1, transforms=["hflip"], chunked=True)(images, Objective())
    assert repr(defense) == ("EquivarianceDefense(K=1, steps=1, eps_v=2.0, step_size=1.0, optimizer='sgld', "
                             "resample='fixed', transforms_per_step=1)")
    assert repr(EquivarianceDefense(transforms="flip_resize", steps=2, transforms_per_step=2, chunked=True)).endswith(
        "resample='fixed', transforms_per_step=2, chunked=True)")


def test_chunked_copies_clip_in_the_defenses_pixel_range(toy_task):
    """Colour jitter clips to the pixel range: the chunked path must use the defense's, not the default."""
    f = lambda x: toy_task.model.features(x * 255)  # noqa: E731
    images = toy_task.images[:2] / 255
    common = dict(steps=2, transforms=["color_jitter:1.8", "hflip"], eps_v=4 / 255, step_size=1 / 255,
                  optimizer="sgd", pixel_range=(0.0, 1.0), transforms_per_step="all")
    plain = EquivarianceDefense(**common)(images, f)
    chunked = EquivarianceDefense(**common, chunked=True)(images, f)
    torch.testing.assert_close(chunked.images, plain.images, atol=1e-6, rtol=0)
    transforms = build_transforms(common["transforms"])
    expected = equivariance_terms(f, plain.images, transforms, "dense", (0.0, 1.0)).mean(dim=1)
    for out in (plain, chunked):
        torch.testing.assert_close(out.score, expected, atol=1e-6, rtol=0)


def test_the_equivariance_score_function_is_the_defenses_score(toy_task):
    f, images = toy_task.model.features, toy_task.images[:2]
    family = ["hflip", Resize((0.6, 0.9))]
    for kwargs in (dict(), dict(seed=3), dict(reduction="flat"), dict(seed=2, reduction="flat")):
        expected = EquivarianceDefense(transforms=family, **kwargs).score(images, f)
        torch.testing.assert_close(equi_ext.equivariance_score(f, images, transforms=family, **kwargs), expected)
    assert not torch.equal(equi_ext.equivariance_score(f, images, transforms=family, seed=3),
                           equi_ext.equivariance_score(f, images, transforms=family))
    assert not torch.equal(equi_ext.equivariance_score(f, images, transforms=family, reduction="flat"),
                           equi_ext.equivariance_score(f, images, transforms=family))
    g = lambda x: toy_task.model.features(x * 255)  # noqa: E731
    jitter = ["color_jitter:1.8", "hflip"]
    torch.testing.assert_close(
        equi_ext.equivariance_score(g, images / 255, transforms=jitter, pixel_range=(0.0, 1.0)),
        EquivarianceDefense(transforms=jitter, pixel_range=(0.0, 1.0)).score(images / 255, g))


def test_settings_reach_the_defense_and_bad_ones_are_named():
    from equi_ext.core.defense import PRESETS, check_transform_sizes

    assert EquivarianceDefense().seed == 0
    assert EquivarianceDefense(resample="per_step").resample == "per_step"
    assert EquivarianceDefense(preset="fast").transforms_per_step == PRESETS["fast"]["transforms_per_step"] == 1
    assert EquivarianceDefense(preset="fast", transforms_per_step=3).transforms_per_step == 3
    assert EquivarianceDefense(transforms_per_step=2).transforms_per_step == 2
    assert EquivarianceDefense(preset="default", transforms_per_step="all").transforms_per_step is None  # every one
    assert EquivarianceDefense(preset="paper").transforms_per_step is None
    for kwargs, message in [
        (dict(step_size=0), "^step_size must be > 0 pixel levels; got 0.0$"),
        (dict(min_size=0), "^min_size must be >= 1; got 0$"),
        (dict(transforms_per_step=0), "^transforms_per_step must be >= 1; got 0$"),
        (dict(transforms_per_step="some"), "^transforms_per_step must be a positive int or 'all'; got 'some'$"),
        (dict(preset="nope"), "^unknown preset 'nope'; valid names: default, fast, mask_rcnn, paper$"),
        (dict(optimizer="adam"), r"^optimizer must be one of \('sgld', 'sgd'\); got 'adam'$"),
        (dict(reduction="x"), r"^reduction must be one of \('dense', 'flat'\); got 'x'$"),
        (dict(resample="x"), r"^resample must be one of \('fixed', 'per_step'\); got 'x'$"),
    ]:
        with pytest.raises(ValueError, match=message):
            EquivarianceDefense(**kwargs)
    resize = build_transforms(["resize:0.5"])
    check_transform_sizes(build_transforms(["hflip"]), (8, 10))  # a side of exactly min_size (default 8) is allowed
    with pytest.raises(ValueError, match="^images of size 5x9 are smaller than min_size=8$"):
        check_transform_sizes(resize, (5, 9), 8)
    with pytest.raises(ValueError, match=r"^images of size 12x9 are too small for Resize\(scale=0.5\): it yields 6x4, "
                                         "below min_size=8 pixels per side; use larger images or other transforms$"):
        check_transform_sizes(resize, (12, 9), 8)
    with pytest.raises(ValueError, match="smaller than min_size=20"):  # the defense's own min_size
        EquivarianceDefense(transforms=["hflip"], min_size=20).score(torch.zeros(1, 3, 16, 16), lambda x: x)


def test_every_transform_is_used_equally_often_when_each_step_uses_a_subset():
    for k_per_step, steps in ((2, 10), (3, 5), (4, 5)):
        defense = EquivarianceDefense(transforms="flip_resize", steps=steps, transforms_per_step=k_per_step)
        schedule = defense._subset_schedule(5, torch.Generator().manual_seed(1))
        assert all(len(set(window)) == k_per_step for window in schedule)
        counts = torch.bincount(torch.tensor(sum(schedule, [])), minlength=5)
        assert counts.max() - counts.min() <= 1, schedule  # whole permutations, cut into windows
    assert EquivarianceDefense(transforms="flip_resize", transforms_per_step=5)._subset_schedule(5, None) is None


def test_a_model_view_with_its_own_terms_gets_the_defenses_settings(toy_task):
    from equi_ext.core.defense import InvarianceDefense
    from equi_ext.core.losses import Objective

    images = toy_task.images[:2] / 255
    calls = []

    class Recording(Objective):
        def terms(self, kind, x, transforms, reduction, pixel_range):
            calls.append((kind, x.shape, [str(t) for t in transforms], reduction, tuple(pixel_range)))
            return toy_task.model.features(x * 255).mean(dim=(1, 2, 3))[:, None].expand(-1, len(transforms))

    for cls in (EquivarianceDefense, InvarianceDefense):
        calls.clear()
        cls(transforms=["hflip", "resize:0.5"], steps=1, eps_v=2 / 255, step_size=1 / 255, reduction="flat",
            pixel_range=(0.0, 1.0)).score(images, Recording())
        assert calls == [(cls.objective, images.shape, ["HFlip()", "Resize(scale=0.5)"], "flat", (0.0, 1.0))]


def test_the_unrolled_step_is_differentiated_as_written(toy_task64):
    """One unrolled SGD step against the chain written out: x₁ = P(x + η·ST(∇/std(∇))), ST = sign forward,
    identity backward, ∇ with its own graph; the input gradient of a loss at x₁ must match (float64)."""
    from equi_ext.core.losses import OBJECTIVES

    f, images = toy_task64.model.features, toy_task64.images[:2]
    transforms = build_transforms(["hflip", "resize:0.5"])
    defense = EquivarianceDefense(transforms=transforms, steps=1, eps_v=3, step_size=2, optimizer="sgd",
                                  transforms_per_step="all")

    def loss_at(x):
        return toy_task64.logits(x).square().mean()

    leaf = images.clone().requires_grad_(True)
    out = defense(leaf, f, differentiable=True)
    assert out.loss_trace.shape == (1, 2) and out.score is None
    (through,) = torch.autograd.grad(loss_at(out.images), leaf)
    ref = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(OBJECTIVES["equivariance"](f, ref, transforms, "dense", (0.0, 255.0)).sum(), ref,
                                  create_graph=True)
    direction = grad / (grad.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-12)
    x1 = ref + 2 * (direction + (direction.sign() - direction).detach())
    x1 = torch.min(torch.max(x1, ref - 3), ref + 3).clamp(0, 255)
    torch.testing.assert_close(out.images, x1, atol=1e-9, rtol=0)
    (expected,) = torch.autograd.grad(loss_at(x1), ref)
    torch.testing.assert_close(through, expected, atol=1e-9, rtol=1e-6)
