"""What every registered defense offers the pipeline and the attacks: one protocol, so that neither has to ask
which class a defense is.

A defense is a callable ``defense(images, features, *, model, image_seeds, seed, compute_score) -> DefenseOutput``
(``images`` RGB in its ``pixel_range``, ``features`` the model's view) that declares, as class attributes, what
else it can do; the registry refuses a class that does not (``DEFENSE_CONTRACT``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ..core.defense import DefenseOutput
from ..core.losses import FeatureFn
from ..core.validation import PixelRange


@runtime_checkable
class Defense(Protocol):
    """The contract of a registered defense (``DEFENSES``).

    Attributes:
        defends: False only for the defense that changes nothing (``none``): a scenario with it is not defended.
        differentiable: the defense's ``__call__`` also takes ``differentiable=True`` and then keeps the graph
            through its steps, so an unrolled attack can differentiate through it.
        reuses_score_features: most images leave the defense unchanged after a no-grad score of them
            (detect-then-defend), so an adapter may predict them from the score's backbone outputs.
        equivariance_scorer: the equivariance defense whose ``score`` this defense computes while defending
            (its ``DefenseOutput.score``) and whose transforms a white-box attacker targets; None: none.
        score: ``score(images, features, *, seed=None) -> (N,)`` per-image score (higher: more like a clean image),
            or None for a defense without one.
    """

    pixel_range: PixelRange
    defends: ClassVar[bool]
    differentiable: ClassVar[bool]
    reuses_score_features: ClassVar[bool]

    @property
    def equivariance_scorer(self) -> Any: ...

    score: Any

    def __call__(self, images: torch.Tensor, features: FeatureFn | None, *, model: nn.Module | None = None,
                 image_seeds: Sequence[int] | None = None, seed: int | None = None,
                 compute_score: bool = True) -> DefenseOutput: ...


#: The declarations the registry checks on each defense class it registers (``Defense``'s, less the instance's
#: ``pixel_range``).
DEFENSE_CONTRACT = ("defends", "differentiable", "reuses_score_features", "equivariance_scorer", "score")

__all__ = ["DEFENSE_CONTRACT", "Defense", "DefenseOutput"]
