"""Corruption robustness of a demo model, vanilla and defended (Michaelis et al. 2019, "Benchmarking Robustness in
Object Detection"): P, mPC and rPC over the 15 common corruptions at severities 1–5.

Every (corruption, severity) is evaluated by the framework's own metric (MMSeg's ``IoUMetric`` through
``PerImageIoUMetric``, Detectron2's ``COCOEvaluator``) for three columns: no defense, the equivariance defense,
and detect-then-defend with its threshold at a percentile of the clean scores on the tuning split. Each image is
corrupted as it is loaded (before resizing and normalisation), seeded by its file name; per-image records are
written as each image finishes, so ``resume`` continues a killed run and ends with the same numbers.

P is the clean metric, mPC the mean over the corruptions and severities run, rPC = mPC / P. A column's time is the
sum of its cells' evaluation times (corrupting included), over the invocations that finished them (a killed
invocation's unfinished cell is not counted).
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from ..cells import Cell
from ..core.validation import SettingsError
from ..data.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions
from ..reporting import Report, atomic_write_json, slug
from .backends import build_backend, check_framework
from .demo import DATA, ensure_data, ensure_tune_data

logger = logging.getLogger(__name__)

#: Hendrycks & Dietterich's four families, each plotted against severity.
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
COLUMNS = ("vanilla", "equivariance", "detect-then-defend")


def corruption_summary(clean: dict[str, float], table: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """Per column: ``P`` (clean), ``mPC`` (mean over every corruption and severity in ``table``, which maps
    corruption → severity → column → metric) and ``rPC`` = mPC / P (NaN when P is 0)."""
    summary = {}
    for column, p in clean.items():
        mpc = statistics.mean(statistics.mean(by_severity[s][column] for s in by_severity)
                              for by_severity in table.values())
        summary[column] = dict(P=p, mPC=mpc, rPC=mpc / p if p else float("nan"))
    return summary


def check_settings(corruptions: Sequence[str], severities: Sequence[int], num_images: int, num_tune_images: int,
                   clean_percentile: float) -> None:
    check_corruptions(corruptions, severities)
    if num_images < 1 or num_tune_images < 2:
        raise SettingsError(f"need num_images >= 1 and num_tune_images >= 2; got {num_images}, {num_tune_images}")
    if not 0 <= clean_percentile <= 100:
        raise SettingsError(f"clean_percentile must be in [0, 100]; got {clean_percentile}")


def check_resumable(out: Path, resume: bool, settings: dict) -> None:
    """Record the settings the work dir's records depend on; refuse to resume records made with others (they
    would be mixed into one table). The images, corruptions and severities may change: each is its own record."""
    path = out / "settings.json"
    if resume and path.is_file():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise SettingsError(f"{out} holds records made with other settings ({what}); resume with those or use "
                                "another --work-dir")
    atomic_write_json(path, settings)


def render(data: dict) -> str:
    """The page: P, mPC, rPC and time per column; per corruption the mean over severities and the share of
    images detect-then-defend flagged."""
    columns, key = list(data["columns"]), data["metric_name"]
    lines = [f"{key} (%) of the {data['model']} on the first {data['num_images']} val images under the common "
             f"corruptions ({len(data['corruptions'])} of 15, severities {', '.join(map(str, data['severities']))}), "
             f"each image corrupted as loaded, seeded by its file name; {data['settings']}. Detect-then-defend "
             f"defends an image when its equivariance score is below {data['threshold']:.4f}, the "
             f"{data['clean_percentile']:g}th percentile of the clean scores of the first {data['num_tune_images']} "
             "tuning-split images.", "",
             "| | P (clean) | mPC | rPC | seconds (all cells) |", "|---|---|---|---|---|"]
    for column in columns:
        s = data["summary"][column]
        lines.append(f"| {column} | {s['P']:.2f} | {s['mPC']:.2f} | {s['rPC'] * 100:.1f}% | "
                     f"{data['seconds'][column]:.0f} |")
    lines += ["", "Per corruption (mean over the severities run); the last column is the share of images "
              "detect-then-defend flagged and defended.", "",
              "| corruption | " + " | ".join(columns) + " | flagged |", "|---" * (len(columns) + 2) + "|"]
    lines.append("| clean | " + " | ".join(f"{data['clean'][c]:.2f}" for c in columns)
                 + f" | {data['flagged']['clean'] * 100:.0f}% |")
    for corruption, by_severity in data["table"].items():
        means = [statistics.mean(v[c] for v in by_severity.values()) for c in columns]
        flagged = statistics.mean(data["flagged"][corruption][s] for s in by_severity)
        lines.append(f"| {corruption} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {flagged * 100:.0f}% |")
    lines += ["", "Every cell (corruption × severity × column) is in the result JSON beside this page (and the CSV the "
              "tool writes); the plot shows the metric against severity per corruption family (mean over the "
              "family's corruptions run).", "",
              f"![{key} against severity](corruption_{data['framework']}.png)"]
    return "\n".join(lines) + "\n"


def plot(data: dict) -> bytes:
    """Metric against severity (0 = clean) per family, one line per column."""
    from matplotlib.figure import Figure

    families = {f: [c for c in names if c in data["table"]] for f, names in FAMILIES.items()}
    families = {f: names for f, names in families.items() if names}
    figure = Figure(figsize=(3.2 * len(families), 3.0))
    axes = figure.subplots(1, len(families), sharey=True, squeeze=False)[0]
    severities = [str(s) for s in data["severities"]]
    for ax, (family, names) in zip(axes, families.items()):
        for column in data["columns"]:
            ys = [data["clean"][column]] + [statistics.mean(data["table"][c][s][column] for c in names)
                                            for s in severities]
            ax.plot([0, *map(int, severities)], ys, marker="o", label=column)
        ax.set_title(f"{family} ({len(names)})")
        ax.set_xlabel("severity (0 = clean)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(data["metric_name"])
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


REPORT = Report(render, {"corruption_{data[framework]}.png": plot})


def detection_threshold(framework: str, tune_root: str | Path | None, num_tune_images: int, clean_percentile: float,
                        checkpoint: Path | None, preset: str, out: Path, resume: bool) -> tuple[dict, dict, float]:
    """The equivariance defense's config, the detector alone (threshold −1 flags nothing, so its records hold the
    score of each input as it came) and detect-then-defend's threshold: the ``clean_percentile``-th percentile of
    the detector's scores on the first ``num_tune_images`` clean tuning images."""
    import numpy as np

    logger.info("threshold: detect-then-defend's scores of %d clean tuning images", num_tune_images)
    tune = build_backend(framework, Path(tune_root) if tune_root else ensure_tune_data(), num_tune_images,
                         out / "tune", checkpoint, preset)
    equi = tune.defense("equivariance")
    detector = dict(type="detect_then_defend", threshold=-1.0, defense=equi)
    scored = tune.cell(Cell("clean", None), Cell("detector", detector), out / "cells" / "tune", resume=resume)
    return equi, detector, float(np.percentile([r["score"] for r in scored["per_image"]], clean_percentile))


def condition_cells(backend, conditions: list[tuple[str, dict | None]], columns: dict[str, dict | None],
                    detector: dict, threshold: float, out: Path, resume: bool):
    """Every condition × column cell, and the share of each condition's images the detector flags. Returns the
    values by (condition, column), the shares by condition, each column's seconds (summed over the invocations
    that ran its images: a resumed cell runs fewer) and the CSV rows."""
    import numpy as np

    values: dict[tuple[str, str], float] = {}
    flagged: dict[str, float] = {}
    seconds = dict.fromkeys(columns, 0.0)
    timings_path = out / "cell_seconds.json"
    timings = json.loads(timings_path.read_text()) if resume and timings_path.is_file() else {}
    csv_rows = []
    for label, corruption in conditions:
        for column, defense in columns.items():
            cell = backend.cell(Cell(label, None), Cell(column, defense), out / "cells" / slug(column) / slug(label),
                                resume=resume, corruption=corruption)
            values[label, column] = cell[backend.key]
            key = f"{column}/{label}"
            timings[key] = timings.get(key, 0.0) + cell["seconds"]
            atomic_write_json(timings_path, timings)
            seconds[column] += timings[key]
            print(f"  {label:<22} {column:<20} {backend.metric} {cell[backend.key]:6.2f}  "
                  f"({cell['run_images']} images run, {cell['seconds']:.0f} s)", flush=True)
            csv_rows.append(dict(condition=label, column=column, **{backend.key: cell[backend.key]},
                                 seconds=timings[key]))
        scored = backend.cell(Cell(label, None), Cell("detector", detector), out / "cells" / "detector" / slug(label),
                              resume=resume, corruption=corruption)
        flagged[label] = float(np.mean([not r["score"] >= threshold for r in scored["per_image"]]))  # NaN: flagged
    return values, flagged, seconds, csv_rows


def corruption_benchmark(*, framework: str = "mmseg", corruptions: Sequence[str] = CORRUPTIONS,
                         severities: Sequence[int] = SEVERITIES, num_images: int = 8, num_tune_images: int = 16,
                         clean_percentile: float = 5.0, data_root: str | Path = DATA,
                         tune_root: str | Path | None = None, checkpoint: str | Path | None = None,
                         preset: str = "fast", work_dir: str | Path, resume: bool = False,
                         command: str | None = None) -> dict:
    """Evaluate the demo DeepLabV3 (mIoU) or, with ``framework='detectron2'``, the demo Mask R-CNN (mask AP) on the first
    ``num_images`` images of ``data_root`` clean and under each corruption × severity, for every column of
    ``COLUMNS``; detect-then-defend's threshold is the ``clean_percentile``-th percentile of its scores on the first
    ``num_tune_images`` clean images of ``tune_root`` (default: the seed-1 tuning split). Writes
    ``work_dir/corruption_<framework>.{md,json,csv,png}`` and returns the JSON's content.

    Raises:
        SettingsError: an unknown framework or corruption, a severity outside 1–5, too few images, a percentile outside
            [0, 100] or a missing checkpoint — before anything runs.
    """
    corruptions, severities = list(corruptions), [int(s) for s in severities]
    check_framework(framework)
    check_settings(corruptions, severities, num_images, num_tune_images, clean_percentile)
    if checkpoint and not Path(checkpoint).is_file():
        raise SettingsError(f"checkpoint {checkpoint} does not exist")
    out = Path(work_dir)
    if Path(data_root) == DATA:
        ensure_data()
    checkpoint = Path(checkpoint) if checkpoint else None
    check_resumable(out, resume, dict(framework=framework, data_root=str(data_root), tune_root=str(tune_root),
                                      num_tune_images=num_tune_images, clean_percentile=clean_percentile,
                                      checkpoint=str(checkpoint), preset=preset))
    start = time.perf_counter()
    equi, detector, threshold = detection_threshold(framework, tune_root, num_tune_images, clean_percentile,
                                                    checkpoint, preset, out, resume)
    backend = build_backend(framework, Path(data_root), num_images, out / "val", checkpoint, preset)
    columns = {"vanilla": None, "equivariance": equi,
               "detect-then-defend": dict(type="detect_then_defend", threshold=threshold, defense=equi)}
    conditions = [("clean", None)] + [(f"{c} {s}", dict(corruption=c, severity=s))
                                      for c in corruptions for s in severities]
    logger.info("%d cells: %d conditions × %d columns; threshold %.4f", len(conditions) * len(columns),
                len(conditions), len(columns), threshold)
    values, flagged, seconds, csv_rows = condition_cells(backend, conditions, columns, detector, threshold, out,
                                                         resume)
    table = {c: {str(s): {col: values[f"{c} {s}", col] for col in columns} for s in severities} for c in corruptions}
    clean = {col: values["clean", col] for col in columns}
    data = dict(framework=backend.framework, model=backend.model_name, metric=backend.key,
                metric_name=backend.metric, num_images=num_images, num_tune_images=num_tune_images,
                clean_percentile=clean_percentile, threshold=threshold, settings=backend.settings,
                corruptions=corruptions, severities=severities, columns=columns, clean=clean, table=table,
                summary=corruption_summary(clean, table),
                flagged={"clean": flagged["clean"],
                         **{c: {str(s): flagged[f"{c} {s}"] for s in severities} for c in corruptions}},
                seconds=seconds, total_seconds=time.perf_counter() - start)
    REPORT.write(out, f"corruption_{backend.framework}", data, csv_rows, command)
    return data
