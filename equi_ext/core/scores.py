"""Per-image scores that flag attacked or corrupted inputs (paper Appendix, Eq. 16).

Two views of the same idea — an attacked image breaks the model's equivariance:
    * ``equivariance_score`` (in ``optimizer``): mean cosine of g⁻¹∘F∘g(x) and F(x); low = suspicious.
    * ``output_variance_score``: Σ_i mean ‖g_i⁻¹∘C∘F∘g_i(x) − C∘F(x)‖² of the softmax outputs over
      the overlap (Eq. 16); high = suspicious.
"""

from __future__ import annotations

from typing import Any

import torch

from .losses import FeatureFn, transformed_features
from .transforms import sample_transforms
from .validation import DEFAULT_PIXEL_RANGE, PixelRange, check_images, check_pixel_range


def output_variance_score(
    logits_fn: FeatureFn,
    images: torch.Tensor,
    *,
    transforms: str | list[Any] = "flip_resize",
    seed: int = 0,
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> torch.Tensor:
    """Paper Eq. 16 on class probabilities, averaged over valid positions → (N,); higher = less equivariant."""
    pixel_range = check_pixel_range(pixel_range)
    check_images(images, pixel_range)
    sampled = sample_transforms(transforms, seed)
    with torch.no_grad():
        (base,), outputs = transformed_features(logits_fn, images, sampled, pixel_range)
        probs = base.softmax(dim=1)
        size = tuple(base.shape[-2:])
        total = images.new_zeros(images.shape[0])
        for transform, (out,) in zip(sampled, outputs):
            back = transform.inverse(out, size).softmax(dim=1)
            mask = transform.valid_mask(size, base.device).to(base.dtype)[:, 0]
            sq = ((back - probs) ** 2).sum(dim=1) * mask
            total += sq.sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)
    return total
