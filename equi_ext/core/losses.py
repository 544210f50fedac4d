"""Equivariance and invariance objectives (paper Eq. 2 and the invariance baseline).

``feature_fn(images) -> (N, C, h, w)`` is any dense map of the model: backbone or
neck features, or decoder logits. All transformed copies that share a spatial size
go through ``feature_fn`` in one batched call, together with x itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .transforms import Transform
from .validation import DEFAULT_PIXEL_RANGE, PixelRange

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
REDUCTIONS = ("dense", "flat")


def dense_cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-position cosine over channels, averaged over the valid positions → (N,)."""
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-8)  # (N, h, w)
    weights = mask[:, 0].expand_as(cos)
    return (cos * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1.0)


def flat_cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine of the whole masked maps flattened to one vector per image (the authors' code) → (N,)."""
    return F.cosine_similarity((a * mask).flatten(1), (b * mask).flatten(1), dim=1, eps=1e-8)


def _cosine_for(reduction: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return dense_cosine if reduction == "dense" else flat_cosine


def _check_features(features: torch.Tensor, images: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[0] != images.shape[0]:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"feature_fn must return a dense (N, C, h, w) tensor with N={images.shape[0]}; got {shape}"
        )


def transformed_features(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return F(x) and [F(g_i(x)) for each i], batching copies of equal size into one call."""
    n = images.shape[0]
    size = tuple(images.shape[-2:])
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, transform in enumerate(transforms):
        groups[transform.output_size(size)].append(index)
    outputs: list[torch.Tensor | None] = [None] * len(transforms)
    base: torch.Tensor | None = None
    if size not in groups:
        base = feature_fn(images)
        _check_features(base, images)
    for out_size, indices in groups.items():
        batch = [transforms[i].apply(images, pixel_range) for i in indices]
        with_base = out_size == size
        if with_base:
            batch.insert(0, images)
        feats = feature_fn(torch.cat(batch, dim=0))
        if not isinstance(feats, torch.Tensor) or feats.dim() != 4 or feats.shape[0] != n * len(batch):
            _check_features(feats, torch.cat(batch, dim=0))
        chunks = list(feats.split(n, dim=0))
        if with_base:
            base = chunks.pop(0)
        for i, chunk in zip(indices, chunks):
            outputs[i] = chunk
    return base, outputs


def equivariance_terms(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    reduction: str = "dense",
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> torch.Tensor:
    """cos(g_i⁻¹∘F∘g_i(x), F(x)) on the overlap, for each image and transform → (N, K).

    Both branches stay differentiable (SPEC §1: F(x) is not detached).
    """
    cosine = _cosine_for(reduction)
    base, outputs = transformed_features(feature_fn, images, transforms, pixel_range)
    fsize = tuple(base.shape[-2:])
    terms = []
    for transform, feats in zip(transforms, outputs):
        back = transform.inverse(feats, fsize)
        mask = transform.valid_mask(fsize, base.device).to(base.dtype)
        terms.append(cosine(back, base, mask))
    return torch.stack(terms, dim=1)


def invariance_terms(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    reduction: str = "dense",
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> torch.Tensor:
    """cos(avgpool F(g_i(x)), avgpool F(x)) — the paper's invariance baseline → (N, K).

    No inverse transform: pooled vectors are compared directly. ``reduction`` is
    accepted for a uniform signature; pooling leaves one vector, so both agree.
    """
    _cosine_for(reduction)  # validates; pooled vectors need no mask
    base, outputs = transformed_features(feature_fn, images, transforms, pixel_range)
    pooled = base.mean(dim=(2, 3))
    return torch.stack([F.cosine_similarity(f.mean(dim=(2, 3)), pooled, dim=1, eps=1e-8) for f in outputs], dim=1)


OBJECTIVES = {"equivariance": equivariance_terms, "invariance": invariance_terms}
