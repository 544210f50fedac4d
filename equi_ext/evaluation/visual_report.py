"""Visual report (paper Figures 2 and 4): where an attack breaks equivariance and the defense restores it.

A table of numbers says that the defense works; the pictures say where. For the first N val images of
the demo benchmark, one row of panels each: input | ground truth | clean prediction | g⁻¹∘C∘F∘g(x) for
each transform of the defense | PGD prediction | restored prediction | equivariance map of the clean,
attacked and restored input. The map at a feature position is the mean over transforms of
cos(g⁻¹F(g x), F(x)) on the overlap (``equi_ext.core.scores.equivariance_map``); titles carry each
prediction's mIoU on that image and each map's equivariance score (paper Eq. 2 / K, the score
``EquivarianceDefense.score`` gives).

``visual_report`` writes into its work dir: ``visual_report.png`` (the grid), ``index.html``
(self-contained: one embedded PNG row per image, with a caption and a table naming every panel),
``visual_report.json`` (the numbers) and ``visual_report.md`` (a summary table).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..attacks import pixel_cross_entropy
from ..core.losses import equivariance_from_maps, transformed_features
from ..core.metrics import mean_iou
from ..core.scores import equivariance_map
from ..core.seeding import file_seed
from ..core.transforms import TRANSFORM_SETS, TRANSFORMS, Transform
from ..core.validation import SettingsError
from ..pipeline import EquiPipeline
from ..reporting import Report, atomic_write_bytes
from .demo import ATTACK_STEPS, CHECKPOINT, DATA, EPS, build_demo_runner, ensure_data

logger = logging.getLogger(__name__)

#: One panel's size in inches and the PNG resolution: a grid of R images × C panels is exactly
#: (C·PANEL_W·DPI) × (R·PANEL_H·DPI) pixels, which the tests check.
PANEL_W, PANEL_H, DPI = 1.7, 1.9, 100
IGNORE_RGB = (255, 255, 255)  # ignored labels and positions outside a transform's overlap
MAPS = ("clean", "attacked", "restored")


class Panel(NamedTuple):
    """One cell of the grid: ``name`` (the caption), a short ``title``, what to draw and how."""

    name: str
    title: str
    kind: str  # 'image' (H, W, 3) uint8 | 'labels' (H, W) int | 'map' (h, w) float, NaN off the overlap
    data: np.ndarray


def grid_pixels(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` images × ``cols`` panels."""
    return round(cols * PANEL_W * DPI), round(rows * PANEL_H * DPI)


def build_pipeline(preset: str, eps: float, steps: int, seed: int, transforms: list[str] | None) -> EquiPipeline:
    """The equivariance defense and PGD, validated before any model is built (ValueError naming the
    bad setting)."""
    defense = dict(type="equi", preset=preset, seed=seed)
    if transforms is not None:
        defense["transforms"] = transforms[0] if len(transforms) == 1 and transforms[0] in TRANSFORM_SETS \
            else transforms
    try:
        return EquiPipeline(defense, dict(type="pgd", eps=eps, steps=steps, seed=seed))
    except (KeyError, TypeError, ValueError) as err:
        raise SettingsError(str(err)) from None


def report_transforms(pipeline: EquiPipeline) -> list[Transform]:
    """The defense's transforms as its ``score`` draws them (same seed), one reversed panel each."""
    defense = pipeline.defense
    return defense.sample_transforms(torch.Generator().manual_seed(defense.seed))


def transform_label(transform: Transform) -> str:
    """``'resize:0.5'``-style spec of a concrete transform (the syntax ``parse_transform`` reads)."""
    name = next(n for n in TRANSFORMS.names() if TRANSFORMS.get(n) is type(transform))
    params = ",".join(f"{v:.3g}" for v in transform.__dict__.values())
    return f"{name}:{params}" if params else name


def image_tensors(runner, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Val image ``index`` as (1, 3, H, W) RGB pixels 0–255, its (1, H, W) labels and its metas."""
    from ..mmseg import runtime

    model = runner.model
    sample = runner.test_dataloader.dataset[index]
    data = model.data_preprocessor(dict(inputs=[sample["inputs"]], data_samples=[sample["data_samples"]]), False)
    (data_sample,) = data["data_samples"]
    if any(data_sample.metainfo.get("padding_size", (0, 0, 0, 0))):
        raise SettingsError(f"image {index} was padded to the model's input size; the report needs unpadded inputs "
                         "(the demo pipeline resizes every image to it)")
    pixels = runtime(model).pixels.to_pixels(data["inputs"])
    return pixels, data_sample.gt_sem_seg.data.long(), data_sample.metainfo


def host_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor of any device as a NumPy array, for plotting."""
    return tensor.detach().cpu().numpy()


def reversed_prediction(transform: Transform, logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g⁻¹ of the logits of g(x) as a prediction, and the labels it is scored against: both set to
    ``ignore_index`` where g⁻¹∘g loses the image (a rotation's corners), on the labels' device."""
    size = tuple(labels.shape[-2:])
    lost = ~transform.valid_mask(size, labels.device).bool()[0]
    pred = transform.inverse(logits, size).argmax(dim=1)
    return pred.masked_fill(lost, ignore_index), labels.masked_fill(lost, ignore_index)


def analyse_image(runner, pipeline: EquiPipeline, index: int, names: dict[str, str]) -> tuple[list[Panel], dict]:
    """The panels of one image and its numbers: per-panel mIoU, equivariance scores and map ranges."""
    from ..mmseg import runtime

    model = runner.model
    rt = runtime(model)
    pixels, labels, meta = image_tensors(runner, index)
    size = tuple(pixels.shape[-2:])
    num_classes, ignore = model.decode_head.num_classes, model.decode_head.ignore_index

    def logits_fn(x: torch.Tensor) -> torch.Tensor:  # one meta per image of any batch the core makes
        return rt.logits_fn([meta] * x.shape[0], (0, 0, 0, 0), size)(x)

    def loss_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pixel_cross_entropy(logits_fn(x), t, ignore)

    transforms = report_transforms(pipeline)
    seeds = [file_seed(meta["img_path"])]  # the seed tools/test.py gives this image
    adv, _ = pipeline.run(pixels, attack=True, defend=False, features=rt.features, model=model, seeds=seeds,
                          targets=labels, loss_fn=loss_fn, logits_fn=logits_fn, ignore_index=ignore)
    restored, _ = pipeline.run(adv, attack=False, defend=True, features=rt.features, model=model, seeds=seeds)

    miou, scores, map_range = {}, {}, {}
    panels = [Panel(names["input"], "input", "image", host_array(pixels[0].permute(1, 2, 0).round().byte())),
              Panel(names["gt"], "ground truth", "labels", host_array(labels[0]))]

    def prediction(key: str, name: str, title: str, pred: torch.Tensor, target: torch.Tensor = labels):
        miou[key] = mean_iou(pred, target, num_classes, ignore)
        panels.append(Panel(name, f"{title}\nmIoU {miou[key]:.1f}", "labels", host_array(pred[0])))

    with torch.no_grad():
        (base,), outputs = transformed_features(logits_fn, pixels, transforms)
        prediction("clean", names["clean"], "clean", base.argmax(dim=1))
        for transform, (out,) in zip(transforms, outputs):
            key = transform_label(transform)
            prediction(key, names[key], f"g⁻¹∘C∘F∘g, {key}", *reversed_prediction(transform, out, labels, ignore))
        prediction("attacked", names["attacked"], f"PGD-{pipeline.attack_cfg['steps']}", logits_fn(adv).argmax(dim=1))
        prediction("restored", names["restored"], "restored", logits_fn(restored).argmax(dim=1))
        for key, x in zip(MAPS, (pixels, adv, restored)):
            feats = transformed_features(rt.features, x, transforms)
            scores[key] = float(equivariance_from_maps(*feats, transforms).mean())
            emap = equivariance_map(*feats, transforms)[0]
            finite = emap[~emap.isnan()]
            map_range[key] = dict(mean=float(finite.mean()), min=float(finite.min()), max=float(finite.max()))
            panels.append(Panel(names[f"map_{key}"], f"equivariance, {key}\nscore {scores[key]:.3f}", "map",
                                host_array(emap)))
    numbers = dict(index=index, img_path=Path(meta["img_path"]).name, miou=miou, score=scores, map=map_range,
                   linf_attack=float((adv - pixels).abs().max()), linf_restore=float((restored - adv).abs().max()))
    return panels, numbers


def panel_names(pipeline: EquiPipeline, preset: str) -> dict[str, str]:
    """Caption of every panel, keyed as ``analyse_image`` keys them, in grid order."""
    attack = pipeline.attack_cfg
    names = {"input": "input image", "gt": "ground truth", "clean": "clean prediction"}
    for transform in report_transforms(pipeline):
        key = transform_label(transform)
        names[key] = f"reversed prediction g⁻¹∘C∘F∘g(x), g = {key}"
    names["attacked"] = f"attacked prediction (PGD-{attack['steps']}, ε = {attack['eps']:g})"
    names["restored"] = f"restored prediction (equivariance defense, preset '{preset}')"
    names.update({f"map_{key}": f"equivariance map, {key} input" for key in MAPS})
    return names


def render(rows: list[list[Panel]], palette: np.ndarray, limits: tuple[float, float]) -> bytes:
    """PNG of a grid (one row per image) through matplotlib's Agg canvas (no pyplot state)."""
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = len(rows[0])
    fig = Figure(figsize=(cols * PANEL_W, len(rows) * PANEL_H), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    fig.subplots_adjust(left=0.005, right=0.96, bottom=0.01, top=1 - 0.42 / (len(rows) * PANEL_H),
                        wspace=0.06, hspace=0.3)
    cmap = mpl.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    colours = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8) + IGNORE_RGB]).astype(np.uint8)
    mappable = None
    for row, row_axes in zip(rows, axes):
        for panel, ax in zip(row, row_axes):
            ax.set_axis_off()
            ax.set_title(panel.title, fontsize=7)
            if panel.kind == "image":
                ax.imshow(panel.data)
            elif panel.kind == "labels":
                ax.imshow(colours[panel.data.clip(0, 255)], interpolation="nearest")
            else:
                mappable = ax.imshow(panel.data, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    if mappable is not None:
        cax = fig.add_axes([0.965, 0.02, 0.008, 0.9])
        fig.colorbar(mappable, cax=cax).ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def html_page(rows: list[list[Panel]], records: list[dict], row_pngs: list[bytes], settings: dict) -> str:
    """One self-contained page: settings, then per image its embedded row, caption and panel table."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Equivariance defense: visual report</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}img{max-width:100%}"
             "table{border-collapse:collapse;margin:.5em 0 2em}td,th{border:1px solid #ccc;padding:2px 8px}"
             "td.num{text-align:right}</style></head><body>",
             "<h1>Robust perception through equivariance: visual report</h1>",
             "<p>" + esc(", ".join(f"{k} = {' '.join(v) if isinstance(v, list) else v}" for k, v in settings.items()))
             + "</p>",
             "<p>Predictions are coloured with the dataset palette (white: ignored or outside the transform's "
             "overlap); equivariance maps have one cell per position of the defense's feature map and run from red "
             "(cosine low) to green (high), grey where no transform's overlap reaches. mIoU is per image, in "
             "percent; a map's score is the equivariance score (paper Eq. 2 / K) of that input.</p>"]
    for panels, record, png in zip(rows, records, row_pngs):
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        caption = "Panels, left to right: " + "; ".join(p.name for p in panels) + "."
        parts += [f"<section><h2>Image {record['index']}: {esc(record['img_path'])}</h2>",
                  f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>',
                  "<table><tr><th>panel</th><th>shows</th><th>value</th></tr>"]
        for position, panel in enumerate(panels, 1):
            value = panel.title.split("\n")[-1] if "\n" in panel.title else ""
            parts.append(f"<tr><td class=\"num\">{position}</td><td>{esc(panel.name)}</td><td>{esc(value)}</td></tr>")
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary(data: dict) -> str:
    """Markdown: per image, mIoU and equivariance score clean / attacked / restored; the page beside it."""
    records = data["images"]
    lines = ["| image | mIoU clean | mIoU attacked | mIoU restored | score clean | score attacked | score restored |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        cells = [r["img_path"], *(f"{r['miou'][k]:.1f}" for k in MAPS), *(f"{r['score'][k]:.3f}" for k in MAPS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nThe page: [index.html](index.html), the grid: visual_report.png.\n"


REPORT = Report(summary)


def class_colours(metainfo: dict, num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the dataset's palette, or matplotlib's tab20 for a dataset without one."""
    palette = metainfo.get("palette")
    if palette:
        return np.asarray(palette, np.uint8).reshape(-1, 3)
    import matplotlib as mpl

    return (np.asarray(mpl.colormaps["tab20"].colors)[np.arange(num_classes) % 20] * 255).round().astype(np.uint8)


def map_limits(rows: list[list[Panel]]) -> tuple[float, float]:
    """One colour scale for every map of the report: from the lowest value (to 0.1, at most 0) to 1."""
    lowest = min(float(np.nanmin(p.data)) for row in rows for p in row if p.kind == "map")
    return (min(0.0, math.floor(lowest * 10) / 10), 1.0)


def visual_report(*, num_images: int = 4, work_dir: str | Path, data_root: str | Path = DATA,
                  checkpoint: str | Path = CHECKPOINT, eps: float = EPS, steps: int = ATTACK_STEPS,
                  preset: str = "fast", transforms: list[str] | None = None, seed: int = 0,
                  command: str | None = None) -> dict:
    """The report of the first ``num_images`` val images of ``data_root`` (the demo benchmark, generated if
    missing, by default) under PGD-``steps`` at ``eps`` and the equivariance defense ``preset`` (its
    ``transforms`` instead of the preset's: a set name or specs, one panel each), ``seed`` seeding the
    attack's start and the defense. Writes the PNG, HTML, JSON and Markdown into ``work_dir`` and returns
    the JSON's content (settings, columns, map limits, grid geometry, per-image numbers, means, seconds).

    Raises:
        ValueError: ``num_images`` < 1, a missing checkpoint, defense or attack settings the library
            refuses, transforms that are not distinct, a data root without ``img_dir/val`` or with fewer
            than ``num_images`` val images — all before any image is attacked.
    """
    if num_images < 1:
        raise SettingsError(f"num_images must be >= 1; got {num_images}")
    checkpoint, data_root = Path(checkpoint), Path(data_root)
    if not checkpoint.is_file():
        raise SettingsError(f"checkpoint {str(checkpoint)!r} does not exist")
    pipeline = build_pipeline(preset, eps, steps, seed, transforms)
    labels = [transform_label(t) for t in report_transforms(pipeline)]
    if len(set(labels)) < len(labels):
        raise SettingsError(f"the defense's transforms must be distinct (one panel each); got {labels}")
    if data_root == DATA:
        ensure_data()
    elif not (data_root / "img_dir/val").is_dir():
        raise SettingsError(f"data root {str(data_root)!r} has no img_dir/val (tools/generate_data.py writes it)")
    work_dir = Path(work_dir)
    start = time.perf_counter()
    runner = build_demo_runner(data_root, num_images, work_dir, checkpoint)
    available = len(runner.test_dataloader.dataset)
    if available < num_images:
        raise SettingsError(f"num_images is {num_images} but {data_root} has {available} val images")
    runner.model.eval()
    names = panel_names(pipeline, preset)
    rows, records = [], []
    for index in range(num_images):
        panels, numbers = analyse_image(runner, pipeline, index, names)
        rows.append(panels)
        records.append(numbers)
    palette = class_colours(runner.test_dataloader.dataset.metainfo, runner.model.decode_head.num_classes)
    limits = map_limits(rows)
    grid = render(rows, palette, limits)
    settings = dict(num_images=num_images, eps=eps, attack_steps=steps, preset=preset,
                    transforms=labels, seed=seed, checkpoint=checkpoint.name, data_root=str(data_root))
    atomic_write_bytes(work_dir / "visual_report.png", grid)
    page = html_page(rows, records, [render([row], palette, limits) for row in rows], settings)
    atomic_write_bytes(work_dir / "index.html", page.encode())
    mean = {group: {k: float(np.mean([r[group][k] for r in records])) for k in records[0][group]}
            for group in ("miou", "score")}
    report = dict(settings=settings, columns=list(names.values()), map_limits=limits,
                  grid=dict(rows=len(rows), columns=len(names), pixels=list(grid_pixels(len(rows), len(names)))),
                  images=records, mean=mean, seconds=time.perf_counter() - start)
    REPORT.write(work_dir, "visual_report", report, command=command)
    logger.info("wrote the page %s and the grid %s", work_dir / "index.html", work_dir / "visual_report.png")
    return report
