"""``EquiGeneralizedRCNN``: Mask R-CNN whose inference can be attacked and defended (``cfg.EQUI.*``).

Training is the stock ``GeneralizedRCNN``; so is inference when neither ``EQUI.DEFENSE`` nor
``EQUI.ATTACK`` is set. Otherwise each batch of ``inference`` is

    images (input format, 0–255) → RGB pixels → attack (the model's own training losses,
    ground truth from the inputs' ``instances``) → defense → back to the input format
    → stock ``GeneralizedRCNN.inference`` (postprocessing included).
"""

from __future__ import annotations

import contextlib
import inspect
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import EventStorage

from ...attacks.training import AdversarialTraining
from ...core.seeding import image_seed
from ...pipeline import CONFIGURED_RUN, SCORE_KEY, EquiPipeline, EquiRun, PixelBatch, active_run
from ..config import equi_settings
from .objective import MaskRCNNObjective

#: Detectron2 after 0.6 pads by the backbone's ``padding_constraints`` too; detected, not read off a version.
FROM_TENSORS_TAKES_PADDING_CONSTRAINTS = "padding_constraints" in inspect.signature(ImageList.from_tensors).parameters


@contextlib.contextmanager
def heads_in_training(model: GeneralizedRCNN) -> Iterator[None]:
    """Switch only ``proposal_generator`` and ``roi_heads`` to training (so they return losses),
    keeping the backbone — and its BatchNorm — in eval; every flag is restored, also on errors."""
    modules = [m for head in (model.proposal_generator, model.roi_heads) if head is not None for m in head.modules()]
    flags = [(m, m.training) for m in modules]
    try:
        for m, _ in flags:
            m.training = True
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@META_ARCH_REGISTRY.register()
class EquiGeneralizedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with test-time attack and equivariance defense from ``cfg.EQUI``.

    The run active on the model (``equi_ext.pipeline.running``; none: as configured) selects what ``inference``
    measures: its scenario, pipeline and FPN ``levels`` (``views``). With its ``record_scores`` each output also
    carries ``equi_score``, its image's equivariance score; with ``record_losses`` ``task_loss``, the training
    losses of the input it was predicted from (the per-image worst case breaks ties with it; needs
    ``instances``).
    """

    @configurable
    def __init__(self, *, equi: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = EquiPipeline(equi["defense"], equi["attack"], needs_logits=False)
        self.feature, self.levels = equi["feature"], equi["levels"]
        self.roi_score_thresh = equi["roi_score_thresh"]
        self.adversarial: AdversarialTraining | None = equi.get("adversarial")
        MaskRCNNObjective(self, self.image_list, self.levels, boxes=[] if "mask_logits" in self.feature else None)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        ret = super().from_config(cfg)
        ret["equi"] = equi_settings(cfg)
        return ret

    # ----- pixel space: RGB floats in [0, 255] ------------------------------------------------
    def to_pixels(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.device, torch.float32)
        return x.flip(-3) if self.input_format == "BGR" else x

    def to_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flip(-3) if self.input_format == "BGR" else pixels

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        return (self.to_image(pixels) - self.pixel_mean) / self.pixel_std

    def image_list(self, pixels: torch.Tensor) -> ImageList:
        """Normalised and padded as ``preprocess_image`` would, but differentiable in ``pixels``.

        Padded one image at a time: detectron2 0.6 batches several by in-place copies into views, which autograd
        refuses; the images of one (N, 3, H, W) tensor share a size, so the padded batch is the same.
        """
        extra = {}
        if FROM_TENSORS_TAKES_PADDING_CONSTRAINTS:  # newer than 0.6, whose preprocess_image pads by divisibility only
            extra["padding_constraints"] = getattr(self.backbone, "padding_constraints", None)
        padded = [ImageList.from_tensors([image], self.backbone.size_divisibility, **extra)
                  for image in self.to_inputs(pixels)]
        return ImageList(torch.cat([p.tensor for p in padded]), [size for p in padded for size in p.image_sizes])

    # ----- model views ----------------------------------------------------------------------
    def task_loss(self, pixels: torch.Tensor, targets: list[Instances], seed: int = 0) -> torch.Tensor:
        """Sum of the RPN, box and mask training losses (the attack's task loss), proposal sampling seeded."""
        images = self.image_list(pixels)
        features = self.backbone(images.tensor)
        devices = [pixels.device.index or 0] if pixels.is_cuda else []
        # Training-mode heads log statistics: give them a throwaway event storage.
        with heads_in_training(self), EventStorage(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            proposals, rpn_losses = self.proposal_generator(images, features, targets)
            _, roi_losses = self.roi_heads(images, features, proposals, targets)
        return sum(rpn_losses.values()) + sum(roi_losses.values())

    def _boxes(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Confident, non-degenerate detections on ``pixels``: the boxes of the ROI term."""
        with torch.no_grad():
            results = super().inference([{"image": self.to_image(p)} for p in pixels], do_postprocess=False)
        boxes = []
        for r in results:
            b = r.pred_boxes.tensor[r.scores >= self.roi_score_thresh]
            boxes.append(b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)].detach())
        return boxes

    def objective(self, pixels: torch.Tensor, levels: list[str] | None = None) -> MaskRCNNObjective:
        """The defense's view of ``pixels``: FPN ``levels`` (None: the configured ``EQUI.FPN_LEVELS``) and, with
        ``EQUI.FEATURE`` naming them, the mask logits of its confident detections."""
        boxes = self._boxes(pixels) if "mask_logits" in self.feature else None
        return MaskRCNNObjective(self, self.image_list, self.levels if levels is None else levels,
                                 use_fpn="fpn" in self.feature, boxes=boxes)

    # ----- adversarial training --------------------------------------------------------------
    def forward(self, batched_inputs: list[dict]):
        """In training with ``EQUI.ADV_TRAIN.ATTACK`` set, the losses of the attacked batch
        (``attacked_inputs``), mixed with the clean batch's by ``CLEAN_WEIGHT``; otherwise Detectron2's."""
        if not self.training or self.adversarial is None:
            return super().forward(batched_inputs)
        losses = super().forward(self.attacked_inputs(batched_inputs))
        clean = super().forward(batched_inputs) if self.adversarial.clean_weight else None
        return self.adversarial.combine(clean, losses)

    def attacked_inputs(self, batched_inputs: list[dict]) -> list[dict]:
        """``batched_inputs`` with each image replaced by the training attack's output on the sum of the training
        losses (images of one size attacked together; proposal sampling seeded by their file names)."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("adversarial training needs each input's 'instances' (ground truth)")
        batch = RCNNBatch(self, batched_inputs)  # the test path's grouping, pixels, targets and seeded loss
        for idx in batch.groups():
            targets, loss_fn = batch.targets(idx), batch.loss_fn(idx)
            adv = self.adversarial.perturb(self, batch.pixels(idx), targets,
                                           loss_fn=lambda x, f=loss_fn, t=targets: f(x, t))
            batch.put(idx, adv, changed=True)
        return batch.new_inputs

    # ----- inference ------------------------------------------------------------------------
    def inference(self, batched_inputs: list[dict], detected_instances: list[Instances] | None = None,
                  do_postprocess: bool = True):
        run = active_run(self)
        pipeline = run.pipeline or self.pipeline
        attack_on, defend_on = pipeline.active(run.scenario)
        if not (attack_on or defend_on or run.record_scores or run.record_losses) or detected_instances is not None:
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("batched_inputs must be a non-empty list of dicts with an 'image' tensor")
        if (attack_on or run.record_losses) and any("instances" not in x for x in batched_inputs):
            raise ValueError("an attack (and record_losses) needs ground truth: inputs must carry 'instances' "
                             "(build the test loader with equi_ext.detectron2.evaluation.build_annotated_test_loader)")
        for i, x in enumerate(batched_inputs):
            image = x.get("image") if isinstance(x, dict) else None
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"input {i}: 'image' must be a (3, H, W) tensor; got {shape}")
            if image.dtype != torch.uint8 and not image.is_floating_point():  # e.g. bool would become 0/1 pixels
                raise TypeError(f"input {i}: 'image' must be uint8 or floating point with values in 0-255; "
                                f"got dtype {image.dtype}")
        batch = RCNNBatch(self, batched_inputs, run)
        scores = pipeline.process(batch, run.scenario, run.record_scores, run.sink)
        results = super().inference(batch.new_inputs, None, do_postprocess)
        if do_postprocess:  # dicts; without postprocessing the results are bare Instances
            for i, result in enumerate(results):
                if scores[i] is not None:
                    result[SCORE_KEY] = scores[i]
                if i in batch.losses:
                    result["task_loss"] = batch.losses[i]
        return results


#: The view settings a Detectron2 run (``EquiRun.views``) may set: ``levels``, the FPN outputs the defense reads.
VIEW_KEYS = ("levels",)

class RCNNBatch(PixelBatch):
    """A Detectron2 batch in pixel space: images grouped by size, ground truth from ``instances``, the task
    loss the model's own training losses (proposal sampling seeded by the group's image seeds), the
    defense's view an ``Objective`` over the FPN maps (and mask logits) of the pixels it is given."""

    def __init__(self, model: EquiGeneralizedRCNN, batched_inputs: list[dict], run: EquiRun = CONFIGURED_RUN) -> None:
        super().__init__(model, len(batched_inputs))
        self.inputs, self.record_losses = batched_inputs, run.record_losses
        self.levels = run.view("levels", None, VIEW_KEYS)
        self.new_inputs = [dict(x) for x in batched_inputs]
        self.losses: dict[int, float] = {}

    def group_key(self, i: int) -> tuple:
        return tuple(self.inputs[i]["image"].shape)

    def pixels(self, idx: list[int]) -> torch.Tensor:
        return torch.stack([self.model.to_pixels(self.inputs[i]["image"]) for i in idx])

    def seed(self, i: int) -> int:
        return image_seed(self.inputs[i].get("file_name"), self.inputs[i].get("image_id"), i)

    def targets(self, idx: list[int]) -> list[Instances]:
        return [self.inputs[i]["instances"].to(self.model.device) for i in idx]

    def loss_fn(self, idx: list[int]) -> Callable:
        seed = zlib.crc32(repr([self.seed(i) for i in idx]).encode())
        return lambda x, t: self.model.task_loss(x, t, seed)

    def view(self, idx: list[int], pixels: torch.Tensor) -> MaskRCNNObjective:
        return self.model.objective(pixels, self.levels)

    def put(self, idx: list[int], pixels: torch.Tensor, changed: bool) -> None:
        for j, i in enumerate(idx):
            self.new_inputs[i]["image"] = self.model.to_image(pixels[j])
            if self.record_losses:
                with torch.no_grad():
                    target = [self.inputs[i]["instances"].to(self.model.device)]
                    self.losses[i] = float(self.model.task_loss(pixels[j:j + 1].detach(), target, self.seed(i)))
