import pytest
import torch

import equi_ext
from equi_ext.attacks import (
    ATTACKS,
    BPDA,
    CW,
    EOT,
    IFGSM,
    MIM,
    PGD,
    SEA,
    Adaptive,
    CosPGD,
    Houdini,
    SegPGD,
    Targeted,
    Unrolled,
    build_attack,
    defense_preprocessor,
    sweep_lambda,
)
from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.metrics import mean_iou
from equi_ext.defenses import RandomNoiseDefense

NUM_CLASSES = 3


def miou(task, images, labels):
    return mean_iou(task.predict(images), labels, NUM_CLASSES)


def identity_defense(images, seed):
    return images.clone()


def all_attacks(task, eps=4.0, steps=3):
    common = dict(logits_fn=task.logits, eps=eps, steps=steps)
    return [
        PGD(**common), MIM(**common), IFGSM(logits_fn=task.logits, eps=eps), CW(**common), Houdini(**common),
        SegPGD(**common), CosPGD(**common), Targeted(**common),
        Adaptive(feature_fn=task.model.features, lambda_e=1.0, transforms=["hflip"], **common),
        BPDA(defense=identity_defense, **common), EOT(defense=identity_defense, samples=2, **common),
    ]


def test_registry_lists_every_attack_of_the_spec():
    assert set(ATTACKS.names()) == {"pgd", "mim", "ifgsm", "cw", "houdini", "segpgd", "cospgd", "targeted",
                                    "adaptive", "bpda", "eot", "unrolled", "apgd", "sea"}


@pytest.mark.parametrize("eps", [0.0, 4.0])
def test_every_attack_stays_in_budget_and_range(toy_task, eps):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    for attack in all_attacks(toy_task, eps=eps):
        adv = attack(images, labels)
        assert adv.shape == images.shape, attack
        assert (adv - images).abs().max() <= eps + 1e-4, attack
        assert adv.min() >= 0 and adv.max() <= 255, attack
        if eps == 0:
            assert torch.equal(adv, images), attack


@pytest.mark.numerics
def test_pgd_beats_noise_and_the_unbounded_attack_reaches_zero_accuracy(toy_task):
    images, labels = toy_task.images, toy_task.labels
    clean = miou(toy_task, images, labels)
    g = torch.Generator().manual_seed(0)
    noise = (images + (torch.rand(images.shape, generator=g) * 2 - 1) * 8).clamp(0, 255)
    noisy = miou(toy_task, noise, labels)
    pgd = miou(toy_task, PGD(logits_fn=toy_task.logits, eps=8, steps=10)(images, labels), labels)
    assert clean - pgd > 3 * max(clean - noisy, 1.0)
    # With the whole pixel range an untargeted attack can make every pixel wrong (0.3 % left measured here)
    unbounded = SEA(logits_fn=toy_task.logits, eps=255, steps=20)(images, labels)
    with torch.no_grad():
        assert (toy_task.logits(unbounded).argmax(1) == labels).float().mean() < 0.01


@pytest.mark.numerics
def test_more_steps_are_not_weaker(toy_task):
    images, labels = toy_task.images, toy_task.labels
    results = [miou(toy_task, PGD(logits_fn=toy_task.logits, eps=4, steps=s, step_size=1)(images, labels), labels)
               for s in (2, 5, 10)]
    assert results[0] >= results[1] - 0.5 and results[1] >= results[2] - 0.5


@pytest.mark.numerics
@pytest.mark.parametrize("cls", [MIM, IFGSM, CW, Houdini, SegPGD, CosPGD])
def test_each_attack_hurts(toy_task, cls):
    images, labels = toy_task.images, toy_task.labels
    kwargs = dict(logits_fn=toy_task.logits, eps=8)
    if cls is not IFGSM:
        kwargs["steps"] = 10
    adv = cls(**kwargs)(images, labels)
    assert miou(toy_task, adv, labels) < miou(toy_task, images, labels) - 3


@pytest.mark.numerics
def test_targeted_moves_predictions_towards_target(toy_task):
    images, labels = toy_task.images[:8], toy_task.labels[:8]
    target = torch.full_like(labels, 2)
    before = (toy_task.predict(images) == target).float().mean()
    adv = Targeted(logits_fn=toy_task.logits, eps=16, steps=10)(images, target)
    after = (toy_task.predict(adv) == target).float().mean()
    assert after > before + 0.2


def test_bpda_through_identity_equals_pgd_and_eot_with_one_sample_equals_bpda(toy_task):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    common = dict(logits_fn=toy_task.logits, eps=4, steps=4, seed=3)
    pgd = PGD(**common)(images, labels)
    bpda = BPDA(defense=identity_defense, **common)(images, labels)
    torch.testing.assert_close(bpda, pgd, atol=0, rtol=0)
    defense = defense_preprocessor(EquivarianceDefense(steps=2, transforms=["hflip"]), toy_task.model.features)
    a = BPDA(defense=defense, **common)(images, labels)
    b = EOT(defense=defense, samples=1, **common)(images, labels)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bpda_is_the_attack_on_the_purified_image_with_fresh_draws_around_any_attack(toy_task):
    """Today's ``bpda`` (PGD through the defense: the gradient at h(x_adv) with seed = step, applied to x_adv)
    and ``eot`` (the mean over draws step·n + j) are the wrapper around ``pgd``; around another attack the
    wrapper changes only where the objective is evaluated."""
    from equi_ext.attacks.base import pixel_cross_entropy

    images, labels = toy_task.images[:3], toy_task.labels[:3]
    defense = defense_preprocessor(RandomNoiseDefense(eps_v=8, seed=5), toy_task.model.features)
    common = dict(eps=4, steps=3, seed=3)
    pgd = PGD(logits_fn=toy_task.logits, **common)

    def reference(samples):
        adv = pgd.start_point(images, None)
        for step in range(3):
            grads = []
            for j in range(samples):
                purified = defense(adv, step * samples + j).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(pixel_cross_entropy(toy_task.logits(purified), labels), purified)
                grads.append(grad)
            adv = pgd.project(adv + pgd.step_size * torch.stack(grads).mean(dim=0).sign(), images)
        return adv

    shorthand = BPDA(defense=defense, logits_fn=toy_task.logits, **common)(images, labels)
    torch.testing.assert_close(shorthand, reference(1), atol=0, rtol=0)
    wrapped = BPDA(defense=defense, logits_fn=toy_task.logits, attack=dict(type="pgd", **common))(images, labels)
    assert torch.equal(wrapped, shorthand)
    eot = EOT(defense=defense, logits_fn=toy_task.logits, samples=2, **common)(images, labels)
    torch.testing.assert_close(eot, reference(2), atol=1e-4, rtol=0)  # a mean of two: summation order only
    assert torch.equal(eot, BPDA(defense=defense, logits_fn=toy_task.logits, eot_samples=2,
                                 attack=dict(type="pgd", **common))(images, labels))
    segpgd = SegPGD(logits_fn=toy_task.logits, **common)(images, labels)
    through_identity = BPDA(defense=identity_defense, logits_fn=toy_task.logits,
                            attack=dict(type="segpgd", **common))(images, labels)
    assert torch.equal(through_identity, segpgd)


def test_bpda_refuses_what_it_cannot_wrap(toy_task):
    kwargs = dict(defense=identity_defense, logits_fn=toy_task.logits)
    with pytest.raises(ValueError, match="bpda wraps an attack on the model; 'eot' already runs through the defense"):
        BPDA(attack=dict(type="eot"), **kwargs)
    with pytest.raises(TypeError, match=r"with attack= set, put the inner attack's settings inside it; got \['steps'\]"):
        BPDA(attack="apgd", steps=3, **kwargs)
    with pytest.raises(TypeError, match=r"attack 'apgd' \(APGD\) does not accept 'step_size'"):
        BPDA(attack=dict(type="apgd", step_size=1), **kwargs)
    with pytest.raises(TypeError, match="attack must be an attack name or a dict with a 'type' key"):
        BPDA(attack=dict(steps=3), **kwargs)
    with pytest.raises(ValueError, match="eot_samples must be"):
        BPDA(attack="pgd", eot_samples=0, **kwargs)


def test_seeded_attacks_are_reproducible(toy_task):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    a = PGD(logits_fn=toy_task.logits, seed=1)(images, labels)
    b = PGD(logits_fn=toy_task.logits, seed=1)(images, labels)
    c = PGD(logits_fn=toy_task.logits, seed=2)(images, labels)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.numerics
def test_an_images_attack_does_not_depend_on_its_batch(toy_task64):
    """Per-image random streams, seeded by the given seeds or else by the image's pixels (float64: see the
    ``toy_task64`` fixture)."""
    images, labels = toy_task64.images[:4], toy_task64.labels[:4]
    attack = PGD(logits_fn=toy_task64.logits, seed=1, steps=3)
    alone = attack(images[2:3], labels[2:3])
    assert (alone - images[2:3]).abs().max() > 0
    torch.testing.assert_close(alone, attack(images, labels)[2:3], atol=1e-6, rtol=0)
    seeded = attack(images, labels, image_seeds=[5, 6, 7, 8])
    torch.testing.assert_close(attack(images[2:3], labels[2:3], image_seeds=[7]), seeded[2:3], atol=1e-6, rtol=0)


@pytest.mark.numerics
def test_adaptive_attack_keeps_equivariance_higher_than_pgd(toy_task):
    images, labels = toy_task.images[:8], toy_task.labels[:8]
    f = toy_task.model.features
    common = dict(logits_fn=toy_task.logits, eps=8, steps=10)
    pgd = PGD(**common)(images, labels)
    adaptive = Adaptive(feature_fn=f, lambda_e=20.0, **common)(images, labels)
    assert equi_ext.equivariance_score(f, adaptive).mean() > equi_ext.equivariance_score(f, pgd).mean() + 0.01


def test_lambda_sweep_reports_each_lambda(toy_task):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    results = sweep_lambda(
        [0.0, 10.0],
        lambda lam: Adaptive(feature_fn=toy_task.model.features, lambda_e=lam, logits_fn=toy_task.logits,
                             steps=2),
        lambda attack: miou(toy_task, attack(images, labels), labels),
    )
    assert set(results) == {0.0, 10.0} and all(0 <= v <= 100 for v in results.values())


@pytest.mark.parametrize(
    "kwargs, call, error, match",
    [
        (dict(eps=-1), None, ValueError, "eps must be >= 0"),
        (dict(eps=4 / 255), None, ValueError, r"eps=0.0156.* is in \(0, 1\)"),
        (dict(steps=0), None, ValueError, "steps must be >= 1"),
        (dict(norm="l1"), None, ValueError, "norm must be one of"),
        ({}, "wrong_targets", ValueError, r"targets must have shape \(N, H, W\)"),
        ({}, "float_targets", TypeError, "integer label map"),
        ({}, "bad_images", ValueError, r"shape \(N, 3, H, W\)"),
    ],
)
def test_bad_input_is_named(toy_task, kwargs, call, error, match):
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    with pytest.raises(error, match=match):
        attack = PGD(logits_fn=toy_task.logits, **kwargs)
        if call == "wrong_targets":
            attack(images, labels[:, :10])
        elif call == "float_targets":
            attack(images, labels.float())
        elif call == "bad_images":
            attack(images[0], labels)


def test_unknown_attack_name_and_missing_logits():
    with pytest.raises(KeyError, match="unknown attack 'fgsm'; valid names: adaptive"):
        build_attack("fgsm")
    with pytest.raises(ValueError, match="needs logits_fn"):
        CosPGD(loss_fn=lambda x, t: x.sum())


def test_unit_range_budget(toy_task):
    images, labels = toy_task.images[:2] / 255, toy_task.labels[:2]
    adv = PGD(logits_fn=lambda x: toy_task.logits(x * 255), eps=4 / 255, pixel_range=(0, 1))(images, labels)
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6


def test_l2_variant_stays_in_ball(toy_task):
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    adv = PGD(logits_fn=toy_task.logits, eps=100.0, norm="l2", steps=3)(images, labels)
    assert (adv - images).flatten(1).norm(dim=1).max() <= 100 + 1e-3


def test_sub_level_step_sizes_are_allowed_for_attacks(toy_task):
    # 2.5·ε/T = 0.5 pixel levels for ε = 4, T = 20: legitimate, unlike an ε below one level.
    attack = PGD(logits_fn=toy_task.logits, eps=4, steps=20)
    assert attack.step_size == 0.5


@pytest.mark.numerics
def test_unrolled_defense_matches_the_plain_one_forward_and_has_a_non_identity_jacobian(toy_task64):
    toy_task = toy_task64  # two paths through sign steps: float64 (see the fixture)
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    defense = EquivarianceDefense(steps=2, transforms=["hflip", "resize:0.5"], eps_v=6, step_size=3)
    plain = defense(images, toy_task.model.features, seed=5).images
    leaf = images.clone().requires_grad_(True)
    unrolled = defense(leaf, toy_task.model.features, seed=5, differentiable=True).images
    torch.testing.assert_close(unrolled.detach(), plain, atol=1e-6, rtol=0)
    loss = torch.nn.functional.cross_entropy(toy_task.logits(unrolled), labels)
    (through,) = torch.autograd.grad(loss, leaf)
    purified = plain.clone().requires_grad_(True)
    (identity,) = torch.autograd.grad(torch.nn.functional.cross_entropy(toy_task.logits(purified), labels), purified)
    # BPDA's identity gradient is not the true one: the unrolled steps contribute second-order terms.
    assert (through - identity).norm() > 1e-3 * identity.norm()
    assert torch.nn.functional.cosine_similarity(through.flatten(), identity.flatten(), dim=0) > 0.2


@pytest.mark.numerics
def test_unrolled_attack_hurts_the_defended_model_and_needs_a_differentiable_defense(toy_task):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    defense = EquivarianceDefense(steps=2, transforms=["hflip"], eps_v=6, step_size=3)
    h = defense_preprocessor(defense, toy_task.model.features, model=toy_task.model, differentiable=True)
    adv = Unrolled(defense=h, logits_fn=toy_task.logits, eps=8, steps=5)(images, labels)
    assert (adv - images).abs().max() <= 8 + 1e-4
    purified = defense_preprocessor(defense, toy_task.model.features)
    assert miou(toy_task, purified(adv, 0), labels) < miou(toy_task, purified(images, 0), labels) - 10
    with pytest.raises(TypeError, match="no differentiable form"):
        defense_preprocessor(RandomNoiseDefense(), toy_task.model.features, differentiable=True)


def test_declared_needs_are_what_each_attack_cannot_be_built_without():
    """``needs(settings)`` is what a framework checks before building an attack: each attack builds with exactly
    its declared views, and fails without any one of them; the ``bpda`` wrapper needs its inner attack's."""
    def loss(x, t):
        return x.sum()

    views = dict(logits=("logits_fn", lambda x: x), features=("feature_fn", lambda x: x),
                 defense=("defense", identity_defense))

    def needing(need):
        return {n for n in ATTACKS.names() if need in ATTACKS.get(n).needs({})}

    assert needing("logits") == {"cw", "cospgd", "houdini", "segpgd", "sea"}
    assert needing("features") == {"adaptive"}
    assert needing("defense") == {"bpda", "eot", "unrolled"}
    configs = [(name, {}) for name in ATTACKS.names()] + [
        ("bpda", dict(attack=dict(type="sea", steps=3))), ("bpda", dict(attack="adaptive")),
        ("eot", dict(attack="apgd", samples=2))]
    assert ATTACKS.get("bpda").needs(configs[-3][1]) == {"defense", "logits"}
    assert ATTACKS.get("bpda").needs(configs[-2][1]) == {"defense", "features"}
    for name, settings in configs:
        cls = ATTACKS.get(name)
        needed = {arg: view for need, (arg, view) in views.items() if need in cls.needs(settings)}
        cls(loss_fn=loss, **settings, **needed)
        for arg in needed:
            with pytest.raises((TypeError, ValueError), match=arg):
                cls(loss_fn=loss, **settings, **{a: v for a, v in needed.items() if a != arg})


def test_registries_refuse_a_key_the_class_would_ignore():
    def loss(x, t):
        return x.sum()

    with pytest.raises(TypeError, match=r"attack 'mim' \(MIM\) does not accept 'decy' \(did you mean 'decay'\?\); "
                                        r"it accepts: decay, eps, "):
        ATTACKS.build(dict(type="mim", decy=0.5), loss_fn=loss)
    assert ATTACKS.build(dict(type="mim", decay=0.5), loss_fn=loss).decay == 0.5
    # What a config may set: the constructor's arguments without the views equi-ext supplies.
    assert "samples" in ATTACKS.settings("eot") and "lambda_e" not in ATTACKS.settings("eot")
    assert not {"loss_fn", "logits_fn", "defense"} & set(ATTACKS.settings("eot"))
    assert not {"loss_fn", "logits_fn", "feature_fn"} & set(ATTACKS.settings("adaptive"))


def test_a_framework_without_dense_logits_refuses_the_attacks_that_need_them():
    from equi_ext.pipeline import EquiPipeline

    for name in ("cw", "houdini", "segpgd", "cospgd", "sea"):
        with pytest.raises(ValueError, match=rf"attack '{name}' \(\w+\) needs dense logits to weight pixels, which "
                                             r"this model does not have; use one of adaptive, apgd, bpda, eot, ifgsm, mim, "
                                             r"pgd, targeted, unrolled"):
            EquiPipeline(None, name, needs_logits=False)
        EquiPipeline(None, name, needs_logits=True)
    with pytest.raises(TypeError, match="'loss_fn' is supplied by equi-ext from the model"):
        EquiPipeline(None, dict(type="pgd", loss_fn="ce"))


def test_step_sizes_and_derived_step_counts_stay_finite(toy_task):
    """An infinite step size gave an all-NaN image; IFGSM derived ~10⁹ steps from ε = 10⁹ (a hang): its steps
    come from ε taken at most as the pixel range, which no pixel can move further than."""
    with pytest.raises(ValueError, match="step_size must be a finite number of pixel levels; got inf"):
        PGD(logits_fn=toy_task.logits, step_size=float("inf"))
    assert IFGSM(logits_fn=toy_task.logits, eps=1e9).steps == IFGSM(logits_fn=toy_task.logits, eps=255).steps == 259
    assert IFGSM(logits_fn=toy_task.logits, eps=4).steps == 5  # min(4 + 4, 1.25·4)
    assert IFGSM(logits_fn=toy_task.logits, eps=0.5, pixel_range=(0, 1)).steps == 1
