"""Seeded generator for the synthetic-shapes segmentation/detection benchmark.

The benchmark lets the MMSegmentation and Detectron2 adapters be exercised end
to end without downloading a real data set. It is framework-free (numpy,
Pillow, pycocotools) so that generating data never needs torch or either
framework.

Design choices, and why:

* Scenes are "natural-ish" (colour gradients, low-frequency blobs, per-pixel
  noise, shaded/striped shapes, occlusion) and shape colours are independent of
  the class, so a model has to learn shape rather than a colour threshold.
* Masks are rasterised without anti-aliasing and colours painted through them;
  image, semantic map and visible instance masks all derive from one "owner"
  map (which instance covers each pixel), so every label is exact.
* A shape that would leave itself or an earlier shape with fewer than
  ``min_area`` visible pixels is re-sampled before painting, so no labelled
  pixel lacks a COCO annotation.
* PNG output, JSON with sorted keys, and independent per-split streams
  ``np.random.default_rng([seed, split_index])``: one seed gives byte-identical
  files, and changing ``num_train`` does not change val.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..files import atomic_write_text

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")
"""Semantic classes; the index is the value in the label map (0 = background)."""

PALETTE: list[list[int]] = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]
"""One RGB triple per entry of :data:`CLASSES`, for visualisation only."""

SPLITS: tuple[str, ...] = ("train", "val")
MIN_IMAGE_SIZE = 32
DEFAULT_MIN_AREA = 20
FORMAT_VERSION = 1

# Shape "radius" as a fraction of the image side; all classes get the same area
# for a given radius so that size carries no class information.
_RADIUS_RANGE = (0.08, 0.25)
_CENTRE_RANGE = (0.1, 0.9)
_MAX_ATTEMPTS = 50
# Owned output entries: the only things ``overwrite=True`` removes.
_OWNED_ENTRIES = ("img_dir", "ann_dir", "annotations", "meta.json")


def _check_int(name: str, value: Any, minimum: int) -> int:
    """Reject non-int (bools included) or too-small user input with a named error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return split


def split_paths(root: str | Path, split: str) -> dict[str, Path]:
    """Where one split lives under a root; shared with the adapters so the layout is defined once.

    Args:
        root: Data set root (the generator's ``out_dir``).
        split: ``"train"`` or ``"val"``.

    Returns:
        ``img_dir`` (RGB PNGs), ``ann_dir`` (label-map PNGs) and ``coco_json``
        (COCO instances file) paths.

    Raises:
        ValueError: If ``split`` is not a known split.
    """
    root, split = Path(root), _check_split(split)
    return {
        "img_dir": root / "img_dir" / split,
        "ann_dir": root / "ann_dir" / split,
        "coco_json": root / "annotations" / f"instances_{split}.json",
    }


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream that :func:`generate_dataset` uses for ``split``.

    Exposed so tests (and users) can replay a split scene by scene with
    :func:`render_scene` and recover information not stored on disk, such as
    the un-occluded shape masks.
    """
    seed = _check_int("seed", seed, 0)
    return np.random.default_rng([seed, SPLITS.index(_check_split(split))])


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly stretch a (g, g, C) grid to (size, size, C): smooth, seedable noise."""
    g = coarse.shape[0] - 1
    t = np.linspace(0.0, g, size)
    i0 = np.minimum(np.floor(t).astype(int), max(g - 1, 0))
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f)[:, :, None] + coarse[np.minimum(i0 + 1, g)] * f[:, :, None]
    return rows[:, i0] * (1 - f.T)[:, :, None] + rows[:, np.minimum(i0 + 1, g)] * f.T[:, :, None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float RGB background: colour gradient + low-frequency noise + soft blobs."""
    canvas = _upsample(rng.uniform(0, 255, (2, 2, 3)), size)
    cells = int(rng.integers(3, 8))
    canvas += _upsample(rng.normal(0.0, 1.0, (cells + 1, cells + 1, 3)), size) * rng.uniform(10, 35)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.05, 0.2) * size
        alpha = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) * rng.uniform(0.3, 0.8)
        canvas = canvas * (1 - alpha[..., None]) + rng.uniform(0, 255, 3) * alpha[..., None]
    return canvas


def _sample_shape(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Draw one shape's parameters; the colour is drawn independently of the class."""
    return {
        "category_id": int(rng.integers(1, len(CLASSES))),
        "center": [float(v) for v in rng.uniform(_CENTRE_RANGE[0] * size, _CENTRE_RANGE[1] * size, 2)],
        "radius": float(rng.uniform(*_RADIUS_RANGE) * size),
        "angle": float(rng.uniform(0.0, 2 * math.pi)),
        "color": [int(v) for v in rng.integers(0, 256, 3)],
    }


def _shape_mask(shape: dict[str, Any], size: int) -> np.ndarray:
    """Rasterise a shape without anti-aliasing (PIL "L" image) into a bool mask."""
    cx, cy = shape["center"]
    r, angle, kind = shape["radius"], shape["angle"], CLASSES[shape["category_id"]]
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        # Equal-area polygons: circumradius for a square / equilateral triangle
        # whose area equals that of the circle of radius r.
        n = 4 if kind == "square" else 3
        circum = r * math.sqrt(2 * math.pi / (n * math.sin(2 * math.pi / n)))
        thetas = [angle + 2 * math.pi * k / n for k in range(n)]
        draw.polygon([(cx + circum * math.cos(t), cy + circum * math.sin(t)) for t in thetas], fill=1)
    return np.asarray(canvas, dtype=bool)


def _shape_texture(rng: np.random.Generator, shape: dict[str, Any], size: int) -> np.ndarray:
    """Float RGB fill for one shape: its colour with directional shading, mottling and optional stripes."""
    cx, cy = shape["center"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phi = rng.uniform(0, 2 * math.pi)
    proj = ((xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)) / shape["radius"]
    shade = 1.0 + rng.uniform(0.05, 0.3) * proj
    fill = np.asarray(shape["color"], dtype=np.float64) * shade[..., None]
    cells = int(rng.integers(2, 6))
    fill += _upsample(rng.normal(0.0, 1.0, (cells + 1, cells + 1, 1)), size) * rng.uniform(4, 15)
    if rng.random() < 0.3:
        period = rng.uniform(0.3, 0.8)
        fill += (rng.uniform(8, 20) * np.sin(2 * math.pi * proj / period))[..., None]
    return fill


def _bbox(mask: np.ndarray) -> list[int]:
    """Tight [x, y, w, h] box in pixels of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def render_scene(
    rng: np.random.Generator,
    image_size: int,
    *,
    max_shapes: int = 5,
    min_area: int = DEFAULT_MIN_AREA,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render one scene with exact labels.

    Shapes are placed one at a time in draw order; a candidate that would leave
    itself or any earlier shape with fewer than ``min_area`` visible pixels is
    re-sampled (at most a fixed number of attempts, after which the scene simply
    has fewer shapes). Painting happens only after placement, from one owner
    map, which is what makes image, semantic map and instance masks agree.

    Args:
        rng: Random stream; consumed deterministically.
        image_size: Side of the square image in pixels (>= 32).
        max_shapes: Upper bound on shapes; the count is uniform in [1, max_shapes].
        min_area: Minimum visible pixels of every kept instance.

    Returns:
        ``(image, semantic, instances)``: ``image`` is uint8 (H, W, 3) RGB,
        ``semantic`` uint8 (H, W) with values indexing :data:`CLASSES`, and
        ``instances`` one dict per shape in draw order with ``category_id``,
        ``mask`` (visible, bool), ``full_mask`` (the whole shape inside the
        image, bool), ``area``, ``bbox`` (of the visible mask) and the drawing
        parameters ``center``, ``radius``, ``angle``, ``color``.

    Raises:
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
        ValueError: On an invalid argument.
        RuntimeError: If not even one shape fits ``min_area`` (only with an
            unreasonably large ``min_area``).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    max_shapes = _check_int("max_shapes", max_shapes, 1)
    min_area = _check_int("min_area", min_area, 1)

    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)
    shapes: list[dict[str, Any]] = []
    full_masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(_MAX_ATTEMPTS if shapes else 20 * _MAX_ATTEMPTS):
            shape = _sample_shape(rng, size)
            full = _shape_mask(shape, size)
            trial = owner.copy()
            trial[full] = len(shapes)
            visible_areas = np.bincount(trial[trial >= 0], minlength=len(shapes) + 1)
            if visible_areas.min() >= min_area:
                owner = trial
                shapes.append(shape)
                full_masks.append(full)
                break
        if not shapes:
            raise RuntimeError(f"could not place any shape with min_area={min_area} in a {size}x{size} image")

    instances: list[dict[str, Any]] = []
    for index, (shape, full) in enumerate(zip(shapes, full_masks)):
        canvas[full] = _shape_texture(rng, shape, size)[full]
        visible = owner == index
        instances.append(
            dict(shape, mask=visible, full_mask=full, area=int(visible.sum()), bbox=_bbox(visible))
        )
    canvas += rng.normal(0.0, rng.uniform(2.0, 6.0), canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    lut = np.array([0] + [shape["category_id"] for shape in shapes], dtype=np.uint8)
    return image, lut[owner + 1], instances


def _coco_annotation(instance: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """COCO record of an instance's visible mask as compressed RLE with str counts."""
    from pycocotools import mask as mask_utils  # only the COCO writer needs it (both adapters' extras have it)

    rle = mask_utils.encode(np.asfortranarray(instance["mask"].astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": instance["category_id"],
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": instance["area"],
        "bbox": instance["bbox"],
        "iscrowd": 0,
    }


def _write_json(path: Path, obj: Any) -> None:
    """Sorted keys and fixed indentation: the same content is the same bytes; written whole or not at all (the
    split's ``meta.json`` marks a finished generation)."""
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2) + "\n")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a directory; got {str(out)!r}, which is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"out_dir {str(out)!r} exists and is not empty; pass overwrite=True to replace it"
            )
        for name in _OWNED_ENTRIES:
            entry = out / name
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_split(
    paths: dict[str, Path],
    rng: np.random.Generator,
    num_images: int,
    image_size: int,
    progress: Callable[[int], Any] | None,
) -> dict[str, Any]:
    """Render and write one split's PNGs and COCO file; returns its counts for ``meta.json``."""
    for directory in (paths["img_dir"], paths["ann_dir"], paths["coco_json"].parent):
        directory.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    per_class = dict.fromkeys(CLASSES[1:], 0)
    for index in range(num_images):
        image, semantic, instances = render_scene(rng, image_size)
        file_name = f"{index:05d}.png"
        Image.fromarray(image).save(paths["img_dir"] / file_name)
        Image.fromarray(semantic).save(paths["ann_dir"] / file_name)
        images.append({"id": index + 1, "file_name": file_name, "height": image_size, "width": image_size})
        for instance in instances:
            annotations.append(_coco_annotation(instance, len(annotations) + 1, index + 1))
            per_class[CLASSES[instance["category_id"]]] += 1
        if progress is not None:
            progress(1)
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)][1:]
    info = {"description": "equi-ext synthetic shapes", "version": str(FORMAT_VERSION)}
    coco = dict(info=info, licenses=[], images=images, annotations=annotations, categories=categories)
    _write_json(paths["coco_json"], coco)
    return {"num_images": num_images, "num_instances": len(annotations), "instances_per_class": per_class}


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 128,
    num_train: int = 300,
    num_val: int = 100,
    progress: Callable[[int], Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic-shapes benchmark in MMSeg layout plus COCO instances.

    Layout under ``out_dir``: ``img_dir/{split}/{i:05d}.png`` (RGB),
    ``ann_dir/{split}/{i:05d}.png`` (label map, values index :data:`CLASSES`),
    ``annotations/instances_{split}.json`` (COCO, RLE masks of visible parts)
    and ``meta.json``. A split with zero images is not written.

    Args:
        out_dir: Output root; must be absent or empty unless ``overwrite``.
        seed: Non-negative seed; the same seed gives byte-identical files.
        image_size: Side of the square images in pixels (>= 32).
        num_train: Number of training images (>= 0).
        num_val: Number of validation images (>= 0).
        progress: Called as ``progress(1)`` after each image is written
            (e.g. ``tqdm.update``), so callers can show progress without this
            module depending on a UI library.
        overwrite: Replace the generator's own entries in a non-empty
            ``out_dir`` (other files there are left alone).

    Returns:
        Summary with ``root``, ``meta_json``, ``seed``, ``image_size`` and per
        split ``num_images``, ``num_instances``, ``img_dir``, ``ann_dir`` and
        ``coco_json`` (paths as str).

    Raises:
        ValueError: On an invalid argument or a non-empty ``out_dir``.
        TypeError: If ``progress`` is not callable.
    """
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    counts = {"train": _check_int("num_train", num_train, 0), "val": _check_int("num_val", num_val, 0)}
    if not any(counts.values()):
        raise ValueError("num_train and num_val are both 0: zero images requested")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None; got {type(progress).__name__}")
    out = Path(out_dir)
    _prepare_out_dir(out, bool(overwrite))

    summary: dict[str, Any] = {"root": str(out), "meta_json": str(out / "meta.json"), "seed": seed}
    summary.update(image_size=image_size, splits={})
    meta_splits: dict[str, Any] = {}
    for split in (s for s in SPLITS if counts[s] > 0):
        paths = split_paths(out, split)
        stats = _write_split(paths, split_rng(seed, split), counts[split], image_size, progress)
        meta_splits[split] = stats
        summary["splits"][split] = {key: stats[key] for key in ("num_images", "num_instances")}
        summary["splits"][split].update({key: str(value) for key, value in paths.items()})
        logger.info(
            "wrote %s: %d images, %d instances", paths["img_dir"], counts[split], stats["num_instances"]
        )

    # Only relative, content-derived fields: two roots with one seed must match byte for byte.
    meta = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_train": counts["train"],
        "num_val": counts["val"],
        "min_area": DEFAULT_MIN_AREA,
        "classes": list(CLASSES),
        "palette": [list(c) for c in PALETTE],
        "splits": meta_splits,
    }
    _write_json(out / "meta.json", meta)
    return summary
