"""Attacks for dense tasks, one class each, called as ``adv = attack(images, targets)``."""

from .apgd import APGD, SEA
from .base import Attack, pixel_cross_entropy
from .defense_aware import BPDA, EOT, Adaptive, Unrolled, defense_preprocessor, sweep_lambda
from .pixelwise import CW, IFGSM, MIM, PGD, CosPGD, Houdini, SegPGD, Targeted
from .registry import ATTACKS


def build_attack(cfg, **defaults):
    """Build an attack from ``'pgd'`` or ``dict(type='pgd', eps=4, steps=20)``."""
    return ATTACKS.build(cfg, **defaults)


__all__ = [
    "APGD", "ATTACKS", "Adaptive", "Attack", "BPDA", "CW", "CosPGD", "EOT", "Houdini", "IFGSM", "MIM", "PGD",
    "SEA", "SegPGD", "Targeted", "Unrolled", "build_attack", "defense_preprocessor", "pixel_cross_entropy",
    "sweep_lambda",
]
