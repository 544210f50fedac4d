"""Attacks that know about the defense: adaptive (paper Eq. 6), BPDA, EOT and unrolled.

A defense is seen by BPDA/EOT as a randomised preprocessor ``h(images, seed) -> images``
(``defense_preprocessor`` builds one from any registered defense).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.losses import FeatureFn, equivariance_terms
from ..core.optimizer import EquivarianceDefense
from ..core.transforms import sample_transforms
from ..core.validation import check_positive_int
from .pixelwise import PGD
from .registry import ATTACKS

#: ``h(images, seed)``: the defense as a preprocessor; ``seed=None`` is its own (deployed) randomness.
Preprocessor = Callable[[torch.Tensor, int | None], torch.Tensor]


def defense_preprocessor(defense: Any, feature_fn: FeatureFn, *, model: nn.Module | None = None,
                         image_seeds: Sequence[int] | None = None, differentiable: bool = False) -> Preprocessor:
    """Wrap ``defense(images, feature_fn, ...)`` as ``h(images, seed) -> purified images``;
    ``differentiable`` keeps the defense's unrolled graph (equivariance-type defenses only)."""
    if differentiable and not isinstance(defense, EquivarianceDefense):
        raise TypeError(f"the unrolled attack differentiates through an equivariance-type defense; "
                        f"{type(defense).__name__} has no differentiable form (use bpda)")
    extra = dict(differentiable=True) if differentiable else {}

    def preprocess(images: torch.Tensor, seed: int) -> torch.Tensor:
        return defense(images, feature_fn, model=model, image_seeds=image_seeds, seed=seed,
                       compute_score=False, **extra).images

    return preprocess


@ATTACKS.register("adaptive")
class Adaptive(PGD):
    """Maximise L_task + λ_e · Σ_i cos(g_i⁻¹∘F∘g_i(x), F(x)) (paper Eq. 6).

    The equivariance term is high when features are equivariant, so a positive λ_e fools
    the task while keeping equivariance intact, leaving the defense nothing to repair. A
    white-box attacker uses the defense's own transforms (the MMSeg adapter passes them).
    """

    needs_features = True
    model_views = (*PGD.model_views, "feature_fn")

    def __init__(self, *, feature_fn: FeatureFn, lambda_e: float = 1.0, transforms: str | list = "flip_resize",
                 transform_seed: int = 0, reduction: str = "dense", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(feature_fn):
            raise TypeError(f"feature_fn must be callable; got {type(feature_fn).__name__}")
        self.feature_fn = feature_fn
        self.lambda_e = float(lambda_e)
        self.transforms = sample_transforms(transforms, transform_seed)
        self.reduction = reduction

    def objective(self, adv, targets, step):
        task = self.task_loss(adv, targets)
        if self.lambda_e == 0:
            return task
        equi = equivariance_terms(self.feature_fn, adv, self.transforms, self.reduction, self.pixel_range)
        return task + self.lambda_e * equi.sum(dim=1).mean()


@ATTACKS.register("bpda")
class BPDA(PGD):
    """Backward-pass differentiable approximation (Athalye et al. 2018, arXiv:1802.00420).

    Forward through the defense h(x) = x + r, backward as identity through h: the task
    gradient is taken at h(x_adv) and applied to x_adv. Each outer step draws fresh
    defense randomness (seed = step), as a deployed defense would.
    """

    differentiable_defense = False  # the preprocessor's output is used detached
    needs_defense = True
    model_views = (*PGD.model_views, "defense")

    def __init__(self, *, defense: Preprocessor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(defense):
            raise TypeError(f"defense must be a callable preprocessor h(images, seed); got {type(defense).__name__}")
        self.defense = defense

    def defended_gradient(self, adv: torch.Tensor, targets: Any, seed: int) -> torch.Tensor:
        purified = self.defense(adv.detach(), seed).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.task_loss(purified, targets), purified)
        return grad

    def gradient(self, adv, targets, step):
        return self.defended_gradient(adv, targets, seed=step)


@ATTACKS.register("unrolled")
class Unrolled(BPDA):
    """White-box through the whole defense: the task gradient flows back through all T
    optimiser steps (second-order gradients of the equivariance loss), with sign() passed
    straight through. Costly (memory and time grow with T): meant for small T, as a check
    that BPDA's identity approximation is not what makes the defense look robust.

    ``defense`` must be a preprocessor built with ``defense_preprocessor(..., differentiable=True)``.
    """

    differentiable_defense = True

    def defended_gradient(self, adv: torch.Tensor, targets: Any, seed: int) -> torch.Tensor:
        leaf = adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.task_loss(self.defense(leaf, seed), targets), leaf)
        return grad


@ATTACKS.register("eot")
class EOT(BPDA):
    """Expectation over transformation (Athalye et al. 2018) of the BPDA gradient: average it over
    ``samples`` independent draws of the defense's randomness (transforms, SGLD noise)."""

    def __init__(self, *, samples: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.samples = check_positive_int("samples", samples)

    def gradient(self, adv, targets, step):
        grads = [self.defended_gradient(adv, targets, seed=step * self.samples + j) for j in range(self.samples)]
        return torch.stack(grads).mean(dim=0)


def sweep_lambda(lambdas: Iterable[float], make_attack: Callable[[float], Adaptive],
                 evaluate: Callable[[Adaptive], float]) -> dict[float, float]:
    """Run the adaptive attack for each λ_e; ``evaluate`` returns the metric under it (lower = stronger).

    Returns {λ_e: metric}; the strongest λ_e is ``min(result, key=result.get)``.
    """
    results = {}
    for lam in lambdas:
        results[float(lam)] = float(evaluate(make_attack(float(lam))))
    return results
