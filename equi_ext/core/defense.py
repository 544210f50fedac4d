"""The test-time defense optimiser (paper Algorithm 1).

For t = 0 … T−1::

    g   = ∇_{x'} Σ_i cos(g_i⁻¹∘F∘g_i(x'), F(x'))          (both branches differentiated)
    x'  ← x' + η · sign(g / std(g) + σ_t ξ),  ξ ~ N(0, I),  σ_t = (T−1−t)/T   (SGLD → MAP)
    x'  ← clip(x', x − ε_v, x + ε_v) ∩ pixel_range

The same optimiser drives the invariance baseline (pooled features, no g⁻¹), so the
two differ only in their objective, as in the paper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .losses import OBJECTIVES, REDUCTIONS, FeatureFn, Objective, chunked_terms
from .seeding import content_seeds, image_generators, normal_like
from .transforms import Transform, build_transforms
from .validation import (
    PixelRange,
    check_budget,
    check_images,
    check_pixel_range,
    check_positive_int,
)

#: Named settings. ``paper`` is Sec. 4.4 for standard models at ε = 4 (ε_v = 1.5ε, η = 2ε_v,
#: T = 20, K = 8). ``fast`` and ``default`` were picked by the criterion of
#: docs/benchmarks/presets.md on the tuning splits of two segmenters (the demo DeepLabV3 and a UNet;
#: a Fast-SCNN held back): the highest lowest share of the attack's damage recovered under the per-image
#: worst case of PGD transfer, BPDA and SEA through the defense, with at most 3 clean mIoU points lost,
#: within 40× (``fast``) and 100× (``default``) a stock forward at batch 16. Both take one of the 5
#: flip/resize transforms per step with η = ε_v/4; ``default`` takes twice ``fast``'s steps. ``mask_rcnn`` is
#: what the same criterion picked on two Mask R-CNNs (the demo R18-FPN tuned, an R34-FPN held back): the flip and
#: three resizes, all four at every step, with a larger radius; Detectron2 configs start from it.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(transforms="paper", steps=20, eps_v=6.0, step_size=12.0, resample="fixed"),
    "default": dict(transforms="flip_resize", steps=8, eps_v=4.0, step_size=1.0, resample="fixed",
                    transforms_per_step=1),
    "fast": dict(transforms="flip_resize", steps=4, eps_v=4.0, step_size=1.0, resample="fixed",
                 transforms_per_step=1),
    "mask_rcnn": dict(transforms=["hflip", "resize:0.5", "resize:0.75", "resize:1.5"], steps=4, eps_v=6.0,
                      step_size=3.0, resample="fixed", transforms_per_step="all"),
}
OPTIMIZERS = ("sgld", "sgd")
RESAMPLING = ("fixed", "per_step")


def preset_values(preset: str) -> dict[str, Any]:
    """The settings of the named preset; a ValueError listing the presets for an unknown name."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid names: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def sgld_noise_scale(t: int, steps: int) -> float:
    """σ_t = (T−1−t)/T: the noise's standard deviation at step t of T, falling linearly from (T−1)/T to 0, so
    the walk starts as SGLD (exploring) and its last step is the noise-free MAP step."""
    if not 0 <= t < steps:
        raise ValueError(f"step t must be in [0, {steps}); got {t}")
    return (steps - 1 - t) / steps


@dataclass
class DefenseOutput:
    """Result of a defense call.

    Attributes:
        images: purified images, same shape/dtype/range as the input, detached.
        loss_trace: (T, N) mean objective (cosine, in [−1, 1]) at x'_t before each step.
        score: (N,) mean objective at the returned images, or None when not computed.
        flagged: (N,) bool, the images the defense chose to purify (detect-then-defend); None: all of them.
    """

    images: torch.Tensor
    loss_trace: torch.Tensor
    score: torch.Tensor | None
    flagged: torch.Tensor | None = None


@contextlib.contextmanager
def frozen_model(model: nn.Module | None) -> Iterator[None]:
    """Leave ``model`` exactly as found: parameters, buffers, ``requires_grad`` and ``training``.

    The defense only differentiates with respect to the input (``torch.autograd.grad``), so
    parameters and their ``.grad`` are never written; turning ``requires_grad`` off also saves
    building parameter-gradient graphs. Buffers are restored because a module left in
    training mode (e.g. BatchNorm) would otherwise update its running statistics.
    """
    if model is None:
        yield
        return
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    training = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        for p, _ in requires_grad:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in requires_grad:
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag
        with torch.no_grad():
            # An unchanged buffer keeps its version, so graphs built on it stay valid; which ones changed is
            # read in one host transfer, not one synchronisation per buffer.
            flags = [(b != saved).any() for b, saved in buffers]
            changed = torch.stack([f.to(flags[0].device) for f in flags]).tolist() if flags else []
            for (b, saved), differs in zip(buffers, changed):
                if differs:
                    b.copy_(saved)


def check_transform_sizes(transforms: Sequence[Transform], size: tuple[int, int], min_size: int = 8) -> None:
    """Refuse images whose transformed copies would have a side below ``min_size`` pixels."""
    if min(size) < min_size:
        raise ValueError(f"images of size {size[0]}x{size[1]} are smaller than min_size={min_size}")
    for t in transforms:
        out = t.output_size(size)
        if min(out) < min_size:
            raise ValueError(
                f"images of size {size[0]}x{size[1]} are too small for {t}: it yields {out[0]}x{out[1]}, "
                f"below min_size={min_size} pixels per side; use larger images or other transforms"
            )


class EquivarianceDefense:
    """Restore the equivariance of ``feature_fn`` around a possibly attacked image (a ``Defense``:
    ``equi_ext.defenses.base``).

    Args:
        preset: named base settings (``'default'``, ``'fast'`` or ``'paper'``); other arguments override it.
        transforms: a set name (``'paper'``, ``'flip_resize'``, ``'flip_resize_rotate'``) or a list of transform specs.
        steps: T, number of optimiser steps.
        eps_v: L∞ radius of the purification around the input, in pixel levels.
        step_size: η, in pixel levels.
        optimizer: ``'sgld'`` (annealed noise, the paper) or ``'sgd'`` (no noise; Table 12).
        reduction: ``'dense'`` (per-position cosine, default) or ``'flat'`` (authors' code).
        resample: ``'fixed'`` draws random transform parameters once per call,
            ``'per_step'`` re-draws them at every step.
        transforms_per_step: use only this many of the K transforms at each step (``'all'``: every
            one; None: the preset's, one for ``fast`` and ``default``), taken in seeded random order
            so that every transform is used within ⌈K / m⌉ steps: per-step cost falls while all
            constraints stay covered (the authors' code also samples transforms per step). The
            score uses all K.
        chunked: forward and back-propagate one transformed copy at a time (same gradient):
            peak memory is F(x) plus the largest copy instead of all K (docs/benchmarks/speed.md:
            −25% at 1024×2048, −34% for R50-D8 at 512×512, and no slower there).
        seed: base seed of the transform parameters and the SGLD noise.
        pixel_range: value range of the images; budgets are in these units.
        min_size: smallest side, in pixels, any transformed copy may have.
    """

    objective = "equivariance"

    def __init__(
        self,
        *,
        preset: str = "default",
        transforms: str | list[Any] | None = None,
        steps: int | None = None,
        eps_v: float | None = None,
        step_size: float | None = None,
        optimizer: str = "sgld",
        reduction: str = "dense",
        resample: str | None = None,
        seed: int = 0,
        pixel_range: PixelRange | None = None,
        min_size: int = 8,
        transforms_per_step: int | str | None = None,
        chunked: bool = False,
    ) -> None:
        base = preset_values(preset)
        self.pixel_range = check_pixel_range(pixel_range)
        self.stated_pixel_range = None if pixel_range is None else self.pixel_range
        self.transforms = build_transforms(base["transforms"] if transforms is None else transforms)
        self.steps = check_positive_int("steps", base["steps"] if steps is None else steps)
        self.eps_v = check_budget("eps_v", base["eps_v"] if eps_v is None else eps_v, self.pixel_range,
                                  allow_zero=False)
        # Step sizes below one level are legitimate (η = ε_v/8 …); only radii get the "4/255" check.
        self.step_size = check_budget("step_size", base["step_size"] if step_size is None else step_size,
                                      self.pixel_range, allow_zero=False, allow_fraction=True)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
        resample = base["resample"] if resample is None else resample
        if resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {RESAMPLING}; got {resample!r}")
        self.optimizer, self.reduction, self.resample = optimizer, reduction, resample
        self.seed = int(seed)
        self.min_size = check_positive_int("min_size", min_size)
        per_step = base.get("transforms_per_step", "all") if transforms_per_step is None else transforms_per_step
        if isinstance(per_step, str) and per_step != "all":
            raise ValueError(f"transforms_per_step must be a positive int or 'all'; got {per_step!r}")
        self.transforms_per_step = None if per_step == "all" else check_positive_int("transforms_per_step", per_step)
        if not isinstance(chunked, bool):
            raise TypeError(f"chunked must be True or False; got {chunked!r}")
        self.chunked = chunked

    def __repr__(self) -> str:
        per_step = "" if self.transforms_per_step is None else f", transforms_per_step={self.transforms_per_step}"
        chunked = ", chunked=True" if self.chunked else ""
        return (f"{type(self).__name__}(K={len(self.transforms)}, steps={self.steps}, eps_v={self.eps_v}, "
                f"step_size={self.step_size}, optimizer={self.optimizer!r}, resample={self.resample!r}"
                f"{per_step}{chunked})")

    def _terms(self, feature_fn: FeatureFn | Objective, images: torch.Tensor,
               transforms: Sequence[Transform]) -> torch.Tensor:
        if isinstance(feature_fn, Objective) and not (self.chunked and feature_fn.dense):
            return feature_fn.terms(self.objective, images, transforms, self.reduction, self.pixel_range)
        if self.chunked:
            return chunked_terms(self.objective, feature_fn, images, transforms, self.reduction, self.pixel_range)[0]
        return OBJECTIVES[self.objective](feature_fn, images, transforms, self.reduction, self.pixel_range)

    def _terms_and_gradient(self, feature_fn: FeatureFn | Objective, images: torch.Tensor,
                            transforms: Sequence[Transform],
                            create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) terms at ``images`` (which require grad) and the gradient of their sum
        (differentiable itself with ``create_graph``)."""
        if self.chunked:
            if isinstance(feature_fn, Objective) and not feature_fn.dense:
                raise ValueError(f"chunked=True needs dense features; this {type(feature_fn).__name__} computes "
                                 "other terms (e.g. per-box mask logits): use chunked=False")
            return chunked_terms(self.objective, feature_fn, images, transforms, self.reduction, self.pixel_range,
                                 gradient=True)
        terms = self._terms(feature_fn, images, transforms)
        (grad,) = torch.autograd.grad(terms.sum(), images, create_graph=create_graph)
        return terms.detach(), grad

    def _check_sizes(self, transforms: Sequence[Transform], size: tuple[int, int]) -> None:
        check_transform_sizes(transforms, size, self.min_size)

    def _subset_schedule(self, k: int, generator: torch.Generator) -> list[list[int]] | None:
        """Indices of the transforms used at each step (None = all, every step): windows of m
        distinct indices cut from a sequence of random permutations, so the first ⌈K / m⌉ steps
        cover all K and every transform is used about once per K / m steps."""
        m = self.transforms_per_step
        if m is None or m >= k:
            return None
        order: list[int] = []
        schedule = []
        for _ in range(self.steps):
            window: list[int] = []
            while len(window) < m:
                if not order:  # a fresh permutation, with the window's members last so none repeats in it
                    perm = torch.randperm(k, generator=generator).tolist()
                    order = [i for i in perm if i not in window] + [i for i in perm if i in window]
                window.append(order.pop(0))
            schedule.append(window)
        return schedule

    def sample_transforms(self, generator: torch.Generator) -> list[Transform]:
        return [t.sample(generator) for t in self.transforms]

    defends = True
    differentiable = True
    reuses_score_features = False

    @property
    def equivariance_scorer(self) -> EquivarianceDefense | None:
        """This defense's own score is the equivariance score; a subclass with another objective has none."""
        return self if self.objective == "equivariance" else None

    def score(self, images: torch.Tensor, features: FeatureFn, *, seed: int | None = None) -> torch.Tensor:
        """Mean objective over this defense's transforms, per image in [−1, 1] (no gradients).

        For the equivariance defense this is the equivariance score (paper Eq. 2 / K); with the
        same seed it uses the transforms a call of the defense uses.
        """
        check_images(images, self.stated_pixel_range)
        transforms = self.sample_transforms(torch.Generator().manual_seed(self.seed if seed is None else int(seed)))
        self._check_sizes(transforms, tuple(images.shape[-2:]))
        with torch.no_grad():
            return self._terms(features, images, transforms).mean(dim=1)

    def __call__(
        self,
        images: torch.Tensor,
        features: FeatureFn,
        *,
        model: nn.Module | None = None,
        image_seeds: Sequence[int] | None = None,
        seed: int | None = None,
        compute_score: bool = True,
        differentiable: bool = False,
    ) -> DefenseOutput:
        """Purify ``images`` (N, 3, H, W); ``features`` maps images to a dense (N, C, h, w) map
        (or a list of them), or is an :class:`~equi_ext.core.losses.Objective`.

        ``model``, if given, is the module behind ``features``: its ``requires_grad`` and
        ``training`` flags are restored afterwards. ``image_seeds`` (e.g. dataset indices)
        seed each image's noise (default: from its pixel values), so batching never changes it; ``seed`` overrides the
        constructor's seed for this call (EOT draws fresh randomness this way).
        Never modifies ``images``.

        ``differentiable=True`` (for the white-box ``unrolled`` attack) keeps the graph of all
        T steps: the returned images depend on ``images`` (which must require grad) through
        second-order gradients, with sign() passed straight through (its true gradient is zero
        almost everywhere, which would mask the attack by construction). No score is computed.
        """
        check_images(images, self.stated_pixel_range)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("the defense needs input gradients; it cannot run inside torch.inference_mode()")
        if differentiable and not images.requires_grad:
            raise ValueError("differentiable=True needs images that require grad (the attack's leaf)")
        if differentiable and self.chunked:
            raise ValueError("differentiable=True cannot be chunked: the unrolled graph keeps every copy")
        low, high = self.pixel_range
        size = tuple(images.shape[-2:])
        seed = self.seed if seed is None else int(seed)
        transform_gen = torch.Generator().manual_seed(seed)
        noise_gens = image_generators(seed, content_seeds(images, image_seeds), images.shape[0])
        transforms = self.sample_transforms(transform_gen)
        self._check_sizes(transforms, size)
        x = images if differentiable else images.detach()
        x_adv = x.clone()
        trace = []
        schedule = self._subset_schedule(len(transforms), transform_gen)
        with frozen_model(model), torch.enable_grad():
            for t in range(self.steps):
                if self.resample == "per_step" and t > 0:
                    transforms = self.sample_transforms(transform_gen)
                    self._check_sizes(transforms, size)
                if not differentiable:
                    x_adv.requires_grad_(True)
                step_transforms = transforms if schedule is None else [transforms[i] for i in schedule[t]]
                terms, grad = self._terms_and_gradient(features, x_adv, step_transforms, differentiable)
                trace.append(terms.detach().mean(dim=1))
                std = grad.flatten(1).std(dim=1).view(-1, 1, 1, 1)
                direction = grad / (std + 1e-12)
                if self.optimizer == "sgld":
                    direction = direction + sgld_noise_scale(t, self.steps) * normal_like(x, noise_gens)
                if differentiable:  # sign() forward, identity backward (straight-through)
                    x_adv = x_adv + self.step_size * (direction + (direction.sign() - direction).detach())
                else:
                    x_adv = x_adv.detach() + self.step_size * direction.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps_v), x + self.eps_v).clamp(low, high)
            if differentiable:
                return DefenseOutput(images=x_adv, loss_trace=torch.stack(trace), score=None)
            score = None
            if compute_score:
                with torch.no_grad():
                    score = self._terms(features, x_adv, transforms).mean(dim=1)
        return DefenseOutput(images=x_adv.detach(), loss_trace=torch.stack(trace), score=score)


class InvarianceDefense(EquivarianceDefense):
    """The paper's invariance baseline: same optimiser and transforms, pooled features, no g⁻¹."""

    objective = "invariance"


class NoDefense:
    """Identity preprocessor, so 'no defense' runs through the same code paths."""

    defends = False
    differentiable = False
    reuses_score_features = False
    equivariance_scorer = None
    score = None

    def __init__(self, *, pixel_range: PixelRange | None = None) -> None:
        self.pixel_range = check_pixel_range(pixel_range)
        self.stated_pixel_range = None if pixel_range is None else self.pixel_range

    def __call__(
        self,
        images: torch.Tensor,
        features: FeatureFn | None = None,
        *,
        model: nn.Module | None = None,
        image_seeds: Sequence[int] | None = None,
        seed: int | None = None,
        compute_score: bool = True,
    ) -> DefenseOutput:
        check_images(images, self.stated_pixel_range)
        return DefenseOutput(images=images.detach(), loss_trace=images.new_zeros(0, images.shape[0]), score=None)


def equivariance_score(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    *,
    transforms: str | list[Any] = PRESETS["default"]["transforms"],
    reduction: str = "dense",
    seed: int = 0,
    pixel_range: PixelRange | None = None,
) -> torch.Tensor:
    """Paper Eq. 2 normalised by K: mean cosine over transforms, in [−1, 1] per image → (N,).

    High means equivariant; attacked images score lower (paper Table 5).
    """
    scorer = EquivarianceDefense(transforms=transforms, reduction=reduction, seed=seed, pixel_range=pixel_range)
    return scorer.score(images, feature_fn)
