"""The demo models behind the benchmark and sanity-check tools, one interface for both frameworks.

``tools/benchmark_robustness.py`` and ``tools/sanity_checks.py`` describe attacks and defenses as
registry configs and ask a backend to evaluate one (attack, defense) cell or a per-image worst case:

- :class:`MMSegBackend`: the demo DeepLabV3 through MMSeg's test loop, mIoU from
  ``PerImageIoUMetric`` (IoUMetric's aggregation);
- :class:`Detectron2Backend`: the demo Mask R-CNN through ``inference_on_dataset``, COCO mask
  AP from ``COCOEvaluator``; its per-image quality is the image's own mask AP.

For ``compare_presets`` a backend also times its stock and defended prediction (``timing_batches``, ``timed``)
and makes its model read the feature levels a setting names while that setting's cells run (``reading``).
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from pathlib import Path
from typing import Any

from ..assets import ASSETS
from ..cells import Cell
from ..core.validation import SettingsError
from ..reporting import slug
from .demo import CHECKPOINT, CONFIG, D2_CHECKPOINT, D2_CONFIG, DATA, SSL_HEADS, build_demo_runner

logger = logging.getLogger(__name__)


def named_weights(model_name: str, checkpoint: Path | None, default: Path) -> str:
    """A page's model name: the demo model's own, or its architecture with the weights a run named."""
    if checkpoint is None or Path(checkpoint).resolve() == Path(default).resolve():
        return model_name
    return f"{model_name.removeprefix('demo ')} with the weights {checkpoint}"


class MMSegBackend:
    """The demo DeepLabV3 (or another MMSeg ``config`` trained on the synthetic benchmark) on the first
    ``num_images`` val images of ``data_root``; defense budgets from the named ``preset``."""

    framework, metric, key = "mmseg", "mIoU", "mIoU"
    model_name = "demo DeepLabV3"
    takes_preset = True
    #: how a model of this framework is trained (the hint for missing weights)
    train_command = "tools/train.py"
    #: whether a defense setting may name the feature levels the model reads (``fpn_levels``)
    reads_levels = False

    def __init__(self, data_root: Path, num_images: int, work_dir: Path, checkpoint: Path | None = None,
                 preset: str = "fast", config: Path | None = None) -> None:
        self.preset, self.data_root = preset, data_root
        self.checkpoint, self.config = checkpoint or CHECKPOINT, config or CONFIG
        self.model_name = named_weights(self.model_name, checkpoint, CHECKPOINT)
        self.runner = build_demo_runner(data_root, num_images, work_dir / "runs", self.checkpoint,
                                        test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]),
                                        config=self.config)

    @property
    def settings(self) -> str:
        return f"defense budgets from preset `{self.preset}`"

    def defense(self, name: str) -> dict | None:
        """Registry config of a defense column (``vanilla`` = None): the preset for a defense that takes one, else
        the preset's values of the settings it takes (``random``: its ε_v), plus the trained head of an SSL
        baseline."""
        from ..defenses import preset_settings

        if name == "vanilla":
            return None
        cfg = dict(type="equi" if name == "equivariance" else name)
        cfg.update(preset_settings(cfg["type"], self.preset))
        if name in SSL_HEADS[self.framework]:
            cfg["head"] = str(SSL_HEADS[self.framework][name])
        return cfg

    @staticmethod
    def supports(attack: dict | None) -> bool:
        return True

    def reading(self, levels: list[str] | None) -> contextlib.AbstractContextManager:
        """A segmenter reads its configured feature layer whatever the setting (which names no levels)."""
        return contextlib.nullcontext()

    def timing_batches(self, count: int, size: int, work_dir: Path) -> Any:
        """The model and its first ``count`` images preprocessed in batches of ``size`` (loaded once, then timed)."""
        from .speed import preprocessed_batches

        return preprocessed_batches(self.data_root, count, size, work_dir, self.checkpoint, self.config)

    def timed(self, timing: Any, defense: dict, levels: list[str] | None, repeats: int) -> tuple[dict, dict]:
        """The stock and the defended prediction's seconds per image (``speed.timed`` statistics), alternating."""
        from .speed import alternating_predictions

        model, batches = timing
        (stock, _), (defended, _) = alternating_predictions(model, batches, defense, [dict(scenario="clean"), {}],
                                                            repeats)
        return stock, defended

    #: What the sanity-check tool's unbounded check reads off a cell: (name, row -> value).
    unbounded_measure = ("% pixel accuracy", lambda row: pixel_accuracy(row["per_image"]))

    def cell(self, attack: Cell, defense: Cell, record_dir: Path,
             resume: bool = False, corruption: dict | None = None) -> dict:
        """One cell's row (metric, per-image records); ``corruption`` corrupts the images as loaded. Scores
        are recorded for detect-then-defend only (where it leaves an image, the score of its input), so
        no other cell pays their forwards."""
        from ..mmseg.evaluation import evaluate_cell

        return evaluate_cell(self.runner, attack, defense, record_dir, resume=resume, corruption=corruption,
                             record_scores=records_scores(Cell(*defense).cfg))

    def worst_case(self, rows: list[dict]) -> dict:
        from ..mmseg.evaluation import worst_case

        return worst_case(self.runner, rows)


class Detectron2Backend:
    """The demo Mask R-CNN (or another Detectron2 ``config`` trained on the synthetic benchmark) on the
    first ``num_images`` val images of ``data_root``; every defense column takes the config's ``EQUI``
    settings (the demo's tuned ``D2_CONFIG``: flip + 3 resizes, T 4, ε_v 6, η 3, FPN p2–p4). Attacks that need dense logits (CW, Houdini,
    SegPGD, CosPGD) do not apply to an instance model."""

    framework, metric, key = "detectron2", "mask AP", "segm_AP"
    model_name = "demo Mask R-CNN"
    takes_preset = False
    train_command = "tools/train_net.py --config-file"
    reads_levels = True

    def __init__(self, data_root: Path, num_images: int, work_dir: Path, checkpoint: Path | None = None,
                 config: Path | None = None) -> None:
        from ..detectron2 import load_config, register_synthetic_shapes
        from ..detectron2.evaluation import build_equi_model

        # Detectron2's catalog is process-global: one name per data root.
        prefix = "synthetic_shapes" if data_root == DATA else f"equi_benchmark_{zlib.crc32(str(data_root).encode()):08x}"
        names = register_synthetic_shapes(data_root, prefix=prefix)
        val = [n for n in names if n.endswith("_val")]
        if not val:
            raise SettingsError(f"{data_root} has no val split (annotations/instances_val.json)")
        opts = ["EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{val[0]}',)", "OUTPUT_DIR", str(work_dir / "runs"),
                "MODEL.META_ARCHITECTURE", "EquiGeneralizedRCNN"]  # a training config names the stock one
        self.config = Path(config or D2_CONFIG)
        self.cfg = load_config(self.config, opts)
        self.model = build_equi_model(self.cfg, str(checkpoint or D2_CHECKPOINT))
        self.model_name = named_weights(self.model_name, checkpoint, D2_CHECKPOINT)
        self.num_images = num_images

    @property
    def settings(self) -> str:
        e = self.cfg.EQUI
        name = (f"equi_ext::{self.config.relative_to(ASSETS / 'configs')}"
                if self.config.is_relative_to(ASSETS / "configs") else str(self.config))
        if e.TRANSFORMS is None:  # a training config: the defense columns get the preset's values
            return f"the `{e.PRESET}` preset (`{name}` sets no defense values)"
        return (f"defense settings of `{name}` (transforms {', '.join(e.TRANSFORMS)}; "
                f"T {e.DEFENSE_STEPS}, ε_v {e.EPS_V:g}, η {e.STEP_SIZE:g}; FPN {', '.join(e.FPN_LEVELS)})")

    def defense(self, name: str) -> dict | None:
        """The config's defense settings for ``name``, each where that defense takes it (a baseline
        such as ``random`` keeps ε_v and the seed, not the equivariance transforms)."""
        from ..detectron2.config import equi_settings, role_keys, setting_keys

        if name == "vanilla":
            return None
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.EQUI.DEFENSE = "equi" if name == "equivariance" else name
        head = SSL_HEADS[self.framework].get(name)
        cfg.EQUI.SSL_HEAD = str(head) if head else None
        takes = setting_keys("defense", cfg.EQUI.DEFENSE)
        for key in role_keys("defense"):
            if key not in takes and key != "PRESET":  # the preset gives a defense that takes none its values
                cfg.EQUI[key] = None
        return equi_settings(cfg)["defense"]

    unbounded_measure = ("mask AP", lambda row: row["segm_AP"])

    @staticmethod
    def supports(attack: dict | None) -> bool:
        """False for attacks that need dense logits (the pipeline refuses them for a Mask R-CNN)."""
        from ..attacks import ATTACKS

        return attack is None or "logits" not in ATTACKS.get(attack["type"]).needs(attack)

    def cell(self, attack: Cell, defense: Cell, record_dir: Path,
             resume: bool = False, corruption: dict | None = None) -> dict:
        """As :meth:`MMSegBackend.cell`."""
        from ..detectron2.evaluation import evaluate_cell

        return evaluate_cell(self.cfg, self.model, attack, defense, record_dir, num_images=self.num_images,
                             resume=resume, corruption=corruption,
                             record_scores=records_scores(Cell(*defense).cfg))

    def worst_case(self, rows: list[dict]) -> dict:
        from ..detectron2.evaluation import worst_case

        return worst_case(self.cfg, rows)

    def levels_read(self, levels: list[str] | None) -> list[str]:
        """A setting's FPN levels; every backbone output for a setting that names none."""
        return list(self.model.backbone.output_shape()) if levels is None else list(levels)

    def reading(self, levels: list[str] | None) -> contextlib.AbstractContextManager:
        from ..pipeline import EquiRun, running

        return running(self.model, EquiRun(views=dict(levels=self.levels_read(levels))))

    def timing_batches(self, count: int, size: int, work_dir: Path) -> Any:
        from .speed import detectron2_batches

        return detectron2_batches(self.cfg, count, size)

    def timed(self, timing: Any, defense: dict, levels: list[str] | None, repeats: int) -> tuple[dict, dict]:
        from .speed import alternating_detectron2_predictions

        return alternating_detectron2_predictions(self.model, timing, defense, self.levels_read(levels), repeats)


class DefenseCells:
    """The cells an evaluation runs on a backend against its equivariance defense, each once: keyed by (row label,
    column), the column ``vanilla`` (no defense) or ``defended``, records under ``out/cells/<column>/<label>``."""

    def __init__(self, backend, out: Path, resume: bool) -> None:
        self.backend, self.out, self.resume = backend, out, resume
        self.defense = backend.defense("equivariance")
        self.runs: dict[tuple[str, str], dict] = {}

    def run(self, label: str, column: str, attack: dict | None) -> dict:
        """The row of ``label`` (its ``attack``) in ``column``, run the first time it is asked for."""
        if (label, column) not in self.runs:
            backend = self.backend
            cell = backend.cell(Cell(label, attack), Cell(column, self.defense if column == "defended" else None),
                                self.out / "cells" / column / slug(label), resume=self.resume)
            print(f"  {column:<9} {label:<34} {backend.metric} {cell[backend.key]:6.2f}  ({cell['run_images']} "
                  f"images run, {cell['seconds']:.0f} s)", flush=True)
            self.runs[(label, column)] = cell
        return self.runs[(label, column)]


def pixel_accuracy(records: list[dict]) -> float:
    """Percent of labelled pixels predicted right over PerImageIoUMetric records (IoUMetric's aAcc)."""
    right = sum(float(sum(r["areas"][0])) for r in records)
    labelled = sum(float(sum(r["areas"][3])) for r in records)
    return 100.0 * right / max(labelled, 1.0)


def records_scores(defense: dict | None) -> bool:
    return defense is not None and defense["type"] == "detect_then_defend"


#: The benchmarks' frameworks by name (``framework=`` of each benchmark, ``--framework`` of its tool).
BACKENDS = {backend.framework: backend for backend in (MMSegBackend, Detectron2Backend)}


def check_framework(framework: str) -> None:
    """Raise SettingsError naming the valid frameworks unless ``framework`` is one of ``BACKENDS``."""
    if framework not in BACKENDS:
        raise SettingsError(f"unknown framework {framework!r}; valid: {', '.join(BACKENDS)}")


def build_backend(framework: str, data_root: Path, num_images: int, work_dir: Path,
                  checkpoint: Path | None = None, preset: str = "fast"):
    """The demo model of ``framework`` (a key of ``BACKENDS``); ``preset`` sets the defense budgets of backends
    that take one (MMSeg: the Mask R-CNN keeps its config's tuned settings)."""
    check_framework(framework)
    backend = BACKENDS[framework]
    logger.info("building the %s on the first %d images of %s", backend.model_name, num_images, data_root)
    presets = {"preset": preset} if backend.takes_preset else {}
    return backend(data_root, num_images, work_dir, checkpoint, **presets)
