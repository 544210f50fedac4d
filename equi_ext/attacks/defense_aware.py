"""Attacks that know about the defense: adaptive (paper Eq. 6), BPDA and EOT around any attack, unrolled.

A defense is seen by them as a randomised preprocessor ``h(images, seed) -> images``
(``defense_preprocessor`` builds one from any registered defense).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.losses import FeatureFn, equivariance_terms
from ..core.transforms import sample_transforms
from ..core.validation import PixelRange, check_positive_int
from .base import DefenseDraws, Preprocessor, attack_kwargs, check_preprocessor
from .pixelwise import PGD
from .registry import ATTACKS


def defense_preprocessor(defense: Any, feature_fn: FeatureFn, *, model: nn.Module | None = None,
                         image_seeds: Sequence[int] | None = None, differentiable: bool = False) -> Preprocessor:
    """Wrap ``defense(images, feature_fn, ...)`` as ``h(images, seed) -> purified images``;
    ``differentiable`` keeps the defense's unrolled graph (equivariance-type defenses only)."""
    if differentiable and not getattr(defense, "differentiable", False):
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
class BPDA:
    """Any registered attack against the deployed defense: BPDA (Athalye et al. 2018, arXiv:1802.00420),
    with EOT over ``eot_samples`` draws of the defense's randomness.

    The inner attack (``attack``: a name or config; default ``pgd`` with this config's other settings, so
    ``dict(type='bpda', eps=4, steps=10)`` is PGD-10 through the defense) evaluates its objective on the
    purified image h(x) instead of x, and applies the gradient taken there to x (identity backward),
    averaged over the draws. Attacks that keep their best iterate (APGD, SEA) see the deployed defense as
    the first draw, so what they keep is judged by what the evaluation sees; the others use fresh draws
    each step (seeds step·n + j).
    """

    needs_defense = True
    #: Without ``attack``, the settings are PGD's.
    forwards_settings_to = PGD
    model_views = ("loss_fn", "logits_fn", "feature_fn", "transforms", "defense")

    def __init__(self, *, defense: Preprocessor, attack: str | dict | None = None, eot_samples: int = 1,
                 loss_fn: Any = None, logits_fn: Any = None, feature_fn: FeatureFn | None = None,
                 transforms: Any = None, ignore_index: int | None = None, pixel_range: PixelRange | None = None,
                 **settings: Any) -> None:
        check_preprocessor(defense)
        inner = self.inner_config(attack, settings)
        cls = ATTACKS.check_keys(inner["type"], [k for k in inner if k != "type"])
        if "defense" in cls.needs(inner):
            raise ValueError(f"bpda wraps an attack on the model; {inner['type']!r} already runs through the defense")
        # the framework's label to ignore and pixel range, unless the inner config sets them
        extra = {key: value for key, value in (("ignore_index", ignore_index), ("pixel_range", pixel_range))
                 if value is not None and key not in inner}
        self.attack = cls(**attack_kwargs(cls, inner, loss_fn=loss_fn, logits_fn=logits_fn, feature_fn=feature_fn,
                                          preprocessor=None, transforms=transforms, **extra))
        self.attack.draws = DefenseDraws(defense, check_positive_int("eot_samples", eot_samples),
                                         deployed_first=cls.selects_iterates)

    @staticmethod
    def inner_config(attack: str | dict | None, settings: dict) -> dict:
        """The inner attack's config: ``attack`` (a name or dict), or PGD with ``settings``."""
        if attack is None:
            return {"type": "pgd", **settings}
        if settings:
            raise TypeError(f"with attack= set, put the inner attack's settings inside it; got {sorted(settings)} "
                            f"beside it")
        inner = {"type": attack} if isinstance(attack, str) else dict(attack)
        if not isinstance(inner.get("type"), str):
            raise TypeError(f"attack must be an attack name or a dict with a 'type' key; got {attack!r}")
        return inner

    @classmethod
    def needs(cls, settings: dict) -> set[str]:
        """The inner attack's needs (PGD's without ``attack``), plus the defense."""
        inner = cls.inner_config(settings.get("attack") or "pgd", {})
        return ATTACKS.get(inner["type"]).needs(inner) | {"defense"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.attack!r}, eot_samples={self.attack.draws.samples})"

    def __call__(self, images: torch.Tensor, targets: Any, *, image_seeds: Sequence[int] | None = None) -> torch.Tensor:
        return self.attack(images, targets, image_seeds=image_seeds)


@ATTACKS.register("eot")
class EOT(BPDA):
    """``bpda`` with ``samples`` draws per evaluation (default 4): expectation over transformation
    (Athalye et al. 2018) of the BPDA gradient, over the defense's randomness (transforms, SGLD noise)."""

    def __init__(self, *, samples: int = 4, **kwargs: Any) -> None:
        if "eot_samples" in kwargs:
            raise TypeError("eot takes samples=; eot_samples is bpda's name for it")
        super().__init__(eot_samples=samples, **kwargs)


@ATTACKS.register("unrolled")
class Unrolled(PGD):
    """White-box through the whole defense: the task gradient flows back through all T
    optimiser steps (second-order gradients of the equivariance loss), with sign() passed
    straight through. Costly (memory and time grow with T): meant for small T, as a check
    that BPDA's identity approximation is not what makes the defense look robust.

    ``defense`` must be a preprocessor built with ``defense_preprocessor(..., differentiable=True)``;
    each step draws the defense's randomness with seed = step.
    """

    differentiable_defense = True
    needs_defense = True
    model_views = (*PGD.model_views, "defense")

    def __init__(self, *, defense: Preprocessor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.defense = check_preprocessor(defense)

    def gradient(self, adv, targets, step):
        leaf = adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.task_loss(self.defense(leaf, step), targets), leaf)
        return grad


def sweep_lambda(lambdas: Iterable[float], make_attack: Callable[[float], Adaptive],
                 evaluate: Callable[[Adaptive], float]) -> dict[float, float]:
    """Run the adaptive attack for each λ_e; ``evaluate`` returns the metric under it (lower = stronger).

    Returns {λ_e: metric}; the strongest λ_e is ``min(result, key=result.get)``.
    """
    results = {}
    for lam in lambdas:
        results[float(lam)] = float(evaluate(make_attack(float(lam))))
    return results
