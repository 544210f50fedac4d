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
from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.metrics import mean_iou
from equi_ext.pipeline import EquiPipeline

NUM_CLASSES = 3


def identity_defense(images, seed):
    return images.clone()


def test_checkpoints_follow_the_shrinking_intervals():
    # 22 first, then 19, 16, 13, 10, 7, and never below 6: fractions 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # shrinks by at least 1, to at least 1
    assert checkpoints(12) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # SEA-30's last stage, as the authors' code
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
    images, labels = toy_task.images[:2], toy_task.labels[:2]  # fewer images than channels: each image is one call
    seen = []

    def loss_fn(x, t):
        loss = F.cross_entropy(F.interpolate(toy_task.logits(x), size=t.shape[-2:], mode="bilinear"), t)
        seen.append(float(loss.detach()))
        return loss

    attack = APGD(loss_fn=loss_fn, eps=4, steps=5)
    assert attack.loss == "task"
    adv = attack(images, labels)
    per_image = torch.tensor(seen).view(-1, 2)  # one call per image per evaluation
    for i in range(2):
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


def reference_apgd(x, start, script, radius, steps, low=0.0, high=255.0, momentum=0.75, rho=0.75):
    """APGD (Croce & Hein 2020, Algorithm 1, L∞) for one image at a time, from the evaluations ``script(k)`` =
    (gradient, tracking loss, quality) of its k-th evaluated point: returns the points it evaluates and the
    lowest-quality one (ties to the later). The step starts at 2·radius, at most 2·(8/255 of the pixel range); at each checkpoint an image whose
    tracking loss rose too rarely, or whose best loss did not improve while the last checkpoint (the first
    counting as one) did not halve (``step_to_halve``), halves its step and restarts from its best-loss point
    with its gradient; the momentum and the next rise are measured from the last iterate, as in the
    reference code (AutoAttack's and SEA's)."""
    points, results, check_at = [], [], checkpoints(steps)
    for i in range(x.shape[0]):
        def project(a, centre=x[i]):
            return torch.minimum(torch.maximum(a, centre - radius), centre + radius).clamp(low, high)

        eta = 2.0 * min(radius, 8 / 255 * (high - low))
        cur = project(start[i])
        grad, track, quality = (v[i] for v in script(0))
        own = [cur]
        best_x, best_grad, best_loss = cur, grad, track
        adv, adv_quality = cur, quality
        previous, last_track, rises = cur, track, 0
        last_check, halved_last, best_at_check = 0, True, best_loss
        for k in range(steps):
            z = project(cur + eta * grad.sign())
            new = z if k == 0 else project(cur + momentum * (z - cur) + (1 - momentum) * (cur - previous))
            previous, cur = cur, new
            grad, track, quality = (v[i] for v in script(k + 1))
            own.append(cur)
            rises += int(track > last_track)
            last_track = track
            if track > best_loss:
                best_x, best_grad, best_loss = cur, grad, track
            if quality <= adv_quality:
                adv, adv_quality = cur, quality
            if k + 1 in check_at:
                halve = bool(step_to_halve(torch.tensor([float(rises)]), k + 1 - last_check, rho,
                                           torch.tensor([halved_last]), torch.tensor([best_loss]),
                                           torch.tensor([best_at_check]))[0])
                if halve:
                    eta /= 2
                    cur, grad = best_x, best_grad
                rises, last_check, halved_last, best_at_check = 0, k + 1, halve, best_loss
        points.append(own)
        results.append((adv, adv_quality))
    return points, results


@pytest.mark.parametrize("radius, low, high", [(6.0, 0.0, 255.0), (math.inf, -0.5, 0.5)])
def test_apgd_iterates_follow_the_algorithm_given_its_evaluations(radius, low, high):
    """The loop alone, fed scripted evaluations: image 0's tracking loss always rises (its step never halves),
    image 1's is constant (no rise, no new best: it halves at every checkpoint, and ties never count as
    better), image 2's rises exactly at the threshold of the first checkpoint (it halves), image 3's rises
    at every step without reaching its start's loss (kept at the first checkpoint, halved after), the others' rise
    with probability 0.75, near the threshold; qualities come in steps of
    0.25 so ties happen (the later iterate wins); some gradient entries are 0 (no move there). Also
    unbounded (the step starts at twice 8/255 of the pixel range) in a range that does not start at 0."""
    steps, n = 40, 8
    g = torch.Generator().manual_seed(0)
    x = low + torch.rand(n, 3, 5, 4, generator=g) * (high - low)
    x[0, 0] = low + 0.004 * (high - low)  # near the pixel range's bounds: the projection clips there
    x[1, 1] = high - 0.004 * (high - low)
    start = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * min(radius, high - low)).clamp(low, high)
    grads = [torch.randn(x.shape, generator=g) * (torch.rand(x.shape, generator=g) > 0.1) for _ in range(steps + 1)]
    rises = torch.where(torch.rand(steps + 1, n, generator=g) < 0.75, 1.0, -1.0)
    rises[1:9, 2] = torch.tensor([1.0] * 6 + [-1.0] * 2)  # image 2: 6 rises in the first interval of 8, at ρ·8
    walk = torch.cumsum(rises, dim=0)
    tracks = [torch.cat([torch.tensor([float(k), 1.0]), walk[k, 2:]]) for k in range(steps + 1)]
    for k in range(steps + 1):  # image 3 rises at every step but stays below its start: no halving at the first
        tracks[k][3] = 100.0 if k == 0 else float(k)  # checkpoint (it counts as one that halved), then at each
    qualities = [(torch.rand(n, generator=g) * 4).floor() / 4 for _ in range(steps + 1)]

    def script(k):
        return grads[k], tracks[k], qualities[k]

    seen = []

    def evaluate(adv, targets, loss):
        seen.append(adv.clone())
        return script(len(seen) - 1)

    attack = APGD(logits_fn=lambda images: images, eps=radius, steps=steps, pixel_range=(low, high))
    attack.evaluate = evaluate
    adv, quality = attack.run(x, start, None, radius=radius, steps=steps, loss="ce")
    points, results = reference_apgd(x, start, script, radius, steps, low, high)
    assert len(seen) == steps + 1
    tolerance = 1e-5 * (high - low)  # float32 rounding of the two ways to project
    for i in range(n):
        torch.testing.assert_close(torch.stack([p[i] for p in seen]), torch.stack(points[i]), atol=tolerance, rtol=0)
        torch.testing.assert_close(adv[i], results[i][0], atol=tolerance, rtol=0)
        assert float(quality[i]) == float(results[i][1])
    moves = [(seen[k + 1] - seen[k]).abs().amax(dim=(1, 2, 3)) for k in range(steps)]
    size = min(radius, 8 / 255 * (high - low))  # the step scale: the radius, capped at 8 levels of 255
    assert moves[-1][1] < size / 4  # image 1's step did halve, image 0's never did: it still crosses much of the ball
    assert moves[-1][0] > size / 2 and (moves[0][1] > 3 * size / 2 or not math.isfinite(radius))


def test_apgd_defaults_and_bad_settings_are_named(toy_task):
    attack = APGD(logits_fn=toy_task.logits)
    assert (attack.steps, attack.seed, attack.ignore_index, attack.progress, attack.momentum, attack.rho,
            attack.loss, attack.random_start) == (100, 0, 255, False, 0.75, 0.75, "ce", True)
    assert repr(attack) == "APGD(eps=4.0, steps=100, loss='ce')"
    assert repr(SEA(logits_fn=toy_task.logits)) == "SEA(eps=4.0, steps=300, losses=['masked_ce', 'balanced_ce', 'js'])"
    assert APGD(loss_fn=lambda x, t: x.sum()).loss == "task"
    assert APGD(logits_fn=toy_task.logits, momentum=1).momentum == 1.0
    for bad in (dict(momentum=0), dict(momentum=1.5), dict(rho=0), dict(rho=1), dict(rho=1.5)):
        with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\] and rho in \(0, 1\); got"):
            APGD(logits_fn=toy_task.logits, **bad)
    with pytest.raises(ValueError, match="^APGD loss 'task' needs the model's loss_fn$"):
        APGD(logits_fn=toy_task.logits, loss="task")
    with pytest.raises(ValueError, match=r"^APGD loss 'js' is per pixel and needs dense logits \(logits_fn\), which "
                                         r"this model does not have; use loss='task' \(the model's own training"):
        APGD(loss_fn=lambda x, t: x.sum(), loss="js")
    with pytest.raises(ValueError, match="^SEA loss 'masked_ce' is per pixel and needs dense logits"):
        SEA(loss_fn=lambda x, t: x.sum())
    with pytest.raises(ValueError, match="^class_weights apply to loss 'balanced_ce' only; got 'ce'$"):
        apgd(toy_task, class_weights=[1, 1, 1])
    for bad in ([], [[1, 1, 1]], [1, float("nan"), 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="class_weights must be a non-empty list of finite, non-negative numbers "
                                             "with a positive sum"):
            apgd(toy_task, loss="balanced_ce", class_weights=bad)
    weights = apgd(toy_task, loss="balanced_ce", class_weights=[2, 0, 2]).class_weights
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.0, 0.5]))  # zeros allowed, normalised to sum 1
    weights = apgd(toy_task, loss="balanced_ce", class_weights=[0.25, 0.25, 0.5]).class_weights  # sums to 1
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.25, 0.5]))
    with pytest.raises(ValueError, match="^class_weights apply to loss 'balanced_ce' only; got 'masked_ce', 'js'$"):
        SEA(logits_fn=toy_task.logits, losses=["masked_ce", "js"], class_weights=[1, 1, 1])
    with pytest.raises(ValueError, match=r"^SEA runs several losses: set losses=\[\.\.\.\], not loss$"):
        SEA(logits_fn=toy_task.logits, loss="ce")
    with pytest.raises(ValueError, match=r"^losses must be a non-empty list of ce, masked_ce, balanced_ce, js; "
                                         r"got \[\]$"):
        SEA(logits_fn=toy_task.logits, losses=[])
    with pytest.raises(ValueError, match="^class_weights apply to loss 'balanced_ce' only; got 'js'$"):
        SEA(logits_fn=toy_task.logits, losses=["js"], class_weights=[1, 1, 1])
    sea = SEA(logits_fn=toy_task.logits, losses=["balanced_ce"], class_weights=[1, 1, 2])
    torch.testing.assert_close(sea.class_weights, torch.tensor([0.25, 0.25, 0.5]))
    assert SEA(logits_fn=toy_task.logits, losses=["js"]).losses == ["js"]
    with pytest.raises(ValueError, match="^unknown dense loss 'dice'; valid: ce, masked_ce, balanced_ce, js$"):
        dense_loss("dice", *random_problem())


def test_apgd_and_sea_pass_the_attack_settings_on(toy_task, capsys):
    """random_start, seed, ignore_index, pixel_range and progress reach the attack's loop."""
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    firsts = []

    def logits_fn(x):
        if not firsts:
            firsts.append(x.detach().clone())
        return toy_task.logits(x)

    APGD(logits_fn=logits_fn, eps=4, steps=2, random_start=False)(images, labels)
    assert torch.equal(firsts[0], images)
    firsts.clear()
    APGD(logits_fn=logits_fn, eps=4, steps=2)(images, labels)
    assert not torch.equal(firsts[0], images)
    seeded = [APGD(logits_fn=toy_task.logits, eps=4, steps=2, seed=s)(images, labels) for s in (0, 0, 1)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    # label 7 (no such class) is what the model must ignore: valid only as ignore_index
    marked = labels.clone()
    marked[:, :8] = 7
    adv = APGD(logits_fn=toy_task.logits, eps=4, steps=2, ignore_index=7)(images, marked)
    assert (adv - images).abs().max() <= 4 + 1e-4
    unit = APGD(logits_fn=lambda x: toy_task.logits(x * 255), eps=4 / 255, steps=2, pixel_range=(0.0, 1.0))
    assert unit(images[:1] / 255, labels[:1]).max() <= 1.0
    capsys.readouterr()
    APGD(logits_fn=toy_task.logits, eps=4, steps=2)(images, labels)
    assert "APGD" not in capsys.readouterr().err
    APGD(logits_fn=toy_task.logits, eps=4, steps=2, progress=True)(images, labels)
    assert "APGD" in capsys.readouterr().err


def test_apgd_on_the_task_loss_with_dense_logits_ascends_the_task_loss(toy_task):
    """loss='task' with logits at hand: the gradient is the task loss's at each iterate (with its targets);
    the logits still judge which iterate is returned."""
    images, labels = toy_task.images[:2], toy_task.labels[:2]
    calls = []

    def loss_fn(x, t):
        calls.append((x.detach().clone(), t))
        return -F.cross_entropy(toy_task.logits(x), t)  # the task: make the model *more* right

    attack = APGD(loss_fn=loss_fn, logits_fn=toy_task.logits, loss="task", eps=4, steps=4, random_start=False)
    attack(images, labels)
    assert len(calls) == 5 and all(t is labels for _, t in calls)
    assert torch.equal(calls[0][0], images)
    with torch.no_grad():
        losses = [float(F.cross_entropy(toy_task.logits(x), labels)) for x, _ in calls]
    assert losses[-1] < losses[0]  # it followed loss_fn's gradient, not the cross-entropy's


def test_dense_losses_take_the_number_of_classes_from_the_logits():
    """Labels need not contain every class; images may outnumber classes and classes the rows."""
    logits, targets = random_problem(2, n=5, c=4, h=2, w=3)
    targets = targets.clamp(max=1)  # only classes 0 and 1 (and ignored pixels)
    ce = F.cross_entropy(logits, torch.where(targets == 255, 0, targets), reduction="none") * (targets != 255)
    p_y = logits.softmax(1).gather(1, torch.where(targets == 255, 0, targets)[:, None])[:, 0]
    js = 0.5 * ((1 - p_y) * math.log(2) + p_y * torch.log(2 * p_y / (1 + p_y)) - torch.log((1 + p_y) / 2))
    torch.testing.assert_close(dense_loss("js", logits, targets), (js * (targets != 255)).flatten(1).mean(1),
                               atol=1e-6, rtol=1e-5)
    correct = logits.argmax(1) == torch.where(targets == 255, 0, targets)
    weights = torch.tensor([1.0, 3.0, 0, 0]) / 4
    torch.testing.assert_close(dense_loss("balanced_ce", logits, targets, class_weights=weights),
                               (ce * correct * weights[targets.clamp(max=3)]).flatten(1).mean(1))
    targets[:, 0, 0] = 3  # a class beyond the image height
    assert dense_loss("balanced_ce", logits, targets).shape == (5,)


def test_sea_keeps_per_image_the_loss_whose_result_is_most_broken(toy_task, monkeypatch):
    """Scripted stage results: each image's winner is another loss; on a tie the earlier loss stays."""
    images, labels = toy_task.images[:3], toy_task.labels[:3]
    final = {"masked_ce": [0.1, 0.5, 0.4], "balanced_ce": [0.5, 0.2, 0.4], "js": [0.9, 0.9, 0.4]}
    marks = {"masked_ce": 1.0, "balanced_ce": 2.0, "js": 3.0}

    def run(self, x, start, targets, *, radius, steps, loss):
        return x + marks[loss], torch.tensor(final[loss])

    monkeypatch.setattr(APGD, "run", run)
    adv = SEA(logits_fn=toy_task.logits, eps=4, steps=3)(images, labels)
    assert [float((adv[i] - images[i]).mean()) for i in range(3)] == pytest.approx([1.0, 2.0, 1.0])
    assert SEA(logits_fn=toy_task.logits, steps=3).stage_steps() == [1, 1, 1]
    assert SEA(logits_fn=toy_task.logits, steps=5).stage_steps() == [1, 1, 3]
