"""The attack registry: ``attack='pgd'`` in a config resolves here."""

from ..core.registry import Registry

ATTACKS = Registry("attack")
