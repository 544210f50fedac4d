"""The defense registry: ``defense='equi'`` in a config resolves here."""

from ..core.registry import Registry

DEFENSES = Registry("defense")
