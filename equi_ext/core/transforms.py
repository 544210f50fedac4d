"""Invertible image transforms g with their feature-space inverses g⁻¹ and validity masks.

Convention (all transforms):
    * Images are float (N, 3, H, W) in ``pixel_range`` (default RGB 0–255).
    * ``apply(images)`` returns g(x); ``output_size((H, W))`` is its spatial size.
    * ``inverse(features, size)`` maps a dense map computed on g(x) (features or
      logits, any stride) back to the frame of the original image, resampled to
      ``size`` = the spatial size of the same map computed on x.
    * ``valid_mask(size)`` is a (1, 1, h, w) float mask of the positions of that
      frame whose content stayed inside the view through g and back (the overlap).
    * Boxes are (M, 4) xyxy in pixel units of the image they live in;
      ``apply_boxes`` maps boxes of x to boxes of g(x), ``inverse_boxes`` back.

A transform whose parameter is a ``(low, high)`` pair is a random family: ``sample``
draws a concrete transform from a seeded ``torch.Generator``; concrete transforms
return themselves, so fixed and re-drawn parameters use the same code path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from .registry import Registry
from .validation import DEFAULT_PIXEL_RANGE, PixelRange

TRANSFORMS = Registry("transform")
Param = float | tuple[float, float]
Size = tuple[int, int]


def _draw(value: Param, generator: torch.Generator | None) -> float:
    if isinstance(value, tuple):
        low, high = value
        return low + (high - low) * torch.rand((), generator=generator).item()
    return value


def _check_param(name: str, value: Param, low: float, high: float) -> Param:
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
        raise ValueError(f"{name} range must be (low, high) with low <= high; got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (low <= v <= high):
            raise ValueError(f"{name} must be in [{low}, {high}]; got {value!r}")
    return tuple(float(v) for v in value) if isinstance(value, tuple) else float(value)


def _resample_to(maps: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Transform:
    """Base class: identity geometry. Subclasses override what they change."""

    @property
    def is_random(self) -> bool:
        return any(isinstance(v, tuple) for v in self.__dict__.values())

    def sample(self, generator: torch.Generator | None = None) -> Transform:
        """A concrete transform: parameters given as ranges are drawn from ``generator``."""
        return replace(self, **{k: _draw(v, generator) for k, v in self.__dict__.items()})

    def _require_concrete(self) -> None:
        if self.is_random:
            raise ValueError(f"{self} has parameter ranges: call .sample(generator) before applying it")

    def output_size(self, size: Size) -> Size:
        return tuple(size)

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        self._require_concrete()
        return images

    def inverse(self, features: torch.Tensor, size: Size) -> torch.Tensor:
        self._require_concrete()
        return _resample_to(features, size)

    def valid_mask(self, size: Size, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.ones(1, 1, *size, device=device)

    def apply_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        return boxes.clone()

    def inverse_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        return boxes.clone()

    #: Whether a box mapped by ``apply_boxes`` frames exactly the same content, so per-box
    #: outputs (ROI mask logits) can be compared after ``inverse_roi``.
    roi_aligned = True

    def inverse_roi(self, roi_maps: torch.Tensor) -> torch.Tensor:
        """Per-box maps (R, C, m, m) pooled at ``apply_boxes(b)`` on g(x) → the frame of b on x."""
        self._require_concrete()
        return roi_maps


@TRANSFORMS.register("resize")
@dataclass(frozen=True)
class Resize(Transform):
    """Rescale by ``scale`` (bilinear, antialiased when shrinking). The overlap is the whole image."""

    scale: Param = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _check_param("scale", self.scale, 0.05, 8.0))

    def output_size(self, size: Size) -> Size:
        self._require_concrete()
        return (max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale)))

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        out = self.output_size(tuple(images.shape[-2:]))
        return F.interpolate(images, size=out, mode="bilinear", align_corners=False, antialias=self.scale < 1)

    def _box_factors(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        out_h, out_w = self.output_size(image_size)
        fx, fy = out_w / image_size[1], out_h / image_size[0]
        return boxes.new_tensor([fx, fy, fx, fy])

    def apply_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        return boxes * self._box_factors(boxes, image_size)

    def inverse_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        return boxes / self._box_factors(boxes, image_size)


@TRANSFORMS.register("hflip")
@dataclass(frozen=True)
class HFlip(Transform):
    """Mirror left–right; its own inverse."""

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        return images.flip(-1)

    def inverse(self, features: torch.Tensor, size: Size) -> torch.Tensor:
        return _resample_to(features.flip(-1), size)

    def apply_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        width = image_size[1]
        return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)

    inverse_boxes = apply_boxes

    def inverse_roi(self, roi_maps: torch.Tensor) -> torch.Tensor:
        return roi_maps.flip(-1)


@TRANSFORMS.register("rotate")
@dataclass(frozen=True)
class Rotate(Transform):
    """Rotate by ``degrees`` about the image centre (differentiable grid sampling, zero fill).

    Content at pixel p moves to R(θ)(p − c) + c, in pixel units with y pointing down, so
    rotations stay rigid on non-square images. Positions of the original frame whose
    rotated location leaves the image are outside the overlap.
    """

    degrees: Param = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "degrees", _check_param("degrees", self.degrees, -180.0, 180.0))

    def _grid(self, angle_degrees: float, size: Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Sampling grid of ``out(q) = in(R(-angle) q)`` on a map of ``size`` (normalised coords)."""
        h, w = size
        a = math.radians(angle_degrees)
        cos, sin = math.cos(a), math.sin(a)
        # Source = S⁻¹ R(−a) S n with S = diag(w/2, h/2): rigid rotation in pixel units.
        theta = torch.tensor([[cos, sin * h / w, 0.0], [-sin * w / h, cos, 0.0]], device=device, dtype=dtype)
        return F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)

    def _rotate(self, maps: torch.Tensor, angle_degrees: float) -> torch.Tensor:
        grid = self._grid(angle_degrees, tuple(maps.shape[-2:]), maps.device, maps.dtype)
        return F.grid_sample(maps, grid.expand(maps.shape[0], -1, -1, -1), align_corners=False)

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        self._require_concrete()
        return self._rotate(images, self.degrees)

    def inverse(self, features: torch.Tensor, size: Size) -> torch.Tensor:
        self._require_concrete()
        return _resample_to(self._rotate(features, -self.degrees), size)

    def valid_mask(self, size: Size, device: torch.device | str = "cpu") -> torch.Tensor:
        """Positions whose round trip g⁻¹∘g of a map of ones stays 1: inside the view both ways
        and clear of bilinear mixing with the zero fill."""
        self._require_concrete()
        return _rotation_mask(self.degrees, tuple(size), torch.device(device))

    def _map_boxes(self, boxes: torch.Tensor, image_size: Size, angle_degrees: float) -> torch.Tensor:
        h, w = image_size
        a = math.radians(angle_degrees)
        rot = boxes.new_tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        centre = boxes.new_tensor([w / 2, h / 2])
        x1, y1, x2, y2 = boxes.unbind(1)
        corners = torch.stack([torch.stack(c, dim=1) for c in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], dim=1)
        moved = (corners - centre) @ rot.T + centre
        lo, hi = moved.min(dim=1).values, moved.max(dim=1).values
        limits = boxes.new_tensor([w, h])
        return torch.cat([torch.minimum(lo.clamp(min=0), limits), torch.minimum(hi.clamp(min=0), limits)], dim=1)

    #: The enclosing box of a rotated box holds other content than the box: no ROI term.
    roi_aligned = False

    def inverse_roi(self, roi_maps: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{self} is not box-aligned: per-box outputs cannot be mapped back exactly")

    def apply_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        """Enclosing box of the rotated corners, clipped to the image (not exactly invertible)."""
        self._require_concrete()
        return self._map_boxes(boxes, image_size, self.degrees)

    def inverse_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        self._require_concrete()
        return self._map_boxes(boxes, image_size, -self.degrees)


@TRANSFORMS.register("rot90")
@dataclass(frozen=True)
class Rot90(Transform):
    """Rotate by ``k`` quarter turns, as ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise on
    screen): exact, no resampling, so the overlap is the whole image; an odd ``k`` swaps H and W.

    The rotation-prediction baseline (Shi et al. 2020) asks a head which ``k`` was applied.
    Content at pixel (x, y) of an H×W image moves, per turn, to (y, W − x) of the W×H result.
    """

    k: int = 1

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or not 0 <= k <= 3:
            raise ValueError(f"k must be a number of quarter turns in {{0, 1, 2, 3}}; got {k!r}")
        object.__setattr__(self, "k", int(k))

    def output_size(self, size: Size) -> Size:
        return (size[1], size[0]) if self.k % 2 else tuple(size)

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        return torch.rot90(images, self.k, dims=(-2, -1))

    def inverse(self, features: torch.Tensor, size: Size) -> torch.Tensor:
        return _resample_to(torch.rot90(features, -self.k, dims=(-2, -1)), size)

    def apply_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        h, w = image_size
        for _ in range(self.k):  # one turn: (x, y) → (y, W − x) on an H×W image, which becomes W×H
            boxes = torch.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], dim=1)
            h, w = w, h
        return boxes.clone()

    def inverse_boxes(self, boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
        return Rot90((4 - self.k) % 4).apply_boxes(boxes, self.output_size(image_size))

    def inverse_roi(self, roi_maps: torch.Tensor) -> torch.Tensor:
        return torch.rot90(roi_maps, -self.k, dims=(-2, -1))


@TRANSFORMS.register("color_jitter")
@dataclass(frozen=True)
class ColorJitter(Transform):
    """Photometric change (brightness, contrast, saturation factors); geometry, hence g⁻¹, is identity."""

    brightness: Param = 1.0
    contrast: Param = 1.0
    saturation: Param = 1.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            object.__setattr__(self, name, _check_param(name, getattr(self, name), 0.0, 4.0))

    def apply(self, images: torch.Tensor, pixel_range: PixelRange = DEFAULT_PIXEL_RANGE) -> torch.Tensor:
        self._require_concrete()
        low, high = pixel_range
        x = (images - low) / (high - low)
        x = (x * self.brightness).clamp(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + self.contrast * (x - mean)).clamp(0, 1)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (gray + self.saturation * (x - gray)).clamp(0, 1)
        return x * (high - low) + low


@functools.lru_cache(maxsize=256)
def _rotation_mask(degrees: float, size: Size, device: torch.device) -> torch.Tensor:
    """Computed on the CPU, so every device masks the same positions, and copied to ``device`` once."""
    if device.type != "cpu":
        return _rotation_mask(degrees, size, torch.device("cpu")).to(device)
    rotate = Rotate(degrees)
    ones = torch.ones(1, 1, *size, device=device)
    return (rotate.inverse(rotate.apply(ones), size) > 0.999).float()


TRANSFORM_SETS: dict[str, list[Any]] = {
    # The paper's K = 8 (Sec. 4.4): 4 resizes spanning 0.3–2×, 1 colour jitter, 1 flip,
    # 2 rotations within ±15°. Ranges are drawn per call (or per step) from the seed.
    "paper": [
        Resize((0.3, 0.5)),
        Resize((0.5, 0.8)),
        Resize((1.25, 1.6)),
        Resize((1.6, 2.0)),
        ColorJitter((0.8, 1.2), (0.8, 1.2), (0.8, 1.2)),
        HFlip(),
        Rotate((-15.0, -5.0)),
        Rotate((5.0, 15.0)),
    ],
    # A fixed set: flip, four resizes and two rotations of 10° (7 transforms, no jitter).
    "flip_resize_rotate": [HFlip(), Resize(0.5), Resize(0.75), Resize(1.5), Resize(2.0), Rotate(-10.0), Rotate(10.0)],
    # The same without rotations: the demo model was not trained with rotations, and
    # dropping them raised both clean and robust mIoU on the tuning split (docs/benchmarks/tuning.md).
    "flip_resize": [HFlip(), Resize(0.5), Resize(0.75), Resize(1.5), Resize(2.0)],
}


def parse_transform(spec: Any) -> Transform:
    """Build one transform from a ``Transform``, ``'hflip'``, ``'resize:0.5'``, ``'rotate:10'`` or a dict."""
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        cls = TRANSFORMS.get(name)
        if not arg:
            return cls()
        first = next(iter(cls.__dataclass_fields__))
        try:
            return cls(**{first: float(arg)})
        except ValueError as err:
            raise ValueError(f"bad transform spec {spec!r}: {err}") from None
    if isinstance(spec, dict):
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        return TRANSFORMS.build(kwargs)
    raise TypeError(f"a transform must be a Transform, a str such as 'resize:0.5', or a dict; got {spec!r}")


def sample_transforms(spec: str | list[Any], seed: int) -> list[Transform]:
    """Resolve ``spec`` and draw every random family once from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return [t.sample(generator) for t in build_transforms(spec)]


def build_transforms(spec: str | list[Any]) -> list[Transform]:
    """Resolve a named set (``'paper'``, ``'flip_resize'``, …) or a list of specs into transforms."""
    if isinstance(spec, str):
        if spec not in TRANSFORM_SETS:
            raise ValueError(f"unknown transform set {spec!r}; valid names: {', '.join(sorted(TRANSFORM_SETS))}")
        return list(TRANSFORM_SETS[spec])
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("transforms must not be empty")
        return [parse_transform(s) for s in spec]
    raise TypeError(f"transforms must be a set name or a list; got {type(spec).__name__}")
