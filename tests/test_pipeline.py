"""The per-batch flow both adapters share (``EquiPipeline.process``), on the toy model with a framework-free
batch: what each scenario attacks and defends, which pixels each step sees, groups, seeds, scores, the model
left as found. The adapters' own tests check their views (pixels, padding, write-back); these state the flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.scores import output_variance_score
from equi_ext.core.validation import SettingsError
from equi_ext.pipeline import (
    SCENARIOS,
    EquiPipeline,
    PixelBatch,
    as_cfg,
    check_scenarios,
    default_scenarios,
    scenario_table,
)

DEFENSE = dict(type="equi", steps=2, transforms=["hflip", "resize:0.75"], eps_v=4)
ATTACK = dict(type="pgd", eps=4, steps=2)


class ToyBatch(PixelBatch):
    """A list of images as a framework hands them (sizes may differ), each with its own seed; records what the
    pipeline asks of it and what it hands back."""

    def __init__(self, task, images: list[torch.Tensor], labels: list[torch.Tensor], seeds: list[int]) -> None:
        super().__init__(task.model, len(images))
        self.task, self.images, self.labels, self.seeds = task, images, labels, seeds
        self.out: list[torch.Tensor | None] = [None] * len(images)
        self.puts: list[tuple[list[int], bool]] = []
        self.views: list[torch.Tensor] = []
        self.asked: list[tuple[str, list[int]]] = []  # (view name, the group's indices)
        self.handed: dict[str, list] = {"loss_fn": [], "logits_fn": [], "view": []}

    def group_key(self, i):
        return tuple(self.images[i].shape)

    def pixels(self, idx):
        return torch.stack([self.images[i] for i in idx])

    def seed(self, i):
        return self.seeds[i]

    def targets(self, idx):
        self.asked.append(("targets", list(idx)))
        return torch.stack([self.labels[i] for i in idx])

    def _hand(self, name, idx, fn):
        self.asked.append((name, list(idx)))
        self.handed[name].append(fn)
        return fn

    def loss_fn(self, idx):
        return self._hand("loss_fn", idx, lambda x, t: F.cross_entropy(self.task.logits(x), t, ignore_index=7))

    def logits_fn(self, idx):
        return self._hand("logits_fn", idx, lambda x: self.task.logits(x))

    @property
    def attack_extra(self):
        return dict(ignore_index=7)

    def view(self, idx, pixels):
        self.views.append(pixels.detach().clone())
        return self._hand("view", idx, lambda x: self.task.model.features(x))

    def put(self, idx, pixels, changed):
        self.puts.append((list(idx), changed))
        for j, i in enumerate(idx):
            self.out[i] = pixels[j].detach().clone()


def toy_batch(task, indices, seeds=None, crop=None) -> ToyBatch:
    """Images ``indices`` of the toy task; ``crop`` maps an index to a smaller square size (another group)."""
    crop = crop or {}
    images = [task.images[i][..., :crop.get(i, 48), :crop.get(i, 48)] for i in indices]
    labels = [task.labels[i][..., :crop.get(i, 48), :crop.get(i, 48)] for i in indices]
    return ToyBatch(task, images, labels, list(seeds if seeds is not None else indices))


class Spy:
    """Record the pixels a callable is given and returns, and pass them through."""

    def __init__(self, target, method: str, monkeypatch) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        original = getattr(target, method)

        def spy(pixels, *args, **kwargs):
            out = original(pixels, *args, **kwargs)
            result = out.images if hasattr(out, "images") else out
            self.calls.append((pixels.detach().clone(), result.detach().clone()))
            return out

        monkeypatch.setattr(target, method, spy)


@pytest.mark.parametrize("scenario", [*SCENARIOS, None])
def test_each_scenario_attacks_and_defends_what_its_name_says(toy_task, scenario, monkeypatch):
    pipeline = EquiPipeline(DEFENSE, ATTACK)
    attack, defense = Spy(pipeline, "attack", monkeypatch), Spy(pipeline, "defense", monkeypatch)
    batch = toy_batch(toy_task, [0, 1])
    clean = batch.pixels([0, 1])
    pipeline.process(batch, scenario)
    attack_on, defend_on = SCENARIOS[scenario] if scenario else (True, True)  # None: as configured
    assert len(attack.calls) == attack_on
    # a defense call of its own, after the attack; BPDA-type attacks would call it too, PGD does not
    assert len(defense.calls) == defend_on
    given = attack.calls[0][1] if attack_on else clean
    if attack_on:
        assert torch.equal(attack.calls[0][0], clean) and not torch.equal(given, clean)
    if defend_on:
        assert torch.equal(defense.calls[0][0], given)  # the defense repairs what the attack made
        given = defense.calls[0][1]
        assert not torch.equal(given, attack.calls[0][1] if attack_on else clean)
    assert torch.equal(torch.stack(batch.out), given)  # the framework predicts on the last step's pixels
    assert batch.puts == [([0, 1], attack_on or defend_on)]  # unchanged inputs are not rewritten


def test_what_is_not_configured_does_not_run(toy_task, monkeypatch):
    for pipeline in (EquiPipeline(None, None), EquiPipeline("none", None)):
        assert pipeline.active("defended") == (False, False) and not pipeline.defends
        batch = toy_batch(toy_task, [0])
        assert pipeline.process(batch, "defended") == [None]
        assert torch.equal(batch.out[0], batch.images[0]) and batch.puts == [([0], False)]
    assert EquiPipeline(DEFENSE, None).active(None) == (False, True)
    assert EquiPipeline(None, ATTACK).active(None) == (True, False)
    assert EquiPipeline(DEFENSE, ATTACK).active("attacked") == (True, False)


def test_the_attack_sees_the_view_of_the_clean_image_and_the_defense_the_view_of_the_attacked_one(
        toy_task, monkeypatch):
    """An adapter's view may depend on the pixels (Detectron2's objective does): each step gets its own."""
    pipeline = EquiPipeline(DEFENSE, ATTACK)
    attack = Spy(pipeline, "attack", monkeypatch)
    batch = toy_batch(toy_task, [2, 3])
    pipeline.process(batch, "defended")
    assert len(batch.views) == 2
    assert torch.equal(batch.views[0], batch.pixels([0, 1])) and torch.equal(batch.views[1], attack.calls[0][1])


def test_images_group_by_key_and_each_group_is_handed_back_once(toy_task, monkeypatch):
    pipeline = EquiPipeline(DEFENSE, ATTACK)
    defense = Spy(pipeline, "defense", monkeypatch)
    batch = toy_batch(toy_task, [0, 1, 2, 3], crop={1: 40, 3: 40})
    pipeline.process(batch, "defended")
    assert sorted(batch.puts) == [([0, 2], True), ([1, 3], True)]
    # every view is asked for the group it serves
    assert sorted(batch.asked) == sorted((name, idx) for idx in ([0, 2], [1, 3])
                                         for name in ("logits_fn", "targets", "loss_fn", "view", "view"))
    assert sorted(tuple(given.shape) for given, _ in defense.calls) == [(2, 3, 40, 40), (2, 3, 48, 48)]
    assert [tuple(o.shape) for o in batch.out] == [tuple(i.shape) for i in batch.images]


def test_an_images_attack_and_defense_depend_on_its_seed_not_its_place_in_the_batch(toy_task64):
    """In float64 (see ``toy_task64``): image 3 alone, and third in a batch of three, with the same seed."""
    pipeline = EquiPipeline(DEFENSE, ATTACK)  # both draw per image: PGD's random start, the defense's noise
    alone = toy_batch(toy_task64, [3], seeds=[7])
    pipeline.process(alone, "defended")
    among = toy_batch(toy_task64, [0, 1, 3], seeds=[5, 6, 7])
    pipeline.process(among, "defended")
    torch.testing.assert_close(among.out[2], alone.out[0], atol=1e-9, rtol=0)
    reseeded = toy_batch(toy_task64, [3], seeds=[8])
    pipeline.process(reseeded, "defended")
    assert (reseeded.out[0] - alone.out[0]).abs().max() > 0.1  # the seed does reach the attack and the defense


def test_bpda_draws_the_defense_with_each_images_seed(toy_task64):
    """Through a random defense the attack's purifications, too, depend on the image's seed, not its place."""
    pipeline = EquiPipeline(DEFENSE, dict(type="bpda", attack=dict(ATTACK, random_start=False)))
    alone = toy_batch(toy_task64, [3], seeds=[7])
    pipeline.process(alone, "attacked")
    among = toy_batch(toy_task64, [0, 1, 3], seeds=[5, 6, 7])
    pipeline.process(among, "attacked")
    torch.testing.assert_close(among.out[2], alone.out[0], atol=1e-9, rtol=0)


def test_recorded_scores_are_each_images_score_of_what_the_framework_predicts_on(toy_task):
    task = toy_task
    for defense, scenario in ((DEFENSE, "defended"), (DEFENSE, "clean"), (None, "attacked")):
        pipeline = EquiPipeline(defense, ATTACK)
        batch = toy_batch(task, [0, 1, 2], crop={1: 40})
        scores = pipeline.process(batch, scenario, record_scores=True)
        scorer = pipeline.score_defense if defense else EquivarianceDefense()
        for i, score in enumerate(scores):
            expected = scorer.score(batch.out[i][None], task.model.features)
            torch.testing.assert_close(torch.tensor([score]), expected, atol=1e-5, rtol=0)
        assert scores[0] != scores[2]
    assert EquiPipeline(DEFENSE, ATTACK).process(toy_batch(task, [0]), "defended") == [None]  # not asked for


@pytest.mark.parametrize("defense, separate", [
    (DEFENSE, 0), (dict(type="detect_then_defend", threshold=1.0, defense=DEFENSE), 0), (None, 1),
    ("random", 1)])
def test_a_defense_that_scores_while_defending_is_not_scored_again(toy_task, defense, separate, monkeypatch):
    """The equivariance defense and detect-then-defend compute the score in their own pass; only other
    defenses (or none) pay a separate scoring pass per group."""
    pipeline = EquiPipeline(defense, None)
    calls = []
    scorer = pipeline.scorer
    monkeypatch.setattr(pipeline, "scorer", lambda *args: calls.append(1) or scorer(*args))
    scores = pipeline.process(toy_batch(toy_task, [0, 1]), "clean_defended", record_scores=True)
    assert len(calls) == separate and all(isinstance(v, float) for v in scores)


def test_output_variance_and_registry_scores_are_what_is_recorded(toy_task):
    from equi_ext.defenses import DEFENSES

    batch = toy_batch(toy_task, [0, 1])
    scores = EquiPipeline(DEFENSE, None, score="output_variance").process(batch, "clean", record_scores=True)
    expected = output_variance_score(toy_task.logits, batch.pixels([0, 1]),  # over the defense's transforms
                                     transforms=EquivarianceDefense(transforms=DEFENSE["transforms"]).transforms)
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-6, rtol=1e-5)
    invariance = DEFENSES.build(dict(type="invariance"))
    for scenario in ("clean", "clean_defended"):  # the defense's own score is not the one asked for
        batch = toy_batch(toy_task, [0, 1])
        scores = EquiPipeline(DEFENSE, None, score="invariance").process(batch, scenario, record_scores=True)
        expected = invariance.score(torch.stack(batch.out), toy_task.model.features)
        torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-6, rtol=1e-5)
    # a score's transforms clip in the pipeline's pixel range (colour jitter would leave [0, 1] otherwise)
    jitter = dict(DEFENSE, transforms=["color_jitter:1.6", "hflip"])
    unit = toy_batch(toy_task, [0, 1])
    unit.images = [image / 255 for image in unit.images]
    unit.logits_fn = lambda idx: (lambda x: toy_task.logits(x * 255))
    scores = EquiPipeline(jitter, None, score="output_variance", pixel_range=(0.0, 1.0)).process(
        unit, "clean", record_scores=True)
    expected = output_variance_score(lambda x: toy_task.logits(x * 255), unit.pixels([0, 1]), pixel_range=(0.0, 1.0),
                                     transforms=EquivarianceDefense(transforms=jitter["transforms"]).transforms)
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="^score='output_variance' needs dense logits, which this model does not have$"):
        EquiPipeline(None, None, score="output_variance", needs_logits=False)
    with pytest.raises(ValueError, match="^score must be 'equivariance', 'invariance', 'output_variance' or a "
                                         "defense name/config; got 3$"):
        EquiPipeline(None, None, score=3)
    with pytest.raises(ValueError, match="^score='none': defense NoDefense has no score$"):
        EquiPipeline(None, None, score="none")


def test_attacks_face_the_configured_defense_with_its_transforms(toy_task, monkeypatch):
    """BPDA runs the defense inside the attack (with the images' seeds); the adaptive attacker uses the transforms
    of the defense it faces; with no defense, BPDA's 'defense' is the identity and it is PGD."""
    import equi_ext.pipeline as pipeline_module

    built = []
    original = pipeline_module.attack_kwargs

    def spy(cls, cfg, **views):
        kwargs = original(cls, cfg, **views)
        built.append(kwargs)
        return kwargs

    monkeypatch.setattr(pipeline_module, "attack_kwargs", spy)
    wrapped = []
    preprocessor = pipeline_module.defense_preprocessor
    monkeypatch.setattr(pipeline_module, "defense_preprocessor",
                        lambda *args, **kwargs: wrapped.append(kwargs) or preprocessor(*args, **kwargs))
    pipeline = EquiPipeline(DEFENSE, dict(type="bpda", attack=dict(type="pgd", eps=4, steps=2)))
    defense = Spy(pipeline, "defense", monkeypatch)
    batch = toy_batch(toy_task, [0], seeds=[11])
    pipeline.process(batch, "attacked")
    assert len(defense.calls) >= 2  # every BPDA step purifies; "attacked" itself never defends
    # the attack gets the batch's own views of the group, its extra settings, the images' seeds
    assert built[-1]["loss_fn"] is batch.handed["loss_fn"][0] and built[-1]["logits_fn"] is batch.handed["logits_fn"][0]
    assert built[-1]["ignore_index"] == 7
    assert wrapped[-1]["image_seeds"] == [11] and wrapped[-1]["model"] is toy_task.model
    assert wrapped[-1]["differentiable"] is False
    EquiPipeline(DEFENSE, dict(type="unrolled", eps=4, steps=1)).process(toy_batch(toy_task, [0]), "attacked")
    assert wrapped[-1]["differentiable"] is True  # the unrolled attack differentiates through the defense
    pipeline = EquiPipeline(DEFENSE, dict(type="adaptive", eps=4, steps=1))
    pipeline.process(toy_batch(toy_task, [0]), "attacked")
    assert built[-1]["transforms"] is pipeline.defense.transforms
    dtd = EquiPipeline(dict(type="detect_then_defend", threshold=0.5, defense=DEFENSE, score_transforms=["hflip"]),
                       dict(type="adaptive", eps=4, steps=1))
    assert dtd.score_defense is dtd.defense.scorer  # the adaptive attacker targets what the detector scores
    dtd.process(toy_batch(toy_task, [0]), "attacked")
    assert built[-1]["transforms"] is dtd.defense.scorer.transforms
    bare = toy_batch(toy_task, [0], seeds=[3])
    EquiPipeline(None, dict(type="bpda", attack=dict(type="pgd", eps=4, steps=2))).process(bare, "attacked")
    pgd = toy_batch(toy_task, [0], seeds=[3])
    EquiPipeline(None, dict(type="pgd", eps=4, steps=2)).process(pgd, "attacked")
    assert torch.equal(bare.out[0], pgd.out[0])


def test_the_model_is_left_as_found(toy_task):
    """Even a model left in training mode with trainable parameters: flags, requires_grad, weights and the
    BatchNorm statistics its forwards would update come back as they were."""
    import copy

    task = copy.deepcopy(toy_task)
    model = task.model.train()
    model.head[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    pipeline = EquiPipeline(DEFENSE, ATTACK)
    pipeline.process(toy_batch(task, [0, 1]), "defended", record_scores=True)
    # one step alone too (the visual report calls it): the attack's forwards in training mode included
    _, score = pipeline.run(task.images[:2], attack=True, defend=True, features=model.features, model=model,
                            seeds=[0, 1], targets=task.labels[:2], logits_fn=task.logits,
                            loss_fn=lambda x, t: F.cross_entropy(task.logits(x), t))
    assert score is None  # not asked for
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_scenario_names_and_configs_are_checked():
    assert default_scenarios(True, True) == ["clean", "clean_defended", "attacked", "defended"]
    assert default_scenarios(False, True) == ["clean", "attacked"]
    assert default_scenarios(True, False) == ["clean", "clean_defended"]
    assert default_scenarios(False, False) == ["clean"]
    with pytest.raises(SettingsError, match="^unknown scenario\\(s\\) 'dirty', 'dusty'; valid: clean, clean_defended, "
                                            "attacked, defended$"):
        check_scenarios(["clean", "dirty", "dusty"])
    with pytest.raises(SettingsError, match="scenario 'defended' needs the.attack.key, which the config does not"):
        check_scenarios(["defended"], {"attack": "the.attack.key"})
    assert check_scenarios(("clean", "attacked"), {"defense": "d"}) == ["clean", "attacked"]
    keys = {"defense": "d.key", "attack": "a.key"}
    assert EquiPipeline(DEFENSE, None).scenarios(None, keys) == ["clean", "clean_defended"]
    assert EquiPipeline(None, ATTACK).scenarios(None, keys) == ["clean", "attacked"]
    assert EquiPipeline(DEFENSE, ATTACK).scenarios(None, keys) == list(SCENARIOS)
    with pytest.raises(SettingsError, match="scenario 'attacked' needs a.key"):
        EquiPipeline(DEFENSE, None).scenarios(["attacked"], keys)
    with pytest.raises(SettingsError, match="scenario 'clean_defended' needs d.key"):
        EquiPipeline("none", ATTACK).scenarios(["clean_defended"], keys)
    assert as_cfg(None) is None and as_cfg("pgd") == {"type": "pgd"}
    cfg = {"type": "pgd", "eps": 4}
    assert as_cfg(cfg) == cfg and as_cfg(cfg) is not cfg  # a copy: building never edits the user's config
    assert tuple(EquiPipeline(DEFENSE, None, pixel_range=(0.0, 1.0)).defense.pixel_range) == (0.0, 1.0)


def test_the_scenario_table_shows_each_metric_the_score_the_images_and_the_time():
    rows = [dict(scenario="clean", mIoU=70.123, aAcc=91.0, equivariance_score=None, images=16, seconds=2.04),
            dict(scenario="defended", mIoU=41.5, aAcc=80.256, equivariance_score=0.73449, images=16, seconds=19.96)]
    assert scenario_table(rows, {"mIoU": "mIoU", "pixel acc.": "aAcc"}) == "\n".join([
        "| scenario | mIoU | pixel acc. | equivariance score | images | seconds |",
        "|---|---|---|---|---|---|",
        "| clean | 70.12 | 91.00 | — | 16 | 2.0 |",
        "| attacked + defense | 41.50 | 80.26 | 0.734 | 16 | 20.0 |"])


def test_a_run_refuses_data_parallel_and_nests_like_with_blocks():
    """``DataParallel`` replicates the model at every forward, and a replica is not the model the run was
    activated on: refused, not silently run as configured. Nested runs restore the outer one and keep its views."""
    from torch import nn

    from equi_ext.pipeline import CONFIGURED_RUN, EquiRun, active_run, running

    with pytest.raises(TypeError, match="DataParallel"):
        with running(nn.DataParallel(nn.Linear(1, 1)), EquiRun("clean")):
            pass
    model = nn.Linear(1, 1)
    with running(model, EquiRun(views=dict(levels=["p2"]))) as outer:
        with running(model, EquiRun("defended")) as inner:
            assert active_run(model) is inner and inner.scenario == "defended" and inner.views == dict(levels=["p2"])
        assert active_run(model) is outer
    assert active_run(model) is CONFIGURED_RUN
