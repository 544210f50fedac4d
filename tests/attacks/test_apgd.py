"""APGD and SEA: the step-size schedule, the dense losses, the two best points, the stages, through a defense."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equi_ext.attacks import APGD, ATTACKS, BPDA, PGD, SEA, defense_preprocessor
from equi_ext.attacks.apgd import (
    checkpoints,
    dense_loss,
    inverse_frequency_weights,
    pixel_accuracy,
    step_to_halve,
)
from equi_ext.core.metrics import mean_iou
from equi_ext.core.optimizer import EquivarianceDefense
from equi_ext.pipeline import EquiPipeline

NUM_CLASSES = 3


def identity_defense(images, seed):
    return images.clone()


def test_checkpoints_follow_the_shrinking_intervals():
    # 22 first, then 19, 16, 13, 10, 7, and never below 6: fractions 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 4, 6, 8, 10]  # ⌊0.03·10⌋ = 0: the interval stays 2
    assert checkpoints(1) == [1]


def test_a_checkpoint_halves_stalled_images_and_those_that_stopped_improving():
    rises = torch.tensor([2.0, 3.0, 3.0, 3.0])
    halved_last = torch.tensor([False, False, True, False])
    best = torch.tensor([1.0, 1.0, 1.0, 2.0])
    best_before = torch.tensor([0.5, 1.0, 1.0, 1.0])
    # interval 4, ρ 0.75: ≤ 3 rises is stalled ... so use 2 / 3 rises against a threshold of 0.75·4 = 3.
    halve = step_to_halve(rises, 4, 0.75, halved_last, best, best_before)
    assert halve.tolist() == [True, True, True, True]
    halve = step_to_halve(torch.tensor([4.0, 4.0, 4.0, 4.0]), 4, 0.75, halved_last, best, best_before)
    # rose every step: halved only where the best loss did not improve and the last check did not halve
    assert halve.tolist() == [False, True, False, False]


def random_problem(seed=0, n=2, c=4, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    targets = torch.randint(0, c, (n, h, w), generator=g)
    targets[:, 0, :2] = 255  # ignored pixels
    return logits, targets


def test_dense_losses_match_their_definitions_per_pixel():
    logits, targets = random_problem()
    valid = targets != 255
    labels = torch.where(valid, targets, 0)
    ce = F.cross_entropy(logits, labels, reduction="none") * valid
    torch.testing.assert_close(dense_loss("ce", logits, targets), ce.flatten(1).mean(1))  # mean over all H·W
    correct = logits.argmax(1) == labels
    torch.testing.assert_close(dense_loss("masked_ce", logits, targets), (ce * correct).flatten(1).mean(1))
    p_y = logits.softmax(1).gather(1, labels[:, None])[:, 0].double()
    # JS(p, onehot_y) in closed form: ½[(1 − p_y)·log 2 + p_y·log(2p_y / (1 + p_y)) − log((1 + p_y) / 2)]
    js = 0.5 * ((1 - p_y) * math.log(2) + p_y * torch.log(2 * p_y / (1 + p_y)) - torch.log((1 + p_y) / 2))
    torch.testing.assert_close(dense_loss("js", logits, targets).double(), (js * valid).flatten(1).mean(1),
                               atol=1e-6, rtol=1e-5)
    assert (dense_loss("js", logits, targets) <= math.log(2) + 1e-6).all()
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    balanced = dense_loss("balanced_ce", logits, targets, class_weights=weights / weights.sum())
    torch.testing.assert_close(balanced, (ce * correct * (weights / 10)[labels]).flatten(1).mean(1))


def test_balanced_ce_falls_back_to_each_images_inverse_label_frequencies():
    targets = torch.tensor([[[0, 0, 0, 1]], [[2, 2, 255, 255]]])
    weights = inverse_frequency_weights(targets, 3, 255)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]))
    logits, targets = random_problem(1)
    fallback = dense_loss("balanced_ce", logits, targets)
    per_image = torch.stack([dense_loss("balanced_ce", logits[i:i + 1], targets[i:i + 1],
                                        class_weights=inverse_frequency_weights(targets[i:i + 1], 4, 255)[0])
                             for i in range(2)])[:, 0]
    torch.testing.assert_close(fallback, per_image)


def test_pixel_accuracy_counts_ignored_pixels_as_correct():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    targets = torch.tensor([[[1, 0, 255, 0]]])
    assert pixel_accuracy(logits, targets).tolist() == [0.5]


def apgd(task, **kwargs):
    return APGD(logits_fn=task.logits, **{"eps": 4.0, "steps": 6, **kwargs})


def apgd_through(task, defense, eot_samples=1, logits_fn=None, **kwargs):
    """APGD through ``defense`` with the ``bpda`` wrapper."""
    return BPDA(attack=dict(type="apgd", **{"eps": 4.0, "steps": 6, **kwargs}), eot_samples=eot_samples,
                defense=defense, logits_fn=logits_fn or task.logits)


@pytest.mark.parametrize("eps", [0.0, 4.0])
def test_apgd_and_sea_stay_in_budget_and_range(toy_task, eps):
    images, labels = toy_task.images[:3], toy_task.labels[:3]
    for attack in (apgd(toy_task, eps=eps), SEA(logits_fn=toy_task.logits, eps=eps, steps=6)):
        adv = attack(images, labels)
        assert (adv - images).abs().max() <= eps + 1e-4 and adv.min() >= 0 and adv.max() <= 255, attack
        if eps == 0:
            assert torch.equal(adv, images)


def test_apgd_returns_each_images_least_accurate_point_of_all_it_evaluated(toy_task):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    seen = []

    def logits_fn(x):
        out = toy_task.logits(x)
        seen.append(pixel_accuracy(out.detach(), labels))
        return out

    adv = APGD(logits_fn=logits_fn, eps=4, steps=8, loss="masked_ce")(images, labels)
    lowest = torch.stack(seen).min(dim=0).values
    torch.testing.assert_close(pixel_accuracy(toy_task.logits(adv).detach(), labels), lowest, atol=1e-6, rtol=0)
    assert (lowest < pixel_accuracy(toy_task.logits(images).detach(), labels)).all()  # it did break something


def test_through_a_random_defense_apgd_returns_the_point_the_deployed_defense_handles_worst(toy_task):
    """The forward is the defense as it will be evaluated (its own seed), so the returned point's defended
    accuracy is exactly the lowest of every defended iterate: no lucky draw is selected."""
    from equi_ext.defenses import RandomNoiseDefense

    images, labels = toy_task.images[:4], toy_task.labels[:4]
    defense = defense_preprocessor(RandomNoiseDefense(eps_v=8, seed=5), toy_task.model.features,
                                   image_seeds=[10, 11, 12, 13])
    seen = []

    def logits_fn(x):
        out = toy_task.logits(x)
        seen.append(pixel_accuracy(out.detach(), labels))
        return out

    adv = apgd_through(toy_task, defense, logits_fn=logits_fn)(images, labels)
    deployed = pixel_accuracy(toy_task.logits(defense(adv, None)).detach(), labels)
    torch.testing.assert_close(deployed, torch.stack(seen).min(dim=0).values, atol=1e-6, rtol=0)
    assert not torch.equal(defense(adv, None), defense(adv, 1))  # the defense is random: other draws differ


def test_without_logits_apgd_returns_each_images_highest_task_loss_point(toy_task):
    images, labels = toy_task.images[:3], toy_task.labels[:3]
    seen = []

    def loss_fn(x, t):
        loss = F.cross_entropy(F.interpolate(toy_task.logits(x), size=t.shape[-2:], mode="bilinear"), t)
        seen.append(float(loss.detach()))
        return loss

    attack = APGD(loss_fn=loss_fn, eps=4, steps=5)
    assert attack.loss == "task"
    adv = attack(images, labels)
    per_image = torch.tensor(seen).view(-1, 3)  # one call per image per evaluation
    for i in range(3):
        torch.testing.assert_close(loss_fn(adv[i:i + 1], labels[i:i + 1]).detach(), per_image[:, i].max(),
                                   atol=1e-5, rtol=1e-5)


def test_through_an_identity_defense_apgd_is_apgd_and_eot_of_a_deterministic_defense_is_one_draw(toy_task):
    images, labels = toy_task.images[:3], toy_task.labels[:3]
    bare = apgd(toy_task, seed=2)(images, labels)
    through = apgd_through(toy_task, identity_defense, seed=2)(images, labels)
    assert torch.equal(bare, through)
    defense = defense_preprocessor(EquivarianceDefense(steps=1, transforms=["hflip"], eps_v=2), toy_task.model.features)
    one = apgd_through(toy_task, lambda x, seed: defense(x, 0), steps=3)(images, labels)
    two = apgd_through(toy_task, lambda x, seed: defense(x, 0), eot_samples=2, steps=3)(images, labels)
    torch.testing.assert_close(one, two, atol=0, rtol=0)


def test_the_forward_is_the_deployed_defense_and_further_draws_are_fresh(toy_task):
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    seeds = []

    def frozen_clean(x, seed):  # a "defense" that undoes any attack: nothing can be broken through it
        seeds.append(seed)
        return images.clone()

    adv = apgd_through(toy_task, frozen_clean, eot_samples=2, steps=4)(images, labels)
    # per evaluation: the deployed defense (seed None), then one fresh draw; every fresh draw differs
    assert seeds[::2] == [None] * 5 and len(set(seeds[1::2])) == 5 and None not in seeds[1::2]
    # every evaluation saw the clean prediction, so the start point is never beaten (ties go to later iterates,
    # all of which also purify to the clean image): the prediction on what the defense returns is the clean one
    assert torch.equal(toy_task.predict(frozen_clean(adv, 0)), toy_task.predict(images))


def test_sea_runs_each_loss_over_the_shrinking_radii_and_keeps_each_images_worst(toy_task, monkeypatch):
    images, labels = toy_task.images[:4], toy_task.labels[:4]
    attack = SEA(logits_fn=toy_task.logits, eps=4, steps=10)
    assert attack.stage_steps() == [3, 3, 4] and SEA(logits_fn=toy_task.logits, steps=300).stage_steps() == [90, 90, 120]
    calls = []
    run = APGD.run

    def spy(self, x, start, targets, **kwargs):
        out = run(self, x, start, targets, **kwargs)
        calls.append(dict(kwargs, start=start, out=out))
        return out

    monkeypatch.setattr(APGD, "run", spy)
    adv = attack(images, labels)
    assert [(c["loss"], c["radius"], c["steps"]) for c in calls] == [
        (loss, radius, steps) for loss in ("masked_ce", "balanced_ce", "js") for radius, steps in ((8, 3), (6, 3), (4, 4))]
    for before, after in zip(calls, calls[1:]):
        if after["radius"] != 8:  # a stage starts where the previous one's best point is
            assert after["start"] is before["out"][0]
    finals = [c["out"] for c in calls if c["radius"] == 4]
    qualities = torch.stack([quality for _, quality in finals])
    torch.testing.assert_close(pixel_accuracy(toy_task.logits(adv).detach(), labels), qualities.min(dim=0).values,
                               atol=1e-6, rtol=0)


@pytest.mark.numerics
def test_apgd_and_sea_are_at_least_as_strong_as_pgd_at_equal_cost(toy_task):
    """On the toy model at ε = 4: PGD's fixed step 2.5ε/N against APGD's adaptive one, both 20 iterations, and
    SEA with 20 per loss. The margin allows for the toy's 3-class mIoU granularity across CPUs."""
    images, labels = toy_task.images, toy_task.labels

    def miou(adv):
        return mean_iou(toy_task.predict(adv), labels, NUM_CLASSES)

    pgd = miou(PGD(logits_fn=toy_task.logits, eps=4, steps=20)(images, labels))
    ours = miou(APGD(logits_fn=toy_task.logits, eps=4, steps=20)(images, labels))
    sea = miou(SEA(logits_fn=toy_task.logits, eps=4, steps=20)(images, labels))
    assert ours <= pgd + 1.0 and sea <= pgd + 1.0


def test_settings_are_checked_and_apgd_needs_what_it_is_given(toy_task):
    assert {"apgd", "sea"} <= set(ATTACKS.names())
    with pytest.raises(TypeError, match="does not accept .step_size."):
        ATTACKS.check_keys("apgd", ["step_size"])
    with pytest.raises(ValueError, match=r"loss 'js' is per pixel and needs dense logits \(logits_fn\)"):
        APGD(loss_fn=lambda x, t: x.sum(), loss="js")
    with pytest.raises(ValueError, match="loss must be one of task, ce, masked_ce, balanced_ce, js; got 'dice'"):
        apgd(toy_task, loss="dice")
    with pytest.raises(ValueError, match="class_weights apply to loss 'balanced_ce' only"):
        apgd(toy_task, class_weights=[1, 1, 1])
    with pytest.raises(ValueError, match="class_weights must be a non-empty list of finite, non-negative"):
        apgd(toy_task, loss="balanced_ce", class_weights=[1, -1, 1])
    with pytest.raises(ValueError, match="class_weights has 2 entries but the model predicts 3 classes"):
        apgd(toy_task, loss="balanced_ce", class_weights=[1, 1])(toy_task.images[:1], toy_task.labels[:1])
    with pytest.raises(ValueError, match="losses must be a non-empty list"):
        SEA(logits_fn=toy_task.logits, losses=["ce", "dice"])
    with pytest.raises(ValueError, match="needs dense logits to weight pixels"):
        EquiPipeline(attack_cfg=dict(type="sea"), needs_logits=False)
    EquiPipeline(attack_cfg=dict(type="apgd", steps=2), needs_logits=False)  # on the task loss
