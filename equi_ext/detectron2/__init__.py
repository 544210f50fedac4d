"""Detectron2 adapter: ``EquiGeneralizedRCNN`` (``cfg.EQUI.*``), COCO-AP evaluation, synthetic data."""

from ..frameworks import require

require("detectron2", ["detectron2.modeling"], {"detectron2": ("0.6", "1"), "pb1-detectron2": ("0.6", "1")})

from .config import add_equi_config, load_config  # noqa: E402
from .datasets import register_from_cfg, register_synthetic_shapes  # noqa: E402
from .evaluation import evaluate_scenarios  # noqa: E402

__all__ = ["add_equi_config", "evaluate_scenarios", "load_config", "register_from_cfg", "register_synthetic_shapes"]
