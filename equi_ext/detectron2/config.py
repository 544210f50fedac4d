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

import yaml
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from ..assets import config_path
from ..core.registry import did_you_mean

#: ``_BASE_: model_zoo://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` inherits a config
#: shipped inside the detectron2 package (as ``mmseg::`` does for MMSeg configs).
MODEL_ZOO_PREFIX = "model_zoo://"
FEATURES = ("fpn", "mask_logits", "fpn+mask_logits")


def add_equi_config(cfg: CfgNode) -> CfgNode:
    """Add the ``EQUI`` namespace with its defaults to ``cfg`` (idempotent); returns ``cfg``."""
    if "EQUI" in cfg:
        return cfg
    cfg.EQUI = CfgNode()
    # Defense: a name of equi_ext.defenses.DEFENSES (none, equi, invariance, random, rotation, contrastive,
    # detect_then_defend).
    cfg.EQUI.DEFENSE = "none"
    cfg.EQUI.SSL_HEAD = None  # rotation/contrastive: head checkpoint from tools/train_ssl_head.py
    # equi/invariance/rotation/contrastive: named base settings; None = the Detectron2 defaults for the keys left at
    # None (meta_arch.DETECTRON2_DEFAULTS: flip + resizes 0.5/0.75/1.5, all per step, T 4, ε_v 6, η 3)
    cfg.EQUI.PRESET = None
    cfg.EQUI.TRANSFORMS = None  # a transform-set name ('flip_resize', 'flip_resize_rotate', 'paper'); None = preset
    cfg.EQUI.DEFENSE_STEPS = None  # T
    cfg.EQUI.EPS_V = None  # purification radius, pixel levels (0-255)
    cfg.EQUI.STEP_SIZE = None  # η, pixel levels
    cfg.EQUI.TRANSFORMS_PER_STEP = None  # transforms used per step: an int or 'all'; None = the preset's
    cfg.EQUI.THRESHOLD = None  # detect_then_defend: score under which an image is defended
    cfg.EQUI.SEED = 0
    # True: forward and back-propagate one transformed copy at a time (same result, a fraction of the memory of
    # all K copies in one graph; for large images). Dense FPN features only (EQUI.FEATURE fpn).
    cfg.EQUI.CHUNKED = None
    # What the equivariance is measured on: FPN maps (dense, overlap-masked), per-ROI mask
    # logits (box-aware: boxes mapped through each transform), or both summed.
    cfg.EQUI.FEATURE = "fpn"
    cfg.EQUI.FPN_LEVELS = []  # empty = the three finest backbone outputs (p2–p4 of an FPN; a C4 backbone's one)
    cfg.EQUI.ROI_SCORE_THRESH = 0.5  # mask_logits: detections on x scoring at least this give the boxes
    # Attack: a name of equi_ext.attacks.ATTACKS taking a task loss ('' = no attack).
    cfg.EQUI.ATTACK = ""
    cfg.EQUI.EPS = 4.0  # L∞ budget, pixel levels
    cfg.EQUI.STEPS = 10
    cfg.EQUI.ATTACK_STEP_SIZE = None  # None = 2.5·min(EPS, 8)/STEPS
    cfg.EQUI.LAMBDA_E = None  # adaptive attack only (None = 1.0)
    cfg.EQUI.EOT_SAMPLES = None  # eot attack only (None = 4)
    # bpda / eot: the attack they run through the defense (None = pgd); the keys above then configure it,
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
    from .modeling.meta_arch import equi_settings

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
