"""Per-image scores that flag attacked or corrupted inputs (paper Appendix, Eq. 16).

Two views of the same idea — an attacked image breaks the model's equivariance:
    * ``equivariance_score`` (in ``defense``): mean cosine of g⁻¹∘F∘g(x) and F(x); low = suspicious.
      ``equivariance_map`` keeps it per position, to show *where* an image breaks it (paper Fig. 2/4).
    * ``output_variance_score``: Σ_i mean ‖g_i⁻¹∘C∘F∘g_i(x) − C∘F(x)‖² of the softmax outputs over
      the overlap (Eq. 16); high = suspicious.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .defense import check_transform_sizes
from .losses import FeatureFn, transformed_features
from .transforms import Transform, sample_transforms
from .validation import PixelRange, check_images, check_pixel_range


def output_variance_score(
    logits_fn: FeatureFn,
    images: torch.Tensor,
    *,
    transforms: str | list[Any] = "flip_resize",
    seed: int = 0,
    pixel_range: PixelRange | None = None,
    min_size: int = 8,
) -> torch.Tensor:
    """Paper Eq. 16 on class probabilities, averaged over valid positions → (N,); higher = less equivariant."""
    check_images(images, pixel_range)
    pixel_range = check_pixel_range(pixel_range)
    sampled = sample_transforms(transforms, seed)
    check_transform_sizes(sampled, tuple(images.shape[-2:]), min_size)
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


def equivariance_map(base: Sequence[torch.Tensor], outputs: Sequence[Sequence[torch.Tensor]],
                     transforms: Sequence[Transform]) -> torch.Tensor:
    """Per position, the mean over transforms of cos(g_i⁻¹(F(g_i x)), F(x)) → (N, h, w) in [−1, 1].

    The dense equivariance terms before their spatial average, so a report can show where an
    attack breaks equivariance and where the defense restores it. ``base`` and ``outputs`` are
    what :func:`~equi_ext.core.losses.transformed_features` returns, with one level per map
    (a multi-level map has no single frame to draw). Each position averages only the
    transforms whose overlap (``valid_mask``) covers it; a position no overlap covers is NaN.

    With every overlap the whole map (flips, resizes, colour jitter) the map's mean is the
    equivariance score; with rotations the score weighs each transform equally and the map
    each position, so the two differ slightly.
    """
    if len(outputs) != len(transforms) or not transforms:
        raise ValueError(f"equivariance_map needs one output per transform and at least one transform; "
                         f"got {len(outputs)} outputs for {len(transforms)} transforms")
    if len(base) != 1 or any(len(levels) != 1 for levels in outputs):
        raise ValueError(f"equivariance_map needs single-level maps; got {len(base)} levels for x")
    ref = base[0]
    size = tuple(ref.shape[-2:])
    total = ref.new_zeros(ref.shape[0], *size)
    count = ref.new_zeros(size)
    for transform, (maps,) in zip(transforms, outputs):
        mask = transform.valid_mask(size, ref.device).to(ref.dtype)[0, 0]
        total += F.cosine_similarity(transform.inverse(maps, size), ref, dim=1, eps=1e-8) * mask
        count += mask
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.full_like(total, float("nan")))
