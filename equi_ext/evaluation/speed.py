"""Speed and memory of defended inference against a vanilla forward, as ratios, in one process.

A defense that runs an optimisation at test time costs many forwards; this measures how many, per
model and batch size, so the cost is stated next to the robustness it buys. For each model — the MMSeg
demo DeepLabV3 and the Detectron2 demo Mask R-CNN (committed weights, synthetic val images) and the
real-size models (MMSeg's DeepLabV3 R50-D8 at 512×512, Detectron2's Mask R-CNN R50-FPN at 800×1333;
random weights: only the time matters) — ``benchmark_speed`` times, after a warm-up, a vanilla forward,
defended inference for each preset, detection-only scoring and PGD, at batch 1 and batch N, and reports
median/min/max seconds per image, the ratio to the vanilla forward of the same batch size, and the peak
memory: on the CPU the RSS above the process's RSS before any model was built (``/proc/self/status``
VmHWM, reset per measurement; Linux only), on a GPU the CUDA allocator's peak (each timed call then
waits for the GPU: ``Meter``). The real-size models are timed for one defense step (per-step cost × T;
whole runs only for presets that sample transforms per step), with the transformed copies batched and
chunked (one copy's graph at a time); ``cityscapes_size`` does the same for the demo model on
1024×2048 images.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..assets import ASSETS, WORKSPACE
from ..attacks import PGD
from ..core.defense import PRESETS, EquivarianceDefense
from ..core.validation import SettingsError, device_name, resolve_device
from ..reporting import Report
from .demo import D2_CONFIG

logger = logging.getLogger(__name__)

#: The demo models ``benchmark_speed`` can time at batch 1 and batch N.
DEMO_MODELS = ("mmseg", "detectron2")


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class Meter:
    """Clock and memory gauge of one device.

    CUDA runs kernels asynchronously: a timer read when the Python call returns measures the queueing, not the
    work, so every timed call starts and ends with a synchronize, and memory is the caching allocator's peak
    above what was allocated before the call (``max_memory_allocated``). On the CPU, memory is the process's
    peak RSS above ``baseline_kib`` (its RSS before any model was built; Linux). ``cuda`` is the interface the
    CUDA calls go to (``torch.cuda``; a stand-in in tests).
    """

    def __init__(self, device: str | torch.device = "cpu", baseline_kib: int | None = None, cuda=torch.cuda) -> None:
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self.cuda = cuda
        self.baseline_kib = 0 if self.on_cuda else (_status_kib("VmRSS") if baseline_kib is None else baseline_kib)

    @classmethod
    def of(cls, model: torch.nn.Module) -> Meter:
        """The meter of the device holding ``model``'s first parameter."""
        return cls(next(model.parameters()).device)

    @property
    def memory(self) -> str:
        return "peak CUDA memory allocated" if self.on_cuda else "peak RSS"

    def synchronize(self) -> None:
        if self.on_cuda:
            self.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object]) -> float:
        self.synchronize()
        start = time.perf_counter()
        fn()
        self.synchronize()
        return time.perf_counter() - start

    def peak_mib(self, fn: Callable[[], object]) -> float:
        """Peak memory while ``fn`` runs, in MiB."""
        if self.on_cuda:
            self.synchronize()
            self.cuda.reset_peak_memory_stats(self.device)
            before = self.cuda.memory_allocated(self.device)
            fn()
            self.synchronize()
            return (self.cuda.max_memory_allocated(self.device) - before) / 2**20
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        fn()
        return (_status_kib("VmHWM") - self.baseline_kib) / 1024


def timed(fn: Callable[[], object], repeats: int, per: int, meter: Meter | None = None) -> dict:
    """Median/min/max seconds per item over ``repeats`` calls of ``fn`` (after one warm-up)."""
    return timed_together([fn], repeats, per, meter)[0]


def timed_together(fns: list[Callable[[], object]], repeats: int, per: int, meter: Meter | None = None) -> list[dict]:
    """``timed`` for several functions whose calls alternate (one warm-up each, then ``repeats`` rounds of one
    call each), so a change in the machine's load moves all of them alike and their ratios stay fair. ``meter``:
    the device the calls run on (default: the CPU)."""
    meter = meter or Meter(baseline_kib=0)
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            record.append(meter.seconds(fn) / per)
    return [dict(median=statistics.median(t), min=min(t), max=max(t)) for t in times]


@dataclass
class Case:
    """One model seen through pixels: its vanilla forward, the defense's view and the task loss."""

    name: str
    pixels: torch.Tensor
    vanilla: Callable[[torch.Tensor], object]
    features: Callable[[torch.Tensor], object]
    loss_fn: Callable[[torch.Tensor, object], torch.Tensor]
    targets: Callable[[int], object]
    model: torch.nn.Module


def mmseg_demo_case(batch: int, size: tuple[int, int] | None = None, device: str | torch.device = "cpu") -> Case:
    from ..attacks import pixel_cross_entropy
    from ..mmseg import runtime
    from .demo import DATA, build_demo_runner, ensure_data

    ensure_data()
    runner = build_demo_runner(DATA, batch, WORKSPACE / "work_dirs/benchmark_speed/mmseg")
    model = runner.model.eval().to(device)
    rt = runtime(model)
    samples = [next(iter([item])) for item in runner.test_dataloader.dataset][:batch]
    data = model.data_preprocessor(dict(inputs=[s["inputs"] for s in samples],
                                        data_samples=[s["data_samples"] for s in samples]), False)
    metas = [s.metainfo for s in data["data_samples"]]
    labels = torch.stack([s.gt_sem_seg.data[0] for s in data["data_samples"]]).long()
    logits_for = {}

    def logits(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n not in logits_for:
            logits_for[n] = rt.logits_fn(metas[:n], (0, 0, 0, 0), tuple(x.shape[-2:]))
        return logits_for[n](x)

    pixels = rt.pixels.to_pixels(data["inputs"])
    name = "MMSeg demo DeepLabV3 (R18c16-D8, 128×128)"
    if size is not None:  # the demo images scaled up, e.g. to Cityscapes' 1024×2048 (timing and memory only)
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        name = f"MMSeg demo DeepLabV3 (R18c16-D8, {size[0]}×{size[1]})"
    return Case(name, pixels, logits, rt.features, lambda x, t: pixel_cross_entropy(logits(x), t),
                lambda n: labels[:n], model)


def detectron2_demo_case(batch: int, device: str | torch.device = "cpu") -> Case:
    from ..detectron2 import load_config, register_synthetic_shapes
    from ..detectron2.evaluation import build_annotated_test_loader, build_equi_model

    cfg = load_config(D2_CONFIG)
    cfg.MODEL.DEVICE = str(device)
    names = register_synthetic_shapes(WORKSPACE / cfg.EQUI.SYNTHETIC_ROOT)
    model = build_equi_model(cfg, str(WORKSPACE / cfg.MODEL.WEIGHTS))
    inputs = [b[0] for b, _ in zip(build_annotated_test_loader(cfg, names[-1], batch), range(batch))]
    pixels = torch.stack([model.to_pixels(x["image"]) for x in inputs])
    targets = [x["instances"].to(pixels.device) for x in inputs]
    vanilla = functools.partial(stock_detectron2_inference, model)

    return Case("Detectron2 demo Mask R-CNN (R18-FPN, 128×128)", pixels, vanilla, model.objective(pixels[:1]),
                lambda x, t: model.task_loss(x, t), lambda n: targets[:n], model)


def real_size_case(device: str | torch.device = "cpu") -> Case:
    """MMSeg's DeepLabV3 R50-D8 of the VOC config at 512×512, random weights."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from ..mmseg import runtime

    cfg = Config.fromfile(str(ASSETS / "configs/deeplabv3_voc_equi.py"))
    model = MODELS.build(cfg.model).eval().to(device)
    rt = runtime(model)
    pixels = (torch.rand(1, 3, 512, 512) * 255).to(device)  # drawn on the CPU: the same images on any device

    def vanilla(x: torch.Tensor):
        return model.encode_decode(rt.pixels.to_inputs(x), [dict(img_shape=x.shape[-2:])] * x.shape[0])

    return Case("MMSeg DeepLabV3 R50-D8 (512×512, random weights)", pixels, vanilla, rt.features,
                lambda x, t: x.sum(), lambda n: None, model)


def real_size_detectron2_case(device: str | torch.device = "cpu", size: tuple[int, int] = (800, 1333)) -> Case:
    """Detectron2's Mask R-CNN R50-FPN of the COCO config at ``size`` (its test size), random weights."""
    from ..detectron2 import load_config
    from ..detectron2.evaluation import build_equi_model

    cfg = load_config(str(ASSETS / "configs/mask_rcnn_R_50_FPN_coco_equi.yaml"))
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", str(device)
    model = build_equi_model(cfg, None)
    pixels = (torch.rand(1, 3, *size) * 255).to(device)
    vanilla = functools.partial(stock_detectron2_inference, model)
    fpn = model.objective(pixels[:1])  # as a plain function of pixels: the dense FPN maps, so chunking applies
    return Case(f"Detectron2 Mask R-CNN R50-FPN ({size[0]}×{size[1]}, random weights)", pixels, vanilla,
                lambda x: fpn(x), lambda x, t: x.sum(), lambda n: None, model)


def stock_detectron2_inference(model: torch.nn.Module, pixels: torch.Tensor):
    """Detectron2's own inference of ``pixels`` (scenario ``clean``: the benchmark applies the defenses itself),
    without postprocessing."""
    from ..pipeline import EquiRun, running

    with running(model, EquiRun("clean")):
        return model.inference([{"image": model.to_image(p)} for p in pixels], do_postprocess=False)


#: The real-size models ``benchmark_speed`` times per defense step (random weights: only time and memory matter).
REAL_SIZE_MODELS = {"mmseg": real_size_case, "detectron2": real_size_detectron2_case}


def defense_for(preset: str, **overrides) -> EquivarianceDefense:
    return EquivarianceDefense(preset=preset, **overrides)


def bench_batch(case: Case, n: int, presets: list[str], repeats: int, meter: Meter,
                attack_steps: int, levers: bool = False, compile_features: bool = False) -> list[dict]:
    """Every measurement on the first ``n`` images of ``case``; with ``levers`` also the speed levers the defense
    could pull: channels_last weights (vanilla and the last preset; same values, last bits), bf16 autocast
    (vanilla only; lower precision, timed to see whether it would pay); with ``compile_features`` also
    ``torch.compile`` of the feature function (minutes to compile: the first call apart, then alternating with
    the eager defense)."""
    x = case.pixels[:n]
    targets = case.targets(n)
    rows = []

    def row(what: str, t: dict, peak: float | None = None) -> None:
        rows.append(dict(model=case.name, batch=n, what=what, **t, ratio=t["median"] / vanilla["median"],
                         peak_mib=peak))

    def defended_prediction(defense: EquivarianceDefense, features=case.features) -> Callable[[], object]:
        """The timed call: defend the batch through ``features``, then predict on the restored images."""
        return lambda: case.vanilla(defense(x, features, model=case.model, compute_score=False).images)

    with torch.no_grad():
        vanilla = timed(lambda: case.vanilla(x), repeats, n, meter)
        row("vanilla forward", vanilla, meter.peak_mib(lambda: case.vanilla(x)))
        for preset in presets:
            defense = defense_for(preset)
            defended = defended_prediction(defense)
            row(f"defended ({preset}: T={defense.steps}, K={len(defense.transforms)})",
                timed(defended, repeats, n, meter), meter.peak_mib(defended))
        scorer = defense_for(presets[0])
        row(f"detection score only ({presets[0]} transforms)",
            timed(lambda: scorer.score(x, case.features), repeats, n, meter))
        attack = PGD(loss_fn=case.loss_fn, eps=4, steps=attack_steps)
        row(f"PGD-{attack_steps} attack", timed(lambda: attack(x, targets), max(1, repeats // 2), n, meter))
        if levers:
            defense = defense_for(presets[-1])
            try:  # the weights' layout only: the values, and so the outputs up to last bits, stay
                case.model.to(memory_format=torch.channels_last)
                row("vanilla forward, channels_last weights", timed(lambda: case.vanilla(x), repeats, n, meter))
                row(f"defended ({presets[-1]}), channels_last weights",
                    timed(defended_prediction(defense), repeats, n, meter))
            finally:
                case.model.to(memory_format=torch.contiguous_format)
            # one call: on a CPU without bf16 instructions it is far slower
            with torch.autocast(meter.device.type, dtype=torch.bfloat16):
                row("vanilla forward, bf16 autocast", timed(lambda: case.vanilla(x), 1, n, meter))
    if compile_features:  # its first call compiles (once per input shape), so it is timed apart
        import torch._inductor.config as inductor_config

        defense = defense_for(presets[-1])
        compiled_defended = defended_prediction(defense, torch.compile(case.features))
        with inductor_config.patch(force_disable_caches=True):  # cold, as a user's first run: no on-disk cache hits
            first = meter.seconds(compiled_defended) / n
        row(f"defended ({presets[-1]}), torch.compile features: first call (compiles)",
            dict(median=first, min=first, max=first))
        eager, compiled = timed_together([defended_prediction(defense), compiled_defended], repeats, n, meter)
        row(f"defended ({presets[-1]}), eager, timed with the compiled", eager)
        row(f"defended ({presets[-1]}), torch.compile features, after compiling", compiled)
    return rows


def preprocessed_batches(data_root: Path, num_images: int, batch_size: int, work_dir: Path,
                         checkpoint: Path | None = None, config: Path | None = None,
                         device: str | torch.device | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """The eval-mode model of ``config`` (default: the demo's) and its first ``num_images`` test images of
    ``data_root``, loaded and preprocessed once in batches of ``batch_size``, ready for ``model.predict``, on
    ``device`` (default: where MMEngine's runner put the model)."""
    from .demo import CHECKPOINT, CONFIG, build_demo_runner

    runner = build_demo_runner(data_root, num_images, work_dir, checkpoint or CHECKPOINT, batch_size=batch_size,
                               config=config or CONFIG)
    model = runner.model.eval()
    if device is not None:
        model.to(device)
    return model, [model.data_preprocessor(b, False) for b in runner.test_dataloader]


def alternating_predictions(model: torch.nn.Module, batches: list[dict], defense: dict, variants: list[dict],
                            repeats: int) -> list[tuple[dict, int]]:
    """Seconds per image (``timed``'s statistics) of predicting every preprocessed batch without gradients, as
    MMEngine's test loop does, under the run of scenario ``clean_defended`` with ``defense``, changed as each of
    ``variants`` says (``EquiRun`` fields, e.g. ``dict(scenario='clean')``: the stock prediction;
    ``dict(views=dict(reuse_backbone=False))``), the variants' calls alternating; with the images the defense
    flagged (detect-then-defend; else 0)."""
    from ..mmseg import scenario
    from ..pipeline import running

    images = sum(len(data["data_samples"]) for data in batches)
    with scenario(model, "clean_defended", defense=defense) as defended:
        def predict(variant: dict) -> int:
            flagged = []
            run = dataclasses.replace(defended, **variant, sink=lambda out: flagged.append(
                int(out.flagged.sum()) if out.flagged is not None else 0))
            with running(model, run), torch.no_grad():
                for data in batches:
                    model.predict(data["inputs"], data["data_samples"])
            return sum(flagged)

        times = timed_together([functools.partial(predict, v) for v in variants], repeats, images, Meter.of(model))
        return [(t, predict(v)) for t, v in zip(times, variants)]


def detectron2_batches(cfg, num_images: int, batch_size: int) -> list[list[dict]]:
    """The first ``num_images`` inputs of ``cfg.DATASETS.TEST[0]`` with the test-time resizing (and their
    ``instances``: ``build_annotated_test_loader``), in lists of ``batch_size`` (what ``model.inference`` takes)."""
    from ..detectron2.evaluation import build_annotated_test_loader

    inputs = [batch[0] for batch in build_annotated_test_loader(cfg, cfg.DATASETS.TEST[0], num_images)]
    return [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]


def alternating_detectron2_predictions(model: torch.nn.Module, batches: list[list[dict]], defense: dict,
                                       levels: list[str], repeats: int) -> tuple[dict, dict]:
    """Seconds per image (``timed``'s statistics) of the stock Detectron2 inference of every batch and of the
    same with ``defense`` on FPN ``levels`` (``EquiGeneralizedRCNN``'s scenario ``clean_defended``), alternating."""
    from ..pipeline import EquiPipeline, EquiRun, running

    pipeline = EquiPipeline(defense, None, needs_logits=False)
    images = sum(len(inputs) for inputs in batches)

    def predict(scenario: str) -> None:
        with running(model, EquiRun(scenario, pipeline, views=dict(levels=list(levels)))), torch.no_grad():
            for inputs in batches:
                model.inference(inputs)

    stock, defended = timed_together([functools.partial(predict, "clean"),
                                      functools.partial(predict, "clean_defended")], repeats, images, Meter.of(model))
    return stock, defended


def bench_clean_traffic(batch_sizes: list[int], num_images: int, detector_transforms: list[str], percentile: float,
                        preset: str, repeats: int, work_dir: Path, device: str | torch.device = "cpu") -> list[dict]:
    """Detect-then-defend as a service sees clean traffic: the whole MMSeg prediction (``predict`` through the
    runtime) of the first ``num_images`` val images at each batch size, against the stock prediction of the
    same batches, with the threshold fixed on the tuning split (its ``percentile``-th clean score) and the
    flagged images defended with ``preset``; once reusing the score's backbone outputs in the prediction,
    once recomputing them (the run's ``reuse_backbone`` view)."""
    from .demo import DATA, ensure_data
    from .detection import tuning_threshold

    detector = dict(type="detect_then_defend", threshold=-1.0, score_transforms=detector_transforms)
    threshold = tuning_threshold(detector, num_images, percentile, work_dir / "tune")
    dtd = dict(detector, threshold=threshold, defense=dict(type="equi", preset=preset))
    ensure_data()
    rows = []
    for n in batch_sizes:
        logger.info("timing detect-then-defend on %d clean val images at batch %d", num_images, n)
        model, batches = preprocessed_batches(DATA, num_images, n, work_dir / f"clean_traffic_b{n}", device=device)
        name = f"MMSeg demo DeepLabV3 (R18c16-D8, 128×128), {num_images} clean val images"
        (vanilla, _), *defended = alternating_predictions(model, batches, dtd, [
            dict(scenario="clean"), dict(views=dict(reuse_backbone=True)), dict(views=dict(reuse_backbone=False))],
            repeats)
        rows.append(dict(model=name, batch=n, what="vanilla prediction", **vanilla, ratio=1.0, peak_mib=None))
        for reuse, (t, flagged) in zip((True, False), defended):
            rows.append(dict(model=name, batch=n, what=(
                f"detect-then-defend ({', '.join(detector_transforms)} score < {threshold:.3f}, the {percentile:g}th "
                f"percentile of the tuning split; {flagged}/{num_images} flagged, defended {preset}; backbone "
                f"{'reused from the score' if reuse else 'recomputed'})"), **t, ratio=t["median"] / vanilla["median"],
                peak_mib=None))
    return rows


def bench_per_step(case: Case, presets: list[str], meter: Meter) -> list[dict]:
    """One image: one timed defense step per preset, batched and chunked (after one warm-up
    step), reported as per-step cost × T + a vanilla forward; peak memory of one step."""
    rows = []
    x = case.pixels[:1]
    with torch.no_grad():
        vanilla = timed(lambda: case.vanilla(x), 2, 1, meter)
        rows.append(dict(model=case.name, batch=1, what="vanilla forward", **vanilla, ratio=1.0,
                         peak_mib=meter.peak_mib(lambda: case.vanilla(x))))
        for preset, chunked in itertools.product(presets, (False, True)):
            steps = PRESETS[preset]["steps"]
            # A preset that samples transforms per step is timed over its whole schedule (all T
            # steps, reported per step), since one step's cost depends on the transform it drew.
            timed_steps = steps if PRESETS[preset].get("transforms_per_step") else 1
            per_step_defense = defense_for(preset, steps=timed_steps, chunked=chunked)

            def step(defense=per_step_defense):
                defense(x, case.features, model=case.model, compute_score=False)

            # Memory first: the timing's warm-up then also covers allocator growth.
            peak = meter.peak_mib(step)
            t = {k: v / timed_steps for k, v in timed(step, 1, 1, meter).items()}
            per_step = t["median"]
            total = per_step * steps + vanilla["median"]
            label = f"defended ({preset}{', chunked' if chunked else ''}: {per_step:.1f} s/step × T={steps})"
            rows.append(dict(model=case.name, batch=1, what=label, median=total, min=t["min"] * steps + vanilla["min"],
                             max=t["max"] * steps + vanilla["max"], ratio=total / vanilla["median"], peak_mib=peak))
    return rows


def render(data: dict) -> str:
    """The speed page: seconds per image (median, min, max over the timed calls), ratio, peak memory."""
    lines = [f"Device: {data['device']}.", ""] if "device" in data else []  # results written before name none
    lines += [f"| model | batch | measurement | s/image (median) | min | max | × vanilla | "
              f"{data.get('memory', 'peak RSS')} (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        peak = r.get("peak_mib", r.get("peak_rss_mib"))  # results written before CUDA support name it after RSS
        rss = f"{peak:.0f}" if peak is not None else "—"
        lines.append(f"| {r['model']} | {r['batch']} | {r['what']} | {r['median']:.3f} | {r['min']:.3f} "
                     f"| {r['max']:.3f} | {r['ratio']:.1f} | {rss} |")
    return "\n".join(lines) + "\n"


REPORT = Report(render)


def benchmark_speed(*, batch: int = 8, repeats: int = 3, presets: list[str] | None = None, attack_steps: int = 10,
                    real_models: list[str] = ("mmseg",), compile_features: bool = False,
                    detector_transforms: list[str] | None = None,
                    detector_percentile: float = 5.0, clean_traffic_images: int = 16, cityscapes_size: bool = False,
                    models: list[str] = DEMO_MODELS, device: str | torch.device | None = None,
                    work_dir: str | Path = WORKSPACE / "work_dirs/benchmark_speed",
                    command: str | None = None) -> list[dict]:
    """Time the demo ``models`` at batch 1 and ``batch`` (``repeats`` timed calls after a warm-up; PGD with
    ``attack_steps`` steps) for each defense preset of ``presets`` (default: ``default`` and ``fast``), then
    the per-step rows (``cityscapes_size``; the ``real_models``: MMSeg's R50-D8 at 512×512, Detectron2's R50-FPN
    Mask R-CNN at 800×1333); ``compile_features`` adds
    ``torch.compile`` of the MMSeg demo's feature function to its speed levers. ``detector_transforms``
    adds, for the MMSeg demo model only, detect-then-defend on ``clean_traffic_images`` clean val images at batch
    1 and ``batch`` (``bench_clean_traffic``; threshold: the ``detector_percentile``-th percentile of the tuning
    split's clean scores; flagged images defended with the last preset). Every model runs on ``device``
    (default: the GPU when there is one). Writes ``work_dir/benchmark_speed.{md,json}`` (with the machine: the
    result's provenance) and returns the rows.

    Raises:
        ValueError: unknown presets, models or device, or ``batch`` / ``repeats`` / ``attack_steps`` < 1,
            before any model is built.
    """
    presets = list(presets) if presets is not None else [p for p in ("default", "fast") if p in PRESETS]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise SettingsError(f"unknown presets {unknown or presets}; valid: {sorted(PRESETS)}")
    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        raise SettingsError(f"unknown models {unknown}; valid: {list(DEMO_MODELS)}")
    unknown = [m for m in real_models if m not in REAL_SIZE_MODELS]
    if unknown:
        raise SettingsError(f"unknown real-size models {unknown}; valid: {list(REAL_SIZE_MODELS)}")
    if batch < 1 or repeats < 1 or attack_steps < 1:
        raise SettingsError(f"batch, repeats and attack_steps must be >= 1; got {batch}, {repeats}, {attack_steps}")
    if detector_transforms and not (0 <= detector_percentile <= 100 and clean_traffic_images >= 1):
        raise SettingsError(f"detector_percentile must be in [0, 100] and clean_traffic_images >= 1; got "
                            f"{detector_percentile}, {clean_traffic_images}")
    device = resolve_device(device)
    meter = Meter(device)  # on the CPU: the RSS before any model is built is the baseline
    torch.manual_seed(0)
    builders = {"mmseg": mmseg_demo_case, "detectron2": detectron2_demo_case}
    rows: list[dict] = []
    for name in models:
        case = builders[name](batch, device=device)
        for n in (1, batch):
            logger.info("timing the %s demo model at batch %d on %s", name, n, device)
            rows += bench_batch(case, n, presets, repeats, meter, attack_steps, levers=name == "mmseg",
                                compile_features=compile_features and name == "mmseg")
        if name == "mmseg" and detector_transforms:
            rows += bench_clean_traffic(sorted({1, batch}), clean_traffic_images, list(detector_transforms),
                                        detector_percentile, presets[-1], repeats, Path(work_dir), device)
    if cityscapes_size:
        logger.info("timing one defense step at 1024×2048")
        rows += bench_per_step(mmseg_demo_case(1, size=(1024, 2048), device=device), presets, meter)
    for name in real_models:
        logger.info("timing one defense step of the real-size %s model on %s", name, device)
        rows += bench_per_step(REAL_SIZE_MODELS[name](device), presets, meter)
    REPORT.write(work_dir, "benchmark_speed", dict(rows=rows, device=device_name(device), memory=meter.memory),
                 command=command)
    return rows
