"""COCO mask/box AP of an ``EquiGeneralizedRCNN`` clean / attacked / defended, in one run.

Each scenario is one pass of Detectron2's ``inference_on_dataset`` with a fresh
``COCOEvaluator`` (pycocotools' official implementation). Attacks need ground truth at
test time, so the loader keeps the annotations (Detectron2's test mapper drops them).

Benchmarks evaluate cells (one attack × one defense) with :func:`evaluate_cell`, which keeps
one record per image (its predictions, its own mask AP and its task loss), written as each
image finishes so a killed run resumes; :func:`worst_case` pools each image's worst attacked
prediction over several cells and scores the pool with the same ``COCOEvaluator``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..cells import Cell, run_cell, runs_of
from ..core.checkpoints import check_pickled_data
from ..core.checkpoints import load_weights as load_checkpoint
from ..core.metrics import greedy_worst_case
from ..core.seeding import file_seed
from ..core.validation import SettingsError
from ..data.corruptions import check_corruptions, corrupt
from ..files import atomic_write_text
from ..pipeline import SCORE_KEY, EquiPipeline, EquiRun, running, scenario_of, scenario_table
from ..progress import image_bar
from ..reporting import atomic_write_json, fingerprint, record_path
from .config import equi_settings
from .modeling import EquiGeneralizedRCNN

#: The settings keys a scenario's error names when it needs a defense or attack the config does not set.
SCENARIO_KEYS = {"defense": "EQUI.DEFENSE", "attack": "EQUI.ATTACK"}


class _PredictedImagesCOCOEvaluator(COCOEvaluator):
    """COCO AP over the images actually predicted (a fixed subset of the split in tests and demos).

    When the model detects nothing on any image (e.g. under a strong attack), Detectron2 skips
    pycocotools and reports NaN; here pycocotools scores the empty result: AP 0 wherever there
    is ground truth (NaN only where there is none), as for any other weak prediction.
    """

    def evaluate(self, img_ids=None):
        ids = [p["image_id"] for p in self._predictions]
        if self._distributed:  # every process's images (the parent gathers the predictions themselves)
            ids = [i for rank_ids in comm.all_gather(ids) for i in rank_ids]
        self._eval_img_ids = ids
        return super().evaluate(img_ids=ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is None and self._eval_img_ids:  # Detectron2's "no predictions" case
            coco_dt = COCO()
            coco_dt.dataset = dict(images=self._coco_api.dataset["images"], annotations=[],
                                   categories=self._coco_api.dataset["categories"])
            coco_dt.createIndex()
            coco_eval = COCOeval(self._coco_api, coco_dt, iou_type)
            coco_eval.params.imgIds = self._eval_img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return super()._derive_coco_results(coco_eval, iou_type, class_names)


class EquiScoreEvaluator(DatasetEvaluator):
    """Mean of the scores a model with ``record_scores`` puts on its outputs (``equi_score``), over every
    process's images: ``{'equi': {'score': mean, 'images': n}}`` (no ``score`` when no image has one), on the
    main process."""

    def reset(self) -> None:
        self._scores: list[float] = []

    def process(self, inputs, outputs) -> None:
        self._scores.extend(float(o[SCORE_KEY]) for o in outputs if o.get(SCORE_KEY) is not None)

    def evaluate(self) -> dict:
        gathered = comm.gather(self._scores, dst=0)
        if not comm.is_main_process():  # as Detectron2's evaluators: results on the main process only
            return {}
        scores = [s for rank_scores in gathered for s in rank_scores]
        summary = {"images": len(scores)}
        if scores:
            summary["score"] = sum(scores) / len(scores)
        return {"equi": summary}


class ProgressEvaluator(DatasetEvaluator):
    """Ticks a progress bar (``equi_ext.progress``) per image Detectron2's inference loop hands the evaluators."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self._bar = total, label, None

    def reset(self) -> None:
        if self._bar is not None:  # a run that raised left its bar open
            self._bar.close()
        self._bar = image_bar(self.total, self.label, main_process=comm.is_main_process())

    def process(self, inputs, outputs) -> None:
        self._bar.update(len(inputs) * comm.get_world_size())

    def evaluate(self):
        self._bar.close()
        return None


def coco_ap(coco_gt: COCO, metadata, predictions: Sequence[dict], img_ids: Sequence[int], task: str) -> float:
    """AP (%) of ``predictions`` (``COCOEvaluator.process`` dicts) on ``img_ids``, silently, with
    Detectron2's conventions (dataset category ids; mask area, not box area, for ``segm``).
    Nothing predicted scores 0 where there is ground truth; NaN where there is none."""
    reverse = {v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    results = []
    for prediction in predictions:
        for det in prediction["instances"]:
            det = dict(det, category_id=reverse.get(det["category_id"], det["category_id"]))
            if task == "segm":
                det.pop("bbox", None)
            results.append(det)
    if not results:
        return 0.0 if coco_gt.getAnnIds(imgIds=list(img_ids), iscrowd=False) else float("nan")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), task)
        coco_eval.params.imgIds = list(img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    ap = float(coco_eval.stats[0])
    return ap * 100 if ap >= 0 else float("nan")


class PerImageCOCOEvaluator(_PredictedImagesCOCOEvaluator):
    """``COCOEvaluator`` that also keeps one record per image, for per-image worst cases.

    A record holds the image's ``prediction`` (as ``COCOEvaluator`` keeps it), its own mask AP
    and box AP (``mask_ap``, ``box_ap``: pycocotools on that image alone) and ``loss`` (the
    model output's ``task_loss``, NaN without it). The dataset AP stays ``COCOEvaluator``'s.

    Args:
        record_dir: if set, write each processed image's record to ``record_dir/<file name>.json``
            (temp file + rename), so a killed run keeps every finished image.
    """

    def __init__(self, dataset_name: str, *, record_dir: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(dataset_name, **kwargs)
        self.record_dir = record_dir
        self.per_image: list[dict] = []

    def reset(self) -> None:
        super().reset()
        self.per_image = []

    def process(self, inputs, outputs) -> None:
        start = len(self._predictions)
        super().process(inputs, outputs)
        for inp, out, prediction in zip(inputs, outputs, self._predictions[start:]):
            ids = [prediction["image_id"]]
            record = dict(img=inp.get("file_name", str(prediction["image_id"])), image_id=prediction["image_id"],
                          mask_ap=coco_ap(self._coco_api, self._metadata, [prediction], ids, "segm")
                          if "segm" in (self._tasks or ()) else float("nan"),
                          box_ap=coco_ap(self._coco_api, self._metadata, [prediction], ids, "bbox"),
                          loss=float(out.get("task_loss", float("nan"))), score=out.get(SCORE_KEY),
                          prediction=prediction)
            self.per_image.append(record)
            if self.record_dir is not None:
                atomic_write_json(record_path(self.record_dir, record["img"]), record)

    def pooled_ap(self, records: Sequence[dict], task: str) -> float:
        """AP (%) of the predictions of ``records`` pooled over their images (silent; what
        ``evaluate_records`` reports for ``task``, without its logging)."""
        return coco_ap(self._coco_api, self._metadata, [r["prediction"] for r in records],
                       [r["image_id"] for r in records], task)

    def evaluate_records(self, records: Sequence[dict]) -> dict:
        """``COCOEvaluator`` results over the predictions of ``records`` (e.g. a worst-case pool)."""
        self.reset()
        self._predictions = copy.deepcopy([r["prediction"] for r in records])  # COCOEvaluator remaps ids in place
        return self.evaluate()


def check_dataset(name: str) -> None:
    """A ``SettingsError`` before building a model if ``name`` is not registered or its files do not exist
    (Detectron2 would fail later, deep inside its loader)."""
    if name not in DatasetCatalog.list():
        raise SettingsError(f"DATASETS.TEST names {name!r}, which is not a registered dataset; register it first "
                       "(EQUI.SYNTHETIC_ROOT registers the synthetic shapes)")
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root"):
        path = meta.get(key, None)
        if path and not os.path.exists(path):
            raise SettingsError(f"dataset {name!r}: {key} {path!r} does not exist (Detectron2's builtin "
                                    "datasets live under $DETECTRON2_DATASETS, default ./datasets)")


class _LoadedImageCorruption(T.Augmentation):
    """One common corruption of the image as loaded (in the loader's channel order), seeded by ``seed``, which
    :class:`CorruptingDatasetMapper` sets from each image's file name before mapping it."""

    def __init__(self, corruption: str, severity: int, image_format: str) -> None:
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise SettingsError(f"corruptions need RGB or BGR images; INPUT.FORMAT is {image_format!r}")
        self.corruption, self.severity, self.image_format, self.seed = corruption, severity, image_format, 0

    def get_transform(self, image):
        return T.ColorTransform(functools.partial(corrupt, name=self.corruption, severity=self.severity,
                                                  seed=self.seed, bgr=self.image_format == "BGR"))


class CorruptingDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` with one of the 15 common corruptions applied to each image as it is
    loaded, before the test resize and the model's normalisation (where MMDetection's corruption benchmark
    applies them); each image's corruption is seeded by its file name, not its folder or loader position."""

    def __init__(self, *, corruption: str, severity: int, **kwargs) -> None:
        check_corruptions([corruption], [severity])
        super().__init__(**kwargs)
        self.corruption = _LoadedImageCorruption(corruption, severity, self.image_format)
        self.augmentations = T.AugmentationList([self.corruption, *self.augmentations.augs])

    def __call__(self, dataset_dict: dict) -> dict:
        self.corruption.seed = file_seed(dataset_dict["file_name"])
        return super().__call__(dataset_dict)


def build_annotated_test_loader(cfg, dataset: str | list[dict], num_images: int | None = None,
                                corruption: dict | None = None):
    """Test-time resizing, annotations kept (transformed like the image) for the attacks' losses.

    ``dataset`` is a registered name or a list of its records (e.g. the images still to run); ``corruption``,
    e.g. ``dict(corruption='fog', severity=3)``, corrupts each image as it is loaded
    (:class:`CorruptingDatasetMapper`)."""
    settings = dict(
        is_train=True,  # keeps and transforms annotations; augmentations are the test ones
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
    )
    mapper = CorruptingDatasetMapper(**corruption, **settings) if corruption else DatasetMapper(**settings)
    records = DatasetCatalog.get(dataset) if isinstance(dataset, str) else list(dataset)
    if num_images is not None:
        records = records[:num_images]
    return build_detection_test_loader(records, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)


def local_weights(weights: str | None) -> str | None:
    """``weights`` as a local file: a URL (``detectron2://…``, ``https://…``) is fetched into Detectron2's
    download cache, as Detectron2's own checkpointer would; a local path must exist.

    Raises:
        FileNotFoundError: no such local file.
        SettingsError: the URL could not be fetched (e.g. no internet: download it elsewhere and pass the local
            path).
    """
    if not weights:
        return None
    weights = str(weights)
    if "://" in weights:
        from detectron2.utils.file_io import PathManager

        try:
            return PathManager.get_local_path(weights)
        except Exception as err:  # iopath raises whatever its HTTP handler meets
            raise SettingsError(f"weights {weights!r} could not be fetched ({type(err).__name__}: {err}); "
                                f"download the file and pass its local path instead") from None
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    return weights


def load_weights(model: torch.nn.Module, weights: str | None) -> None:
    """Load ``weights`` strictly (``equi_ext.core.checkpoints.load_weights``): Detectron2 checkpoints
    (``{"model": state_dict, ...}``) and bare state dicts, fp32 or fp16; Detectron2 model-zoo ``.pkl``
    files go through ``DetectionCheckpointer`` (name conversion) instead, once ``check_pickled_data`` has found
    nothing in them but arrays and containers (it unpickles without restriction). A URL is fetched first
    (:func:`local_weights`)."""
    weights = local_weights(weights)
    if weights and weights.endswith(".pkl"):
        from detectron2.checkpoint import DetectionCheckpointer

        check_pickled_data(weights)
        DetectionCheckpointer(model).load(weights)
        return
    load_checkpoint(model, weights, framework="Detectron2")


def build_equi_model(cfg, weights: str | None) -> EquiGeneralizedRCNN:
    """``cfg``'s model in eval mode, with ``weights`` loaded strictly (:func:`load_weights`; None: its
    initialisation); a config whose meta-architecture is not ``EquiGeneralizedRCNN`` is a ``SettingsError``."""
    model = build_model(cfg)
    if not isinstance(model, EquiGeneralizedRCNN):
        raise SettingsError(f"MODEL.META_ARCHITECTURE must be EquiGeneralizedRCNN for equi-ext evaluation; "
                            f"got {cfg.MODEL.META_ARCHITECTURE!r}")
    load_weights(model, weights)
    return model.eval()


def ap_summary(results: dict) -> dict[str, float]:
    """Mask AP, mask AP50 and box AP (%) of ``COCOEvaluator`` results (NaN where absent, e.g.
    off the main process)."""
    return dict(segm_AP=float(results.get("segm", {}).get("AP", math.nan)),
                segm_AP50=float(results.get("segm", {}).get("AP50", math.nan)),
                bbox_AP=float(results.get("bbox", {}).get("AP", math.nan)))


def evaluate_scenarios(cfg, weights: str | None, *, scenarios: list[str] | None = None,
                       num_images: int | None = None, output_dir: str | None = None,
                       model: EquiGeneralizedRCNN | None = None) -> list[dict]:
    """Evaluate ``cfg.DATASETS.TEST[0]`` under each scenario; write ``equi_results.{md,json}``.

    Args:
        cfg: a config from :func:`equi_ext.detectron2.load_config` (``EquiGeneralizedRCNN``).
        weights: checkpoint path (None = the model's random initialisation).
        scenarios: subset of ``SCENARIOS``; default: every one the config's defense/attack allow.
        num_images: evaluate the first N images of the split only.
        output_dir: where results go (default ``cfg.OUTPUT_DIR``).
        model: an already built and loaded model (benchmarks reuse one across settings).

    Returns:
        One dict per scenario: segm/bbox AP (and AP50), mean equivariance score, images, seconds; complete
        on the main process (Detectron2's evaluators return their results there only).
    """
    if not cfg.DATASETS.TEST:
        raise SettingsError("DATASETS.TEST is empty: name the dataset to evaluate")
    dataset = cfg.DATASETS.TEST[0]
    check_dataset(dataset)
    try:  # a missing file or an unreachable URL fails before the model is built
        local = local_weights(weights)
    except FileNotFoundError:
        raise SettingsError(f"weights {weights!r} do not exist") from None
    if model is None:
        model = build_equi_model(cfg, local)
    model.eval()
    scenarios = model.pipeline.scenarios(scenarios, SCENARIO_KEYS)
    out_dir = Path(output_dir or cfg.OUTPUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for scenario in scenarios:
        loader = build_annotated_test_loader(cfg, dataset, num_images)
        evaluator = DatasetEvaluators([
            _PredictedImagesCOCOEvaluator(dataset, tasks=_tasks(cfg), distributed=True,
                                          output_dir=str(out_dir / scenario), use_fast_impl=False),
            EquiScoreEvaluator(), ProgressEvaluator(len(loader.dataset), scenario)])
        start = time.perf_counter()
        with running(model, EquiRun(scenario, record_scores=True)):
            results = inference_on_dataset(model, loader, evaluator)
        rows.append(dict(
            scenario=scenario, **ap_summary(results), equivariance_score=results.get("equi", {}).get("score"),
            images=results.get("equi", {}).get("images", 0), seconds=time.perf_counter() - start,
        ))
    if not comm.is_main_process():
        return rows
    table = scenario_table(rows, {"mask AP": "segm_AP", "mask AP50": "segm_AP50", "box AP": "bbox_AP"})
    atomic_write_text(out_dir / "equi_results.md", table + "\n")
    atomic_write_text(out_dir / "equi_results.json", json.dumps(
        dict(weights=weights, equi=json.loads(json.dumps(cfg.EQUI, default=str)), results=rows), indent=2))
    print(table)
    return rows


def evaluate_config(config: str, weights: str | None = None, *, opts: Sequence[str] = (),
                    scenarios: list[str] | None = None, num_images: int | None = None, output_dir: str | None = None,
                    num_processes: int = 1, num_machines: int = 1, machine_rank: int = 0,
                    dist_url: str = "auto") -> list[dict]:
    """``tools/test.py CONFIG.yaml``: load ``config`` with ``opts`` (KEY VALUE overrides), register its data and
    :func:`evaluate_scenarios` it, in ``num_processes`` processes per machine (each evaluates its shard of
    Detectron2's ``InferenceSampler``; rank 0 writes the gathered results). ``weights`` default to
    ``MODEL.WEIGHTS``. Returns the rows (an empty list from a multi-process launch).

    Raises:
        SettingsError: a missing config, unknown keys, bad ``EQUI`` settings or scenarios that need a defense or
            attack the config does not set, before any process starts.
    """
    from .config import load_config
    from .launch import launch

    try:
        cfg = load_config(config, list(opts))  # bad settings and scenarios fail here, before any process starts
        settings = equi_settings(cfg)
        EquiPipeline(settings["defense"], settings["attack"], needs_logits=False).scenarios(scenarios, SCENARIO_KEYS)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise SettingsError.of(err) from err
    args = (config, weights, list(opts), scenarios, num_images, output_dir)
    if num_processes * num_machines == 1:
        return _evaluate_process(*args)
    launch(_evaluate_process, num_processes, num_machines=num_machines, machine_rank=machine_rank,
           dist_url=dist_url, args=args)
    return []


def _evaluate_process(config: str, weights: str | None, opts: list[str], scenarios: list[str] | None,
                      num_images: int | None, output_dir: str | None) -> list[dict]:
    """One process's part of :func:`evaluate_config`."""
    from detectron2.utils.logger import setup_logger

    from ..core.distributed import close_process_group
    from .config import load_config
    from .datasets import register_from_cfg

    cfg = load_config(config, opts)
    if output_dir:
        cfg.OUTPUT_DIR = output_dir
    setup_logger(name="equi_ext")
    setup_logger(name="detectron2")
    try:
        register_from_cfg(cfg)
    except (FileNotFoundError, ValueError) as err:
        raise SettingsError.of(err) from err
    rows = evaluate_scenarios(cfg, weights or cfg.MODEL.WEIGHTS or None, scenarios=scenarios, num_images=num_images)
    close_process_group()  # as a worker of a multi-process launch
    return rows


def _tasks(cfg) -> tuple[str, ...]:
    return ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)


def config_fingerprint(cfg) -> str:
    """``fingerprint`` of a config less ``OUTPUT_DIR``: where a run writes does not change its numbers, so a work
    dir's records can be moved, or cells of several work dirs merged, and still be resumed."""
    settings = cfg.clone()
    settings.defrost()
    settings.OUTPUT_DIR = ""
    return fingerprint(settings.dump())


def evaluate_cell(cfg, model: EquiGeneralizedRCNN, attack: Cell, defense: Cell,
                  record_dir: str | os.PathLike, *, num_images: int | None = None, resume: bool = False,
                  corruption: dict | None = None, record_scores: bool = False) -> dict:
    """One (label, attack config) × (label, defense config) cell on the first ``num_images`` of
    ``cfg.DATASETS.TEST[0]``, one process; configs as the registries take them (None = none);
    ``corruption`` as :func:`build_annotated_test_loader` takes it; with ``record_scores`` each image's record
    holds the ``score`` the pipeline records (the defense's score of its output where it defended the image,
    else of the input: extra forwards).

    Image records are written to ``record_dir`` as each image finishes; with ``resume`` images
    that already have one are not run again. The cell's AP is always ``COCOEvaluator``'s over
    the records of all its images, so a resumed cell reports what an uninterrupted one does
    (seeds are per image: ``equi_ext.core.seeding.image_seed``); the model is not changed. Returns
    ``ap_summary`` keys, ``per_image``, ``images``, ``run_images`` and ``seconds``.
    """
    attack, defense = Cell(*attack), Cell(*defense)
    dataset = cfg.DATASETS.TEST[0]
    check_dataset(dataset)
    records = DatasetCatalog.get(dataset)[:num_images]
    images = [r["file_name"] for r in records]

    def run_images(todo: list[int]) -> float:
        pipeline = EquiPipeline(defense.cfg, attack.cfg, needs_logits=False)
        run = EquiRun(scenario_of(bool(attack.cfg), pipeline.defends), pipeline, record_scores=record_scores,
                      record_losses=True)
        evaluator = PerImageCOCOEvaluator(dataset, tasks=_tasks(cfg), record_dir=record_dir, distributed=False,
                                          use_fast_impl=False)
        start = time.perf_counter()
        loader = build_annotated_test_loader(cfg, [records[i] for i in todo], corruption=corruption)
        progress = ProgressEvaluator(len(todo), f"{attack.label} / {defense.label}")
        with running(model, run), contextlib.redirect_stdout(io.StringIO()):  # pycocotools' summaries of the part
            inference_on_dataset(model, loader, DatasetEvaluators([evaluator, progress]))
        return time.perf_counter() - start

    def score(per_image: list[dict]) -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            return ap_summary(PerImageCOCOEvaluator(dataset, tasks=_tasks(cfg), distributed=False,
                                                    use_fast_impl=False).evaluate_records(per_image))

    stamp = dict(corruption=corruption, record_scores=record_scores, images=fingerprint(images),
                 model=fingerprint(model), config=config_fingerprint(cfg))
    return run_cell(attack, defense, images, record_dir, stamp=stamp, resume=resume, run_images=run_images,
                    score=score)


def worst_case(cfg, rows: list[dict], max_passes: int = 5) -> dict:
    """AP over each image's worst attacked prediction among ``evaluate_cell`` rows, and which
    row each image took.

    COCO AP ranks detections across images, so per-image AP alone does not say which choice
    hurts the dataset most: ``equi_ext.core.metrics.greedy_worst_case`` searches the picks with the
    pooled AP as its metric (each image's own lowest mask AP, box AP without masks, ties: highest task
    loss, as the first candidate). The result is never above the strongest single row. The returned AP
    is ``COCOEvaluator``'s on the final pool. Each pass costs images × rows pooled COCO evaluations:
    sized for benchmark subsets (tens of images), not for a full COCO val split.
    """
    runs = runs_of(rows)
    task = "segm" if cfg.MODEL.MASK_ON else "bbox"
    evaluator = PerImageCOCOEvaluator(cfg.DATASETS.TEST[0], tasks=_tasks(cfg), distributed=False, use_fast_impl=False)
    picks, _ = greedy_worst_case(runs, lambda records: evaluator.pooled_ap(records, task),
                                 quality="mask_ap" if cfg.MODEL.MASK_ON else "box_ap", max_rounds=max_passes)
    chosen = [runs[name][i] for i, name in enumerate(picks)]
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluator.evaluate_records(chosen)
    return dict(ap_summary(results), picks=picks)
