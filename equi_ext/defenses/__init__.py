"""Test-time defenses, built by name from configs (``defense='equi'`` or a dict)."""

from ..core.defense import EquivarianceDefense, InvarianceDefense, NoDefense
from .baselines import DetectThenDefend, RandomNoiseDefense
from .registry import DEFENSES, preset_settings
from .ssl import ContrastiveDefense, RotationDefense

DEFENSES.register("none")(NoDefense)
DEFENSES.register("equi")(EquivarianceDefense)
DEFENSES.register("invariance")(InvarianceDefense)


def build_defense(cfg, **defaults):
    """Build a defense from ``'equi'`` or ``dict(type='equi', eps_v=6, ...)``."""
    return DEFENSES.build(cfg, **defaults)


__all__ = ["DEFENSES", "ContrastiveDefense", "DetectThenDefend", "EquivarianceDefense", "InvarianceDefense",
           "NoDefense", "RandomNoiseDefense", "RotationDefense", "build_defense", "preset_settings"]
