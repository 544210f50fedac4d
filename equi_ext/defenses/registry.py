"""The defense registry: ``defense='equi'`` in a config resolves here."""

from typing import Any

from ..core.defense import preset_values
from ..core.registry import Registry
from .base import DEFENSE_CONTRACT

DEFENSES = Registry("defense", contract=DEFENSE_CONTRACT)


def preset_settings(name: str, preset: str) -> dict[str, Any]:
    """What the named ``preset`` gives defense ``name``: the preset itself where the defense takes one, else the
    preset's values of the settings it takes (``random``: its ε_v), so every defense column of a run shares one
    source of budgets.

    Raises:
        KeyError: an unknown defense. ValueError: an unknown preset.
    """
    values = preset_values(preset)
    takes = DEFENSES.settings(name)
    if "preset" in takes:
        return {"preset": preset}
    return {key: value for key, value in values.items() if key in takes}
