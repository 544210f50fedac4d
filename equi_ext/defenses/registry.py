"""The defense registry: ``defense='equi'`` in a config resolves here."""

from ..core.registry import Registry

#: What every defense declares (``equi_ext.defenses.base.Defense``), checked when it is registered.
DEFENSE_CONTRACT = ("defends", "differentiable", "reuses_score_features", "equivariance_scorer", "score")

DEFENSES = Registry("defense", contract=DEFENSE_CONTRACT)
