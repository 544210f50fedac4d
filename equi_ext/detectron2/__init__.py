"""Detectron2 adapter: ``EquiGeneralizedRCNN`` (``cfg.EQUI.*``), COCO-AP evaluation, synthetic data."""

from .config import add_equi_config, load_config
from .datasets import register_from_cfg, register_synthetic_shapes
from .evaluation import evaluate_scenarios

__all__ = ["add_equi_config", "evaluate_scenarios", "load_config", "register_from_cfg", "register_synthetic_shapes"]
