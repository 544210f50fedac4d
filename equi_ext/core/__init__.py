"""Framework-free torch core: transforms, objectives, the defense optimiser, scores.

Nothing here imports mmseg, mmengine, mmcv or detectron2.
"""

from .defense import PRESETS, DefenseOutput, EquivarianceDefense, InvarianceDefense, equivariance_score
from .losses import equivariance_terms, invariance_terms
from .transforms import TRANSFORM_SETS, ColorJitter, HFlip, Resize, Rotate, Transform, build_transforms

__all__ = [
    "PRESETS", "TRANSFORM_SETS", "ColorJitter", "DefenseOutput", "EquivarianceDefense", "HFlip",
    "InvarianceDefense", "Resize", "Rotate", "Transform", "build_transforms", "equivariance_score",
    "equivariance_terms", "invariance_terms",
]
