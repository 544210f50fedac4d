"""Baseline and composite defenses that reuse the core's pieces.

* ``random`` (Kumar et al. 2020, the paper's "Random" column): uniform noise within ε_v.
* ``detect_then_defend`` (paper Appendix): score each image by its equivariance and run the
  wrapped defense only on images scoring below a threshold, so clean traffic stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.defense import DefenseOutput, EquivarianceDefense
from ..core.losses import FeatureFn
from ..core.seeding import content_seeds, image_generators, uniform_like
from ..core.validation import PixelRange, check_budget, check_images, check_pixel_range
from .registry import DEFENSES


@DEFENSES.register("random")
class RandomNoiseDefense:
    """Add uniform noise in [−ε_v, ε_v] (clipped to the pixel range); seeded per image."""

    defends = True
    differentiable = False
    reuses_score_features = False
    equivariance_scorer = None
    score = None

    def __init__(self, *, eps_v: float = 4.0, seed: int = 0, pixel_range: PixelRange | None = None) -> None:
        self.pixel_range = check_pixel_range(pixel_range)
        self.stated_pixel_range = None if pixel_range is None else self.pixel_range
        self.eps_v = check_budget("eps_v", eps_v, self.pixel_range, allow_zero=False)
        self.seed = int(seed)

    def __call__(self, images: torch.Tensor, features: FeatureFn | None = None, *, model: nn.Module | None = None,
                 image_seeds: Sequence[int] | None = None, seed: int | None = None,
                 compute_score: bool = True) -> DefenseOutput:
        check_images(images, self.stated_pixel_range)
        gens = image_generators(self.seed if seed is None else int(seed), content_seeds(images, image_seeds),
                                images.shape[0])
        # noise wider than the pixel range is clipped anyway; capped, ε_v = inf draws finite noise, not NaN
        radius = min(self.eps_v, self.pixel_range[1] - self.pixel_range[0])
        noisy = (images.detach() + uniform_like(images, gens, -radius, radius)).clamp(*self.pixel_range)
        return DefenseOutput(images=noisy, loss_trace=images.new_zeros(0, images.shape[0]), score=None)


@DEFENSES.register("detect_then_defend")
class DetectThenDefend:
    """Defend only the images whose equivariance score is below ``threshold``.

    Args:
        threshold: score under which an image counts as attacked. Choose it on a tuning
            split (``tools/detect_attacks.py`` prints the clean scores' percentiles).
        defense: config of the wrapped defense (an ``EquivarianceDefense``; its seed also
            seeds the score's transforms).
        score_transforms: transforms of the detector's score (default: the defense's own).
            A small set (e.g. ``['hflip', 'resize:0.5']``) keeps clean traffic cheap: the
            score is one no-grad forward of x and of each copy, paid on every image.
    """

    defends = True
    differentiable = False
    reuses_score_features = True

    def __init__(self, *, threshold: float, defense: str | dict = "equi", score_transforms: str | list | None = None,
                 pixel_range: PixelRange | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
            raise ValueError(f"threshold must be an equivariance score in [-1, 1]; got {threshold!r}")
        self.threshold = float(threshold)
        cfg = {"type": defense} if isinstance(defense, str) else dict(defense)
        cfg.setdefault("pixel_range", pixel_range)
        self.defense = DEFENSES.build(cfg)
        if not isinstance(self.defense, EquivarianceDefense):
            raise TypeError(f"detect_then_defend wraps an equivariance-type defense; got {type(self.defense).__name__}")
        self.pixel_range = self.defense.pixel_range
        self.scorer = self.defense if score_transforms is None else EquivarianceDefense(
            transforms=score_transforms, seed=self.defense.seed, pixel_range=self.defense.stated_pixel_range,
            min_size=self.defense.min_size)

    @property
    def equivariance_scorer(self) -> EquivarianceDefense:
        """The detector: what it scores is what an adaptive attacker must keep equivariant."""
        return self.scorer

    def __call__(self, images: torch.Tensor, features: FeatureFn, *, model: nn.Module | None = None,
                 image_seeds: Sequence[int] | None = None, seed: int | None = None,
                 compute_score: bool = True) -> DefenseOutput:
        score = self.scorer.score(images, features, seed=seed)
        flagged = (score < self.threshold) | score.isnan()  # a score that cannot be computed is no all-clear
        out_images = images.detach().clone()
        trace = images.new_full((self.defense.steps, images.shape[0]), float("nan"))
        if flagged.any():
            idx = flagged.nonzero().flatten()
            seeds = content_seeds(images, image_seeds)
            inner = self.defense(images[idx], features, model=model, image_seeds=[seeds[i] for i in idx.tolist()],
                                 seed=seed, compute_score=False)
            out_images[idx] = inner.images
            trace[:, idx] = inner.loss_trace
            if compute_score:
                score = score.clone()
                score[idx] = self.scorer.score(inner.images, features, seed=seed)
        return DefenseOutput(images=out_images, loss_trace=trace, score=score if compute_score else None,
                             flagged=flagged.cpu())

    def score(self, images: torch.Tensor, features: FeatureFn, *, seed: int | None = None) -> torch.Tensor:
        """The detector's score (its ``score_transforms``)."""
        return self.scorer.score(images, features, seed=seed)
