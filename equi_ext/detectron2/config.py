"""``cfg.EQUI.*``: the defense and attack settings of a Detectron2 config, and config loading.

An existing Mask R-CNN yaml gains the defense with
``MODEL.META_ARCHITECTURE EquiGeneralizedRCNN EQUI.DEFENSE equi`` (plus ``EQUI.ATTACK pgd``
to evaluate under attack). ``None`` means "the chosen class's default"; a key set for a class that does
not take it (``EQUI.THRESHOLD`` with ``EQUI.DEFENSE equi``) is an error when the model is built.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from ..assets import config_path
from ..attacks import ATTACKS
from ..attacks.training import AdversarialTraining
from ..core.registry import Registry, did_you_mean
from ..defenses import DEFENSES, preset_settings

#: ``_BASE_: model_zoo://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` inherits a config
#: shipped inside the detectron2 package (as ``mmseg::`` does for MMSeg configs).
MODEL_ZOO_PREFIX = "model_zoo://"
FEATURES = ("fpn", "mask_logits", "fpn+mask_logits")


#: Constructor settings that are no ``EQUI`` key: equi-ext supplies them from the model or the run (the pixel range,
#: progress; a Mask R-CNN's training losses have no ignored label or class weights), or keys of their own configure
#: them (``BPDA_ATTACK`` names the attack bpda and eot run, detect_then_defend wraps the equi that the other defense
#: keys configure, ``EOT_SAMPLES`` is eot's ``samples``).
NOT_KEYS = frozenset({"pixel_range", "progress", "ignore_index", "class_weights", "attack", "defense", "eot_samples"})
#: A setting's key is its name in capitals; where an attack and a defense take settings of one name, the key says
#: whose it is. ``SEED`` alone is one key for both, on purpose: one seed for the run.
ROLE_KEYS = {"attack": {"step_size": "ATTACK_STEP_SIZE", "transforms": "ATTACK_TRANSFORMS",
                        "reduction": "ATTACK_REDUCTION", "samples": "EOT_SAMPLES"},
             "defense": {"steps": "DEFENSE_STEPS", "head": "SSL_HEAD"}}
SHARED_KEYS = frozenset({"SEED"})
#: Setting keys whose default is not None (None: the chosen class's own default). ``PRESET``: the settings the
#: presets' criterion picked on Mask R-CNNs, which the keys set beside it override.
SETTING_DEFAULTS = {"PRESET": "mask_rcnn", "SEED": 0, "EPS": 4.0, "STEPS": 10}


def _registry(role: str) -> Registry:
    return {"attack": ATTACKS, "defense": DEFENSES}[role]


def setting_keys(role: str, name: str) -> dict[str, str]:
    """``EQUI`` key → constructor argument, for each setting of the registered ``role`` (attack or defense) ``name``
    that a config sets. Raises KeyError for an unknown name."""
    return {ROLE_KEYS[role].get(arg, arg.upper()): arg for arg in _registry(role).settings(name) if arg not in NOT_KEYS}


def role_keys(role: str) -> list[str]:
    """Every ``EQUI`` key that configures some registered attack (``role`` attack) or defense."""
    registry = _registry(role)
    return sorted({key for name in registry.names() for key in setting_keys(role, name)})


def add_equi_config(cfg: CfgNode) -> CfgNode:
    """Add the ``EQUI`` namespace with its defaults to ``cfg`` (idempotent); returns ``cfg``.

    Besides the keys below, every setting of a registered attack or defense is a key (``setting_keys``), at None
    (the class's default) unless ``SETTING_DEFAULTS`` gives it a value: a new setting needs no key written here.

    Raises:
        RuntimeError: an attack and a defense setting would share a key, or a setting would take a key below.
    """
    if "EQUI" in cfg:
        return cfg
    cfg.EQUI = CfgNode()
    # Defense: a name of equi_ext.defenses.DEFENSES (none, equi, invariance, random, rotation, contrastive,
    # detect_then_defend).
    cfg.EQUI.DEFENSE = "none"
    # What the equivariance is measured on: FPN maps (dense, overlap-masked), per-ROI mask
    # logits (box-aware: boxes mapped through each transform), or both summed.
    cfg.EQUI.FEATURE = "fpn"
    cfg.EQUI.FPN_LEVELS = []  # empty = the three finest backbone outputs (p2–p4 of an FPN; a C4 backbone's one)
    cfg.EQUI.ROI_SCORE_THRESH = 0.5  # mask_logits: detections on x scoring at least this give the boxes
    # Attack: a name of equi_ext.attacks.ATTACKS taking a task loss ('' = no attack).
    cfg.EQUI.ATTACK = ""
    # bpda / eot: the attack they run through the defense (None = pgd); the attack keys then configure it,
    # e.g. EQUI.ATTACK bpda EQUI.BPDA_ATTACK apgd EQUI.STEPS 100: APGD-100 through the defense.
    cfg.EQUI.BPDA_ATTACK = None
    # Adversarial training (tools/train_net.py): each training batch is replaced by this attack on the model's
    # training losses ('' = standard training); see equi_ext.attacks.training.AdversarialTraining.
    cfg.EQUI.ADV_TRAIN = CfgNode()
    cfg.EQUI.ADV_TRAIN.ATTACK = ""  # a name of equi_ext.attacks.ATTACKS taking a task loss, e.g. 'pgd', 'apgd'
    cfg.EQUI.ADV_TRAIN.EPS = 4.0  # L∞ budget, pixel levels
    cfg.EQUI.ADV_TRAIN.STEPS = 2
    cfg.EQUI.ADV_TRAIN.STEP_SIZE = None  # None = the attack's own rule (PGD: 2.5·min(EPS, 8)/STEPS)
    cfg.EQUI.ADV_TRAIN.CLEAN_WEIGHT = 0.0  # loss = w·L(clean) + (1 − w)·L(attacked)
    cfg.EQUI.ADV_TRAIN.BN = "eval"  # normalisation layers during the attack: 'eval' (running statistics) or 'train'
    # A synthetic-shapes root registered as <prefix>_train / <prefix>_val before building loaders.
    cfg.EQUI.SYNTHETIC_ROOT = ""
    attack_keys, defense_keys = set(role_keys("attack")), set(role_keys("defense"))
    clashes = ((attack_keys & defense_keys) - SHARED_KEYS) | ((attack_keys | defense_keys) & set(cfg.EQUI))
    if clashes:
        raise RuntimeError(f"EQUI.{sorted(clashes)[0]} would be set by an attack and a defense (or is an EQUI key of "
                           f"its own); give the setting a key per role in equi_ext.detectron2.config.ROLE_KEYS")
    for key in sorted(attack_keys | defense_keys):
        cfg.EQUI[key] = SETTING_DEFAULTS.get(key)
    return cfg


def _merge_dicts(update: dict, base: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_dicts(value, base[key])
        else:
            base[key] = value
    return base


def _load_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a yaml config with its ``_BASE_`` chain: relative paths or ``model_zoo://`` names (``chain``: the
    configs that inherit this one, so a cycle is named instead of recursing forever)."""
    chain = (*chain, Path(path).resolve())
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    base = raw.pop("_BASE_", None)
    if base is None:
        return raw
    if str(base).startswith(MODEL_ZOO_PREFIX):
        try:
            base_file = model_zoo.get_config_file(base[len(MODEL_ZOO_PREFIX):])
        except RuntimeError as err:
            raise FileNotFoundError(f"{path}: _BASE_ {base!r} is not a Detectron2 model-zoo config ({err})") from None
        base_dict = CfgNode.load_yaml_with_base(base_file, allow_unsafe=False)
    else:
        base_path = Path(base).expanduser()
        base_path = base_path if base_path.is_absolute() else path.parent / base_path
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: _BASE_ {str(base_path)!r} does not exist")
        if base_path.resolve() in chain:
            raise ValueError("_BASE_ cycle: " + " -> ".join(str(p) for p in (*chain, base_path.resolve())))
        base_dict = _load_yaml(base_path, chain)
    return _merge_dicts(raw, base_dict)


@contextlib.contextmanager
def _named_unknown_keys(cfg: CfgNode) -> Iterator[None]:
    """yacs refuses an unknown key with an ``AssertionError`` (command line) or a bare ``KeyError`` (yaml); make it a
    ``KeyError`` that names the key and the nearest key there is."""
    try:
        yield
    except (AssertionError, KeyError) as err:
        found = re.search(r"Non-existent (?:config )?key: ([\w.]+)", str(err))
        if found is None:
            raise
        key = found.group(1)
        parent, _, leaf = key.rpartition(".")
        node = cfg
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, dict) else None
        hint = did_you_mean(leaf, list(node)) if isinstance(node, dict) else ""
        raise KeyError(f"{key} is not a Detectron2 or equi-ext config key{hint}") from None


def load_config(config_file: str | os.PathLike, opts: list[str] | None = None) -> CfgNode:
    """Detectron2's defaults + ``EQUI`` + ``config_file`` (a path or ``equi_ext::NAME``) + ``opts`` (``KEY VALUE`` pairs), checked.

    Raises:
        FileNotFoundError: the config (or its model-zoo base) does not exist.
        KeyError: an unknown config key, or an unknown ``EQUI.DEFENSE`` / ``EQUI.ATTACK``.
        ValueError: an unknown ``EQUI.FEATURE``, or a set ``EQUI`` key the chosen defense/attack does not take.
    """
    path = Path(config_path(config_file))
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    cfg = add_equi_config(get_cfg())
    with _named_unknown_keys(cfg):
        cfg.merge_from_other_cfg(CfgNode(_load_yaml(path)))
        if opts:
            cfg.merge_from_list(list(opts))
    if cfg.EQUI.FEATURE not in FEATURES:
        raise ValueError(f"EQUI.FEATURE must be one of {FEATURES}; got {cfg.EQUI.FEATURE!r}")
    if cfg.EQUI.CHUNKED and cfg.EQUI.FEATURE != "fpn":
        raise ValueError(f"EQUI.CHUNKED computes dense FPN features one copy at a time; EQUI.FEATURE "
                         f"{cfg.EQUI.FEATURE!r} compares per-box mask logits: unset EQUI.CHUNKED or use fpn")
    equi_settings(cfg)
    return cfg


def _settings(role: str, name: str, equi_cfg, keys: list[str]) -> tuple[dict, list[str]]:
    """The set ``keys`` of ``equi_cfg`` that ``name`` takes, as its constructor settings, and the set ones it does
    not take. A key at None (or '') is not set."""
    takes = setting_keys(role, name)
    settings, rejected = {}, []
    for key in keys:
        value = equi_cfg.get(key)
        if value is None or value == "":
            continue
        if key in takes:
            settings[takes[key]] = list(value) if isinstance(value, tuple) else value
        else:
            rejected.append(key)
    return settings, rejected


def _defense_settings(name: str, equi_cfg, keys: list[str]) -> tuple[dict, list[str]]:
    """As :func:`_settings` for a defense, on top of what ``EQUI.PRESET`` gives it (``preset_settings``: the preset
    itself, or its values of the settings the defense takes)."""
    preset = equi_cfg.get("PRESET")
    settings, rejected = _settings("defense", name, equi_cfg, [key for key in keys if key != "PRESET"])
    return {**(preset_settings(name, preset) if preset else {}), **settings}, rejected


def _refuse(rejected: list[str], equi_cfg, role: str, name: str, chosen_by: str) -> None:
    """A ValueError for the first ``rejected`` key, naming the class ``name`` that ``EQUI.<chosen_by>`` chose."""
    if rejected:
        cls = _registry(role).get(name)
        takes = [f"EQUI.{key}" for key in sorted(setting_keys(role, name))]
        raise ValueError(f"EQUI.{rejected[0]} = {equi_cfg.get(rejected[0])!r} does not apply to EQUI.{chosen_by} "
                         f"{name!r} ({cls.__name__}); it takes {', '.join(takes) or 'no EQUI keys'} — unset the key "
                         f"(None) or choose another EQUI.{chosen_by}")


def equi_settings(cfg) -> dict[str, Any]:
    """The defense and attack configs (registry dicts) and views that ``cfg.EQUI`` describes.

    Raises:
        KeyError: an unknown ``EQUI.DEFENSE`` / ``EQUI.ATTACK``.
        ValueError: a set ``EQUI`` key that the chosen defense or attack does not accept, or an unknown preset.
    """
    equi = cfg.EQUI
    defense = None
    if equi.DEFENSE and equi.DEFENSE != "none":
        defense_settings, rejected = _defense_settings(equi.DEFENSE, equi, role_keys("defense"))
        defense = {"type": equi.DEFENSE, **defense_settings}
        if equi.DEFENSE == "detect_then_defend":  # the keys it does not take configure the defense it wraps
            inner, rejected = _defense_settings("equi", equi, rejected)
            defense["defense"] = {"type": "equi", **inner}
            _refuse(rejected, equi, "defense", "equi", "DEFENSE")
        _refuse(rejected, equi, "defense", equi.DEFENSE, "DEFENSE")
    attack = None
    inner = equi.get("BPDA_ATTACK")
    if inner and equi.ATTACK not in ("bpda", "eot"):
        raise ValueError(f"EQUI.BPDA_ATTACK = {inner!r} names the attack that EQUI.ATTACK bpda or eot runs through "
                         f"the defense; EQUI.ATTACK is {equi.ATTACK!r}")
    if inner:  # the other attack keys configure the wrapped attack
        inner_settings, rejected = _settings("attack", inner, equi,
                                             [key for key in role_keys("attack") if key != "EOT_SAMPLES"])
        _refuse(rejected, equi, "attack", inner, "BPDA_ATTACK")
        attack = {"type": equi.ATTACK, "attack": {"type": inner, **inner_settings}}
        if equi.ATTACK == "eot" and equi.EOT_SAMPLES is not None:
            attack["samples"] = equi.EOT_SAMPLES
    elif equi.ATTACK:
        attack_settings, rejected = _settings("attack", equi.ATTACK, equi, role_keys("attack"))
        _refuse(rejected, equi, "attack", equi.ATTACK, "ATTACK")
        attack = {"type": equi.ATTACK, **attack_settings}
    return dict(defense=defense, attack=attack, feature=equi.FEATURE, levels=list(equi.FPN_LEVELS),
                roi_score_thresh=float(equi.ROI_SCORE_THRESH), adversarial=adversarial_training(equi))


def adversarial_training(equi) -> AdversarialTraining | None:
    """``EQUI.ADV_TRAIN`` as adversarial-training settings (None when ``ATTACK`` is empty).

    Raises:
        KeyError / TypeError / ValueError: an unknown attack, a key it does not take, an attack that needs
            dense logits, features or a defense, or a bad budget or weight.
    """
    adv = equi.get("ADV_TRAIN")
    if adv is None or not adv.ATTACK:
        return None
    attack = {"type": adv.ATTACK, "eps": adv.EPS, "steps": adv.STEPS}
    if adv.STEP_SIZE is not None:
        attack["step_size"] = adv.STEP_SIZE
    settings = AdversarialTraining(attack=attack, clean_weight=adv.CLEAN_WEIGHT, bn=adv.BN)
    if settings.needs_logits:
        raise ValueError(f"EQUI.ADV_TRAIN.ATTACK {adv.ATTACK!r} weights pixels by dense logits, which a Mask R-CNN "
                         f"has not; use an attack on the training losses (pgd, apgd, mim, ifgsm)")
    return settings
