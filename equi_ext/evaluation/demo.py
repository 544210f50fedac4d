"""The embedded default: synthetic data, the demo models and their checkpoints, and the README's first command.

Everything is generated or committed in the repository; nothing is downloaded. ``run_demo`` is the first
command's job: a Table-2-style grid on the demo DeepLabV3 (rows clean / PGD / adaptive / BPDA, columns
vanilla / invariance / equivariance), each cell one run of MMSeg's test loop and ``IoUMetric``, plus the
equivariance score clean / attacked / restored (Table 5).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..assets import ASSETS, WORKSPACE
from ..core.validation import SettingsError
from ..reporting import Report, provenance_line

logger = logging.getLogger(__name__)

# Shipped files come from ASSETS (the checkout's folders, or the wheel's copies); what is generated or too
# large for the wheel (data, work dirs, the Mask R-CNN checkpoint and its SSL heads) lives in WORKSPACE.
CONFIG = ASSETS / "configs/demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py"
CHECKPOINT = ASSETS / "checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth"
DATA = WORKSPACE / "data/synthetic_shapes"
#: The tuning split: another seed (1) than the reported one (0), so settings are never chosen on reported images.
TUNE_DATA = WORKSPACE / "data/synthetic_shapes_tune"
D2_CONFIG = ASSETS / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml"
D2_CHECKPOINT = WORKSPACE / "checkpoints/mask_rcnn_R18_FPN_synthetic-128x128.pth"
SSL_HEADS = {
    "mmseg": {kind: ASSETS / f"checkpoints/ssl/deeplabv3_r18c16-d8_synthetic-128x128_{kind}.pth"
              for kind in ("rotation", "contrastive")},
    "detectron2": {kind: WORKSPACE / f"checkpoints/ssl/mask_rcnn_R18_FPN_synthetic-128x128_{kind}.pth"
                   for kind in ("rotation", "contrastive")},
}
EPS = 4.0
#: The equivariance defense as shipped (preset 'default'); invariance uses the same optimiser.
DEFENSE = dict(preset="default")
ATTACK_STEPS = 20
LAMBDA_E = 1.0  # adaptive attack weight; the sweep behind it: docs/benchmarks/demo.md
BPDA_STEPS = 10  # paper: 10 outer steps, each through the full defense


def ensure_data() -> Path:
    """The reported split (seed 0: 300 train / 100 val images at 128 px), generated once."""
    if not (DATA / "meta.json").is_file():
        from ..data.synthetic import generate_dataset

        logger.info("generating the synthetic benchmark (seed 0) into %s", DATA)
        # no meta.json: absent, or a generation that was interrupted; the generator replaces only its own files
        generate_dataset(DATA, seed=0, image_size=128, num_train=300, num_val=100, overwrite=True)
    return DATA


def ensure_tune_data() -> Path:
    """The tuning split: 100 images from seed 1, disjoint from the seed-0 split we report."""
    if not (TUNE_DATA / "meta.json").is_file():
        from ..data.synthetic import generate_dataset

        logger.info("generating the tuning split (seed 1) into %s", TUNE_DATA)
        generate_dataset(TUNE_DATA, seed=1, image_size=128, num_train=0, num_val=100, overwrite=True)
    return TUNE_DATA


def ensure_checkpoint(retrain: bool, work_dir: Path) -> Path:
    """The shipped demo checkpoint, or (``retrain``) one trained and exported by the shipped tools into
    ``WORKSPACE/checkpoints`` (in a checkout, the shipped one's place)."""
    if CHECKPOINT.is_file() and not retrain:
        return CHECKPOINT
    train_dir = work_dir / "train"
    retrained = WORKSPACE / "checkpoints" / CHECKPOINT.name
    logger.info("training the demo model with tools/train.py into %s (about 30 min on 2 cores)", train_dir)
    subprocess.run([sys.executable, str(ASSETS / "tools/train.py"), str(CONFIG), "--work-dir", str(train_dir)],
                   check=True, cwd=WORKSPACE)
    subprocess.run([sys.executable, str(ASSETS / "tools/export_weights.py"), str(train_dir / "iter_3000.pth"),
                    str(retrained)], check=True, cwd=WORKSPACE)
    return retrained


def build_demo_runner(data_root: Path, num_images: int, work_dir: Path, checkpoint: Path = CHECKPOINT,
                      test_evaluator: dict | None = None, batch_size: int = 1, config: Path = CONFIG):
    """An MMEngine runner of the demo ``config`` (or another model trained on the synthetic benchmark) on the
    first ``num_images`` val images, ``batch_size`` per batch, weights loaded (``test_evaluator`` replaces the
    config's, e.g. with ``PerImageIoUMetric``; corrupted images: ``equi_ext.mmseg.evaluation.corrupted_loading``)."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from ..core.checkpoints import load_weights

    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    cfg.test_dataloader.dataset.data_root = str(data_root)
    cfg.test_dataloader.dataset.indices = num_images
    cfg.test_dataloader.batch_size = batch_size
    cfg.default_hooks.pop("visualization")
    cfg.log_level = "WARNING"
    if test_evaluator is not None:
        cfg.test_evaluator = test_evaluator
    runner = Runner.from_cfg(cfg)
    load_weights(runner.model, checkpoint, framework="MMEngine")
    return runner


def render(data: dict) -> str:
    """The first command's table: mIoU per attack and defense, the BPDA caveat, the equivariance scores (a
    spread of several runs: :func:`render_spread`)."""
    from ..mmseg.evaluation import grid_table

    if "runs" in data:
        return render_spread(data)

    bpda = next(r["attack"] for r in data["rows"] if r["attack"].startswith("BPDA"))  # StopIteration: not a demo
    return (f"mIoU (%) on the first {data['num_images']} synthetic val images, ε = {data['eps']:g}/255, "
            f"defense preset '{data['defense']['preset']}'\n\n" + grid_table(data["rows"]) +
            f"\n\n{bpda} is not the worst case: the per-image worst case over every attack, through the defense "
            "and with convergence checks, is what `tools/standard_evaluation.py` reports "
            "(docs/benchmarks/standard_evaluation.md).\n"
            "\nEquivariance score (mean cosine, Table 5)\n\n| clean | attacked | restored |\n|---|---|---|\n"
            + "| " + " | ".join(f"{v:.3f}" for v in data["scores"].values()) + " |\n"
            + f"\nTotal evaluation time: {data['seconds']:.0f} s (batch size {data['batch_size']})\n")


REPORT = Report(render)


def run_label(provenance: dict, batch_size: int) -> str:
    """A run's column: where and how it ran (CPU, kernel set, threads, batch size)."""
    threads = provenance["torch_threads"]
    return (f"{provenance['cpu']}, {provenance['cpu_capability']}, {threads} thread{'s' if threads != 1 else ''}, "
            f"batch {batch_size}")


def demo_spread(results: Sequence[str | Path], work_dir: str | Path, command: str | None = None) -> dict:
    """Gather ``run_demo`` results of one grid measured on other machines, kernel sets, thread counts or batch
    sizes into ``work_dir/demo_spread.{md,json}``: each cell per run and its range (max − min), so the spread
    the README quotes is rendered from what was measured. The runs keep their own provenance.

    Raises:
        SettingsError: fewer than two results, a file that is not a ``run_demo`` result, or runs of different
            grids (images, ε, preset, cells).
    """
    if len(results) < 2:
        raise SettingsError(f"a spread needs at least two run_demo results; got {len(results)}")
    runs = []
    for path in results:
        try:
            data = json.loads(Path(path).read_text())
            runs.append(dict(label=run_label(data["provenance"], data["batch_size"]), provenance=data["provenance"],
                             num_images=data["num_images"], eps=data["eps"], defense=data["defense"],
                             cells={f"{r['attack']} / {r['defense']}": r["mIoU"] for r in data["rows"]},
                             scores=data["scores"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SettingsError(f"{path} is not a run_demo result ({type(err).__name__}: {err})") from None
    grid = [(r["num_images"], r["eps"], r["defense"], list(r["cells"]), list(r["scores"])) for r in runs]
    if any(g != grid[0] for g in grid):
        raise SettingsError("the results are not of one grid (images, ε, preset and cells must agree): "
                            + "; ".join(f"{path}: {g[0]} images, ε {g[1]:g}, {g[2]}, {len(g[3])} cells"
                                        for path, g in zip(results, grid)))
    result = dict(runs=runs)
    REPORT.write(work_dir, "demo_spread", result, command=command)
    return result


def render_spread(data: dict) -> str:
    """Each cell (mIoU, then the equivariance scores) per run, and its range over the runs."""
    runs = data["runs"]
    first = runs[0]
    lines = [f"mIoU (%) on the first {first['num_images']} synthetic val images, ε = {first['eps']:g}/255, defense "
             f"preset '{first['defense']['preset']}', per run (one column each), and the range (max − min)", "",
             "| cell | " + " | ".join(r["label"] for r in runs) + " | range |",
             "|---|" + "---|" * (len(runs) + 1)]
    for kind, fmt in (("cells", ".2f"), ("scores", ".3f")):
        for name in first[kind]:
            values = [r[kind][name] for r in runs]
            label = name if kind == "cells" else f"score {name}"
            lines.append(f"| {label} | " + " | ".join(format(v, fmt) for v in values)
                         + f" | {format(max(values) - min(values), fmt)} |")
    lines += ["", "Runs:"] + [f"- {r['label']}: {provenance_line(r['provenance'])}" for r in runs]
    return "\n".join(lines) + "\n"


def run_demo(num_images: int = 16, work_dir: str | Path = WORKSPACE / "work_dirs/demo", retrain: bool = False,
             full: bool = False, batch_size: int = 8, command: str | None = None) -> dict:
    """The README's first command: vanilla vs equivariance under clean, PGD and BPDA through exactly the
    equivariance column's defense (``full``: also invariance and the adaptive attack) on the first
    ``num_images`` reported val images, ``batch_size`` at a time (seeds are per image; another batch size
    changes only last bits, which moves defended cells as much as another CPU does); each cell printed as it
    finishes, all written to ``work_dir/demo_results.{md,json}`` and returned (rows, scores, seconds)."""
    if num_images < 1 or batch_size < 1:
        raise SettingsError(f"num_images and batch_size must be >= 1; got {num_images}, {batch_size}")
    work_dir = Path(work_dir)
    ensure_data()
    checkpoint = ensure_checkpoint(retrain, work_dir)

    from ..mmseg.evaluation import evaluate_grid

    runner = build_demo_runner(DATA, num_images, work_dir, checkpoint, batch_size=batch_size)

    defenses = {"vanilla": None, **({"invariance": dict(type="invariance", **DEFENSE)} if full else {}),
                "equivariance": dict(type="equi", **DEFENSE)}
    pgd, bpda = f"PGD-{ATTACK_STEPS}", f"BPDA-{BPDA_STEPS}"
    attacks = {
        "clean": None,
        pgd: dict(type="pgd", eps=EPS, steps=ATTACK_STEPS),
        **({f"adaptive (λ_e={LAMBDA_E:g})": dict(type="adaptive", eps=EPS, steps=ATTACK_STEPS, lambda_e=LAMBDA_E)}
           if full else {}),
        bpda: dict(type="bpda", eps=EPS, steps=BPDA_STEPS),
    }
    logger.info("%d cells (%s × %s) on the first %d val images, batch %d; each prints its mIoU when done",
                len(attacks) * len(defenses), ", ".join(attacks), ", ".join(defenses), num_images, batch_size)
    start = time.perf_counter()
    rows = evaluate_grid(runner, defenses, attacks, on_row=lambda r: print(
        f"  {r['attack']:<18} {r['defense']:<13} mIoU {r['mIoU']:6.2f}  ({r['seconds']:.0f} s)", flush=True))
    elapsed = time.perf_counter() - start
    # Vanilla has no defense to differentiate around: its BPDA cell is PGD with BPDA_STEPS steps.
    cell = {(r["attack"], r["defense"]): r for r in rows}
    scores = {"clean": cell[("clean", "vanilla")]["score"], "attacked (PGD)": cell[(pgd, "vanilla")]["score"],
              "restored (PGD + equivariance)": cell[(pgd, "equivariance")]["score"]}
    result = dict(num_images=num_images, eps=EPS, defense=DEFENSE, batch_size=batch_size, rows=rows, scores=scores,
                  seconds=elapsed)
    REPORT.write(work_dir, "demo_results", result, command=command)
    return result
