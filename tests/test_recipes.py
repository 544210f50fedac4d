"""The contributing guide's recipes for a new attack and a new defense, followed once (docs/contributing.md).

A tiny attack (PGD on some colour channels only) and a tiny defense (bit-depth reduction) are written here as a
contributor would write them in ``equi_ext/attacks/`` and ``equi_ext/defenses/``, registered under names no other
test knows, and removed from the registries afterwards. Each check fails if the registration is broken: the names
must build exactly these classes, refuse a key the class does not take, and their outputs show what only these
classes do (untouched channels, pixels on the quantisation grid).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import equi_ext
from equi_ext.attacks import ATTACKS, Attack, build_attack
from equi_ext.core.defense import DefenseOutput
from equi_ext.core.validation import check_budget, check_images, check_pixel_range
from equi_ext.defenses import DEFENSES, build_defense
from equi_ext.defenses.base import Defense
from equi_ext.pipeline import EquiPipeline

from .conftest import ToySegNet, toy_scenes

REPO = Path(__file__).resolve().parents[1]
ATTACK, DEFENSE = "recipe_channel_pgd", "recipe_quantise"
EPS, QUANTUM = 4.0, 15.0  # 15 divides 255: every grid value lies in the pixel range


class ChannelPGD(Attack):
    """PGD that perturbs only the colour ``channels`` (0 = R, 1 = G, 2 = B); the others stay as given."""

    def __init__(self, *, channels: list[int] | tuple[int, ...] = (0, 1, 2), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        channels = [int(c) for c in channels]
        if not channels or any(c not in (0, 1, 2) for c in channels):
            raise ValueError(f"channels must be a non-empty list of 0, 1, 2; got {channels!r}")
        self.channels = channels

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        adv = super().project(adv, images)
        keep = torch.zeros(1, adv.shape[1], 1, 1, dtype=torch.bool, device=adv.device)
        keep[:, self.channels] = True
        return torch.where(keep, adv, images)


class Quantise:
    """Bit-depth reduction: each pixel to the nearest multiple of ``quantum`` levels (it moves at most quantum/2).

    Deterministic; ``seed`` is taken because every framework passes one (Detectron2's ``EQUI.SEED`` is always set)."""

    defends = True
    differentiable = False
    reuses_score_features = False
    equivariance_scorer = None
    score = None

    def __init__(self, *, quantum: float = 8.0, seed: int = 0, pixel_range=None) -> None:
        self.pixel_range = check_pixel_range(pixel_range)
        self.stated_pixel_range = None if pixel_range is None else self.pixel_range
        self.quantum = check_budget("quantum", quantum, self.pixel_range, allow_zero=False)
        self.seed = int(seed)

    def __call__(self, images: torch.Tensor, features=None, *, model=None, image_seeds=None, seed=None,
                 compute_score: bool = True) -> DefenseOutput:
        check_images(images, self.stated_pixel_range)
        low, high = self.pixel_range
        out = (torch.round((images.detach() - low) / self.quantum) * self.quantum + low).clamp(low, high)
        return DefenseOutput(images=out, loss_trace=images.new_zeros(0, images.shape[0]), score=None)


@pytest.fixture
def registered():
    """The two classes registered as the recipe does (``@ATTACKS.register(name)``), for this test only."""
    assert ATTACK not in ATTACKS and DEFENSE not in DEFENSES
    try:
        ATTACKS.register(ATTACK)(ChannelPGD)
        DEFENSES.register(DEFENSE)(Quantise)
        yield
    finally:
        ATTACKS._entries.pop(ATTACK, None)
        DEFENSES._entries.pop(DEFENSE, None)
    assert ATTACK not in ATTACKS and DEFENSE not in DEFENSES


@pytest.fixture
def toy():
    """An untrained toy segmenter (eval mode) and two toy scenes: enough for gradients, budgets and ranges."""
    torch.manual_seed(0)
    model = ToySegNet().eval()
    images, labels = toy_scenes(2, seed=0, size=32)
    return model, images, labels


def logits_of(model):
    return lambda x: F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def on_grid(x: torch.Tensor) -> bool:
    return torch.equal(x, torch.round(x / QUANTUM) * QUANTUM)


def test_the_new_attack_and_defense_build_by_name_and_refuse_keys_they_do_not_take(registered, toy):
    model, _, _ = toy
    attack = build_attack(dict(type=ATTACK, eps=EPS, steps=2, channels=[0]), logits_fn=logits_of(model))
    assert type(attack) is ChannelPGD and attack.channels == [0] and attack.eps == EPS and attack.steps == 2
    # what a config may set: the class's own setting and the base's, not the model views equi-ext supplies
    assert {"channels", "eps", "steps", "seed"} <= set(ATTACKS.settings(ATTACK))
    assert not {"loss_fn", "logits_fn"} & set(ATTACKS.settings(ATTACK))
    with pytest.raises(TypeError, match=rf"attack '{ATTACK}' \(ChannelPGD\) does not accept 'chanels' "
                                        r"\(did you mean 'channels'\?\)"):
        build_attack(dict(type=ATTACK, chanels=[0]), logits_fn=logits_of(model))
    with pytest.raises(TypeError, match=rf"attack '{ATTACK}' \(ChannelPGD\): 'loss_fn' is supplied by equi-ext"):
        EquiPipeline(None, dict(type=ATTACK, loss_fn=None))

    defense = build_defense(dict(type=DEFENSE, quantum=QUANTUM))
    assert type(defense) is Quantise and defense.quantum == QUANTUM
    assert DEFENSES.settings(DEFENSE) == ["pixel_range", "quantum", "seed"]
    with pytest.raises(TypeError, match=rf"defense '{DEFENSE}' \(Quantise\) does not accept 'eps_v'"):
        build_defense(dict(type=DEFENSE, eps_v=4))
    with pytest.raises(TypeError, match=rf"defense '{DEFENSE}' \(Quantise\) does not accept 'eps_v'"):
        EquiPipeline(dict(type=DEFENSE, eps_v=4))


def test_the_new_attack_and_defense_run_through_the_python_api_and_the_pipeline(registered, toy):
    model, images, labels = toy
    # the Python API: the attack built by name, then equi_ext.defend with the defense's name
    adv = build_attack(dict(type=ATTACK, eps=EPS, steps=2, channels=[0, 2]), logits_fn=logits_of(model))(
        images, labels, image_seeds=[0, 1])
    assert torch.equal(adv[:, 1], images[:, 1])  # the channel left out is untouched: ChannelPGD ran, not PGD
    assert (adv[:, [0, 2]] != images[:, [0, 2]]).float().mean() > 0.5
    assert (adv - images).abs().max() == pytest.approx(EPS, abs=1e-3) and adv.min() >= 0 and adv.max() <= 255
    out = equi_ext.defend(model.features, adv, method=DEFENSE, quantum=QUANTUM, model=model)
    assert on_grid(out.images) and not on_grid(adv)  # Quantise ran, not another defense
    assert (out.images - adv).abs().max() <= QUANTUM / 2 and out.images.min() >= 0 and out.images.max() <= 255

    # the path configs take (MMSeg's model.test_cfg, Detectron2's cfg.EQUI): the pipeline both adapters share
    pipeline = EquiPipeline(dict(type=DEFENSE, quantum=QUANTUM), dict(type=ATTACK, eps=EPS, steps=2, channels=[1]))
    attacked, _ = pipeline.run(images, attack=True, defend=False, features=model.features, model=model,
                               seeds=[0, 1], targets=labels, logits_fn=logits_of(model))
    assert torch.equal(attacked[:, [0, 2]], images[:, [0, 2]]) and not torch.equal(attacked[:, 1], images[:, 1])
    assert (attacked - images).abs().max() <= EPS + 1e-4
    final, _ = pipeline.run(images, attack=True, defend=True, features=model.features, model=model,
                            seeds=[0, 1], targets=labels, logits_fn=logits_of(model))
    assert on_grid(final) and (final - attacked).abs().max() <= QUANTUM / 2
    assert torch.equal(final, torch.round(attacked / QUANTUM) * QUANTUM)


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated")
def test_detectron2_configs_name_the_new_attack_and_defense(registered):
    """Registering the classes is all a Detectron2 config needs: each new setting is an ``EQUI`` key of its own
    (its name in capitals), no key table is written."""
    pytest.importorskip("detectron2")
    from equi_ext.detectron2 import load_config
    from equi_ext.detectron2.config import equi_settings, role_keys, setting_keys

    cfg = load_config(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml")
    assert cfg.EQUI.CHANNELS is None and cfg.EQUI.QUANTUM is None  # the class's defaults until set
    assert setting_keys("defense", DEFENSE) == {"QUANTUM": "quantum", "SEED": "seed"}
    assert setting_keys("attack", ATTACK)["CHANNELS"] == "channels"
    cfg.defrost()
    cfg.EQUI.ATTACK, cfg.EQUI.DEFENSE = ATTACK, DEFENSE
    # the demo's equivariance settings do not apply to the new defense: refused, naming the key and the class
    with pytest.raises(ValueError, match=rf"EQUI.DEFENSE_STEPS = 4 does not apply to EQUI.DEFENSE '{DEFENSE}' "
                                         r"\(Quantise\); it takes EQUI.QUANTUM, EQUI.SEED —"):
        equi_settings(cfg)
    for key in role_keys("defense"):
        if key not in setting_keys("defense", DEFENSE) and key != "PRESET":
            cfg.EQUI[key] = None
    settings = equi_settings(cfg)
    assert settings["attack"] == {"type": ATTACK, "eps": 4.0, "steps": 10, "seed": 0}
    # the preset's values of the settings Quantise takes: none (a preset sets no quantum)
    assert settings["defense"] == {"type": DEFENSE, "seed": 0}

    cfg.EQUI.CHANNELS, cfg.EQUI.QUANTUM = (0,), QUANTUM
    settings = equi_settings(cfg)
    assert settings["attack"] == {"type": ATTACK, "eps": 4.0, "steps": 10, "seed": 0, "channels": [0]}
    assert settings["defense"] == {"type": DEFENSE, "seed": 0, "quantum": QUANTUM}
    cfg.EQUI.LAMBDA_E = 1.0
    with pytest.raises(ValueError, match=rf"EQUI.LAMBDA_E = 1.0 does not apply to EQUI.ATTACK '{ATTACK}' "
                                         r"\(ChannelPGD\)"):
        equi_settings(cfg)
    cfg.EQUI.LAMBDA_E = None
    # what EquiGeneralizedRCNN builds from them (a Mask R-CNN has no dense logits)
    pipeline = EquiPipeline(settings["defense"], settings["attack"], needs_logits=False)
    assert type(pipeline.defense) is Quantise and pipeline.defense.quantum == QUANTUM
    assert pipeline.attack_cfg["channels"] == [0]


def test_an_attack_setting_named_like_a_defense_setting_is_refused_when_configs_are_built():
    """A flat ``EQUI`` namespace cannot hold an attack's ``eps_v`` beside the defense's: the config is refused,
    naming the key and where its per-role name goes, instead of one key silently configuring both."""
    pytest.importorskip("detectron2")
    from equi_ext.detectron2 import load_config

    class RadiusPGD(Attack):
        def __init__(self, *, eps_v: float = 1.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)

    ATTACKS.register("recipe_radius_pgd")(RadiusPGD)
    try:
        with pytest.raises(RuntimeError, match=r"EQUI.EPS_V would be set by an attack and a defense .*ROLE_KEYS"):
            load_config(REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml")
    finally:
        ATTACKS._entries.pop("recipe_radius_pgd")


def test_a_defense_that_does_not_declare_the_protocol_is_refused_at_registration():
    """The pipeline and the attacks read what a defense can do off its declarations, never off its class: one
    without them would fail mid-evaluation, so registering it fails, naming what is missing."""
    class Undeclared:
        def __call__(self, images, features=None, **kwargs):
            return DefenseOutput(images=images, loss_trace=images.new_zeros(0, images.shape[0]), score=None)

    with pytest.raises(TypeError, match=r"defense 'recipe_undeclared' \(Undeclared\) does not declare defends, "
                                        r"differentiable, reuses_score_features, equivariance_scorer, score"):
        DEFENSES.register("recipe_undeclared")(Undeclared)
    assert "recipe_undeclared" not in DEFENSES
    for cfg in ("none", "equi", "invariance", "random", dict(type="detect_then_defend", threshold=0.5)):
        assert isinstance(DEFENSES.build(cfg), Defense)


def test_the_new_defense_is_a_robustness_column_without_backend_code(registered):
    """The MMSeg backend gives a defense the run's preset where it takes one and the preset's values of the settings
    it does take otherwise, so a new defense needs no branch there (``random`` gets the preset's ε_v)."""
    from types import SimpleNamespace

    from equi_ext.core.defense import PRESETS
    from equi_ext.evaluation.backends import MMSegBackend

    column = functools.partial(MMSegBackend.defense, SimpleNamespace(preset="fast", framework="mmseg"))
    assert column(DEFENSE) == dict(type=DEFENSE)
    assert column("random") == dict(type="random", eps_v=PRESETS["fast"]["eps_v"])
    assert column("equivariance") == dict(type="equi", preset="fast") and column("vanilla") is None
    assert build_defense(column(DEFENSE)).quantum == 8.0  # its own default: the preset has no quantum
