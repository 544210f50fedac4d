"""Equivariance and invariance objectives (paper Eq. 2 and the invariance baseline).

``feature_fn(images) -> (N, C, h, w)`` is any dense map of the model: backbone or
neck features, or decoder logits; it may also return a list of such maps (e.g. FPN
levels), whose terms are averaged. All transformed copies that share a spatial size
go through ``feature_fn`` in one batched call, together with x itself.

Outputs that are not dense maps (Detectron2's per-box mask logits) plug in as an
:class:`Objective`, passed wherever a ``feature_fn`` is expected.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .transforms import Transform
from .validation import DEFAULT_PIXEL_RANGE, PixelRange

Maps = torch.Tensor | list[torch.Tensor]
FeatureFn = Callable[[torch.Tensor], Maps]
REDUCTIONS = ("dense", "flat")


class Objective:
    """A model view whose equivariance terms are not those of one dense map.

    Pass an instance where a ``feature_fn`` is expected; the defense then calls
    :meth:`terms` instead of the dense objective.
    """

    def terms(self, kind: str, images: torch.Tensor, transforms: Sequence[Transform], reduction: str,
              pixel_range: PixelRange) -> torch.Tensor:
        """(N, K) terms of ``kind`` ('equivariance' or 'invariance')."""
        raise NotImplementedError

    @property
    def dense(self) -> bool:
        """Whether :meth:`terms` are the dense terms of the view's own call as a feature_fn: then they can also
        be computed one transformed copy at a time (``chunked``)."""
        return False


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


def _levels(features: Maps, n: int) -> list[torch.Tensor]:
    """The maps of one feature_fn output as a list, checked to be (n, C, h, w) each."""
    levels = list(features) if isinstance(features, (list, tuple)) else [features]
    for level in levels:
        if not isinstance(level, torch.Tensor) or level.dim() != 4 or level.shape[0] != n:
            shape = tuple(level.shape) if isinstance(level, torch.Tensor) else type(level).__name__
            raise ValueError(
                f"feature_fn must return a dense (N, C, h, w) tensor, or a list of them, with N={n}; got {shape}"
            )
    if not levels:
        raise ValueError("feature_fn returned an empty list of maps")
    return levels


def transformed_features(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Return the maps of F(x) and of each F(g_i(x)), batching copies of equal size into one call.

    Each entry is a list of levels (one level when ``feature_fn`` returns a tensor).
    """
    n = images.shape[0]
    size = tuple(images.shape[-2:])
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, transform in enumerate(transforms):
        groups[transform.output_size(size)].append(index)
    outputs: list[list[torch.Tensor] | None] = [None] * len(transforms)
    base: list[torch.Tensor] | None = None
    if size not in groups:
        base = _levels(feature_fn(images), n)
    for out_size, indices in groups.items():
        batch = [transforms[i].apply(images, pixel_range) for i in indices]
        with_base = out_size == size
        if with_base:
            batch.insert(0, images)
        levels = _levels(feature_fn(torch.cat(batch, dim=0)), n * len(batch))
        chunks = [[level[j * n:(j + 1) * n] for level in levels] for j in range(len(batch))]
        if with_base:
            base = chunks.pop(0)
        for i, chunk in zip(indices, chunks):
            outputs[i] = chunk
    return base, outputs


def equivariance_from_maps(base: list[torch.Tensor], outputs: Sequence[list[torch.Tensor]],
                           transforms: Sequence[Transform], reduction: str = "dense") -> torch.Tensor:
    """(N, K) cosines of g_i⁻¹(maps of g_i(x)) with the maps of x on the overlap, averaged over levels."""
    cosine = _cosine_for(reduction)
    terms = []
    for transform, levels in zip(transforms, outputs):
        per_level = []
        for ref, feats in zip(base, levels):
            fsize = tuple(ref.shape[-2:])
            mask = transform.valid_mask(fsize, ref.device).to(ref.dtype)
            per_level.append(cosine(transform.inverse(feats, fsize), ref, mask))
        terms.append(torch.stack(per_level).mean(dim=0))
    return torch.stack(terms, dim=1)


def equivariance_terms(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    reduction: str = "dense",
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
) -> torch.Tensor:
    """cos(g_i⁻¹∘F∘g_i(x), F(x)) on the overlap, for each image and transform → (N, K).

    Both branches stay differentiable (F(x) is not detached: the defense moves both sides of the cosine).
    """
    _cosine_for(reduction)
    base, outputs = transformed_features(feature_fn, images, transforms, pixel_range)
    return equivariance_from_maps(base, outputs, transforms, reduction)


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
    return invariance_from_maps(base, outputs)


def invariance_from_maps(base: list[torch.Tensor], outputs: Sequence[list[torch.Tensor]],
                         transforms: Sequence[Transform] = (), reduction: str = "dense") -> torch.Tensor:
    """(N, K) cosines of the spatially pooled maps, averaged over levels.

    ``transforms`` and ``reduction`` are unused (no inverse, one pooled vector); they keep
    the signature of :func:`equivariance_from_maps`.
    """
    pooled = [level.mean(dim=(2, 3)) for level in base]
    return torch.stack([
        torch.stack([F.cosine_similarity(f.mean(dim=(2, 3)), p, dim=1, eps=1e-8) for f, p in zip(levels, pooled)])
        .mean(dim=0)
        for levels in outputs
    ], dim=1)


def roi_equivariance(base_rois: Sequence[torch.Tensor], transformed_rois: Sequence[Sequence[torch.Tensor]],
                     transforms: Sequence[Transform]) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-aware equivariance of per-box outputs (e.g. ROI mask logits).

    ``base_rois[n]`` holds image n's per-box maps (R_n, C, m, m) pooled at its boxes b;
    ``transformed_rois[k][n]`` the maps of g_k(x) pooled at ``g_k.apply_boxes(b)``. Each is
    mapped back with ``g_k.inverse_roi`` and compared to the base by a flat cosine per box,
    averaged over the image's boxes.

    Returns:
        (N, K) terms and an (N, K) bool mask: False where image n has no box or g_k is not
        box-aligned (rotations), so callers fall back to a dense term there.
    """
    n, k = len(base_rois), len(transforms)
    if not n:
        raise ValueError("roi_equivariance needs the per-box maps of at least one image")
    # An image without boxes still has its (0, C, m, m) tensor on the model's device and dtype.
    device, dtype = base_rois[0].device, base_rois[0].dtype
    zero = torch.zeros((), device=device, dtype=dtype)
    valid = torch.zeros(n, k, dtype=torch.bool, device=device)
    columns = []
    for j, transform in enumerate(transforms):
        column = []
        for i, base in enumerate(base_rois):
            if not transform.roi_aligned or base.shape[0] == 0:
                column.append(zero)
                continue
            back = transform.inverse_roi(transformed_rois[j][i])
            column.append(F.cosine_similarity(back.flatten(1), base.flatten(1), dim=1, eps=1e-8).mean())
            valid[i, j] = True
        columns.append(torch.stack(column))
    return torch.stack(columns, dim=1), valid


OBJECTIVES = {"equivariance": equivariance_terms, "invariance": invariance_terms}
FROM_MAPS = {"equivariance": equivariance_from_maps, "invariance": invariance_from_maps}


def chunked_terms(
    kind: str,
    feature_fn: FeatureFn,
    images: torch.Tensor,
    transforms: Sequence[Transform],
    reduction: str = "dense",
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE,
    *,
    gradient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (N, K) terms of ``kind`` holding one transformed copy's maps at a time, and with
    ``gradient`` the gradient of their sum w.r.t. ``images`` (else None).

    F(x) is computed once. With ``gradient``, each F(g_i(x)) is forwarded and back-propagated
    alone against a detached copy of F(x) whose gradient is accumulated, and a single backward
    through F(x) closes the sum. Same terms and gradient as :data:`OBJECTIVES` [kind] at once,
    but the peak memory is that of F(x) plus the largest copy, not of all K copies
    (Cityscapes-size images with 1.5×/2× resizes would not fit otherwise).
    """
    if gradient and not images.requires_grad:
        raise ValueError("chunked_terms(gradient=True) needs images with requires_grad=True")
    _cosine_for(reduction)
    n = images.shape[0]
    base = _levels(feature_fn(images), n)
    base_leaves = [level.detach().requires_grad_(True) for level in base] if gradient else base
    grad = torch.zeros_like(images) if gradient else None
    base_grads = [torch.zeros_like(level) for level in base] if gradient else []
    columns = []
    for transform in transforms:
        copy_maps = _levels(feature_fn(transform.apply(images, pixel_range)), n)
        term = FROM_MAPS[kind](base_leaves, [copy_maps], [transform], reduction)
        if gradient:
            grad_images, *grad_base = torch.autograd.grad(term.sum(), [images, *base_leaves])
            grad += grad_images
            for total, part in zip(base_grads, grad_base):
                total += part
        columns.append(term.detach())
    if gradient:
        (grad_through_base,) = torch.autograd.grad(base, images, grad_outputs=base_grads)
        grad = grad + grad_through_base
    return torch.cat(columns, dim=1), grad
