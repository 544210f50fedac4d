"""The Mask R-CNN views the defense measures: FPN maps (dense) and box-aware ROI mask logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from detectron2.structures import Boxes

from ...core.losses import (
    OBJECTIVES,
    Objective,
    equivariance_from_maps,
    roi_equivariance,
    transformed_features,
)
from ...core.transforms import Transform
from ...core.validation import PixelRange


class MaskRCNNObjective(Objective):
    """Equivariance of a ``GeneralizedRCNN`` around RGB pixel images.

    Called as a feature_fn it returns the chosen FPN levels (cropped to the image, padding
    excluded), so attacks and scores see the dense view. As an :class:`Objective` with
    ``boxes`` it adds the box-aware term: the boxes b of x are mapped through each g
    (``apply_boxes``), mask logits of g(x) are pooled there, mapped back (``inverse_roi``)
    and compared with those of x at b. Rotations are not box-aligned (their enclosing box
    holds other content), and images without boxes have no ROI term: there the FPN term
    stands alone, never a crash.

    Args:
        model: the ``GeneralizedRCNN``.
        image_list: RGB pixels (N, 3, H, W) → the model's normalised, padded ``ImageList``.
        levels: FPN outputs of the dense term (empty = the three finest).
        use_fpn: include the dense FPN term (else ROI terms only, FPN where no ROI term exists).
        boxes: per-image (R_n, 4) boxes in pixel coordinates, or None for the dense term only.
    """

    def __init__(self, model, image_list, levels: Sequence[str] = (), *, use_fpn: bool = True,
                 boxes: list[torch.Tensor] | None = None) -> None:
        self.model, self.image_list = model, image_list
        shapes = model.backbone.output_shape()
        self.names = list(shapes)
        unknown = [name for name in levels if name not in shapes]
        if unknown:
            raise ValueError(f"EQUI.FPN_LEVELS {unknown} are not backbone outputs; valid: {self.names}")
        # Default: the three finest outputs (p2–p4 of an FPN, where the presets were measured; all of a backbone
        # with fewer, e.g. C4's one).
        self.levels = list(levels) or sorted(self.names, key=lambda name: shapes[name].stride)[:3]
        self.strides = {name: shapes[name].stride for name in self.names}
        self.use_fpn, self.boxes = use_fpn, boxes
        if boxes is not None and not getattr(model.roi_heads, "mask_on", False):
            raise ValueError("EQUI.FEATURE with mask_logits needs a model with a mask head (MODEL.MASK_ON True)")

    def all_levels(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every backbone output for ``pixels``, cropped to the image (no padding)."""
        h, w = pixels.shape[-2:]
        feats = self.model.backbone(self.image_list(pixels).tensor)
        return [feats[n][..., :math.ceil(h / self.strides[n]), :math.ceil(w / self.strides[n])] for n in self.names]

    @property
    def dense(self) -> bool:
        return self.boxes is None

    def _pick(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return [levels[self.names.index(name)] for name in self.levels]

    def __call__(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self._pick(self.all_levels(pixels))

    def _mask_logits(self, levels: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        heads = self.model.roi_heads
        feats = [levels[self.names.index(name)] for name in heads.mask_in_features]
        pooled = heads.mask_pooler(feats, [Boxes(b) for b in boxes])
        return list(heads.mask_head.layers(pooled).split([len(b) for b in boxes]))

    def terms(self, kind: str, images: torch.Tensor, transforms: Sequence[Transform], reduction: str,
              pixel_range: PixelRange) -> torch.Tensor:
        if kind != "equivariance" or self.boxes is None:
            return OBJECTIVES[kind](self, images, transforms, reduction, pixel_range)
        size = tuple(images.shape[-2:])
        base, outputs = transformed_features(self.all_levels, images, transforms, pixel_range)
        dense = equivariance_from_maps(self._pick(base), [self._pick(o) for o in outputs], transforms, reduction)
        base_rois = self._mask_logits(base, self.boxes)
        moved = [self._mask_logits(levels, [t.apply_boxes(b, size) for b in self.boxes]) if t.roi_aligned else None
                 for t, levels in zip(transforms, outputs)]
        roi, valid = roi_equivariance(base_rois, moved, transforms)
        combined = (dense + roi) / 2 if self.use_fpn else roi
        return torch.where(valid, combined, dense)
