"""The defense registry: ``defense='equi'`` in a config resolves here."""

from ..core.registry import Registry
from .base import DEFENSE_CONTRACT

DEFENSES = Registry("defense", contract=DEFENSE_CONTRACT)
