"""equi_ext.evaluation.tuning and .speed (tools/tune_defense.py, tools/benchmark_speed.py): bad settings are
refused by name before any model is built or any file written; the tools turn them into exit messages."""

from __future__ import annotations

import time

import pytest

from equi_ext.core.defense import EquivarianceDefense
from equi_ext.core.validation import SettingsError
from equi_ext.defenses import build_defense
from equi_ext.evaluation import speed, tuning

from .conftest import load_tool


@pytest.mark.parametrize("kwargs, message", [
    (dict(candidates=["paper", "T3-magic"]), r"unknown candidates \['T3-magic'\]; valid: \['paper', "),
    (dict(framework="detectron2", candidates=["paper"]), r"unknown candidates \['paper'\]; valid: \['default', "),
    (dict(split="test"), "unknown split 'test'; valid: tune, val"),
    (dict(num_images=0), "num_images must be >= 1; got 0"),
    (dict(framework="detectron2", split="val"), "feature_layer and split apply to the MMSeg model only"),
    (dict(framework="detectron2", feature_layer="neck"), "feature_layer and split apply to the MMSeg model only"),
])
def test_tuning_refuses_bad_settings_before_running(kwargs, message, tmp_path):
    with pytest.raises(SettingsError, match=message):
        tuning.tune_defense(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_every_tuning_candidate_is_a_valid_defense():
    assert set(tuning.DEFAULT_CANDIDATES) <= set(tuning.CANDIDATES)
    for name, settings in tuning.CANDIDATES.items():
        assert isinstance(build_defense(dict(type="equi", **settings)), EquivarianceDefense), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(presets=["fast", "slow"]), r"unknown presets \['slow'\]; valid: "),
    (dict(models=["mmseg", "yolo"]), r"unknown models \['yolo'\]; valid: \['mmseg', 'detectron2'\]"),
    (dict(repeats=0), "batch, repeats and attack_steps must be >= 1; got 8, 0, 10"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(device="cuda:7"), "device 'cuda:7' asked for, but"),
])
def test_speed_refuses_bad_settings_before_running(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        speed.benchmark_speed(work_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tool, args, message", [
    ("tune_defense", ["--candidates", "T3-magic"], r"^error: unknown candidates \['T3-magic'\]"),
    ("tune_defense", ["--detectron2", "--candidates", "paper"], r"^error: unknown candidates \['paper'\]"),
    ("benchmark_speed", ["--presets", "slow"], r"^error: unknown presets \['slow'\]"),
    ("benchmark_speed", ["--models", "yolo"], r"^error: unknown models \['yolo'\]"),
])
def test_tools_turn_bad_settings_into_exit_messages(tool, args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_tool(tool).main([*args, "--work-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_tuning_page_rerenders_from_its_result(tmp_path, monkeypatch, synthetic_val_root, assert_rerenders):
    monkeypatch.setattr(tuning, "ensure_tune_data", lambda: synthetic_val_root)
    tool = load_tool("tune_defense")
    rows = tool.main(["--num-images", "1", "--candidates", "fast", "--work-dir", str(tmp_path)])
    miou = {(r["attack"], r["defense"]): r["mIoU"] for r in rows}
    assert set(miou) == {(a, d) for d in ("vanilla", "fast") for a in ("clean", "PGD-20")}
    page = (tmp_path / "tune_backbone_1cands_1img.md").read_text()
    assert f"| PGD-20 | {miou['PGD-20', 'vanilla']:.2f} | {miou['PGD-20', 'fast']:.2f} |" in page
    assert_rerenders(tool, tmp_path / "tune_backbone_1cands_1img.json")


def test_detectron2_tuning_page_lists_each_candidate_against_the_shared_attack():
    def row(scenario, ap, seconds=1.0):
        return dict(scenario=scenario, segm_AP=ap, seconds=seconds)

    page = tuning.render(dict(framework="detectron2", num_images=2, candidates=[
        dict(candidate="default", opts=[], rows=[row("clean", 40.0), row("clean_defended", 38.5),
                                                row("attacked", 9.25), row("defended", 20.125, 12.0)]),
        dict(candidate="fr-T4-epsv4", opts=[], rows=[row("clean_defended", 37.0), row("defended", 18.0, 7.0)])]))
    assert page.splitlines()[4:] == ["| vanilla | 40.00 | 9.25 | — | — |", "| default | 38.50 | 9.25 | 20.12 | 12 |",
                                     "| fr-T4-epsv4 | 37.00 | 9.25 | 18.00 | 7 |"]


def test_speed_page_rerenders_from_its_result(tmp_path, assert_rerenders):
    tool = load_tool("benchmark_speed")
    rows = tool.main(["--models", "mmseg", "--batch", "2", "--repeats", "1", "--presets", "fast", "--skip-real",
                      "--attack-steps", "1", "--detector-transforms", "", "--work-dir", str(tmp_path)])
    vanilla = next(r for r in rows if r["batch"] == 1 and r["what"] == "vanilla forward")
    assert vanilla["ratio"] == 1.0 and all(r["ratio"] > 0 for r in rows)
    assert f"| vanilla forward | {vanilla['median']:.3f} |" in (tmp_path / "benchmark_speed.md").read_text()
    assert_rerenders(tool, tmp_path / "benchmark_speed.json")


def test_the_compiled_feature_function_is_timed_apart_from_its_compile(monkeypatch):
    compiled_calls = []

    def fake_compile(fn):  # torch.compile takes minutes on a CPU; the rows' bookkeeping is what is tested
        def compiled(x):
            compiled_calls.append(x.shape)
            return fn(x)
        return compiled

    monkeypatch.setattr(speed.torch, "compile", fake_compile)
    case = speed.mmseg_demo_case(1)
    rows = speed.bench_batch(case, 1, ["fast"], 1, speed.Meter(), 1, compile_features=True)
    compile_rows = [r for r in rows if "torch.compile" in r["what"] or "timed with the compiled" in r["what"]]
    assert [r["what"] for r in compile_rows] == [
        "defended (fast), torch.compile features: first call (compiles)",
        "defended (fast), eager, timed with the compiled", "defended (fast), torch.compile features, after compiling"]
    steps = speed.PRESETS["fast"]["steps"]
    assert len(compiled_calls) >= 3 * steps  # the first call, the warm-up and one timed call all ran compiled
    assert all(r["ratio"] > 0 for r in compile_rows)
    assert not any("torch.compile" in r["what"] for r in speed.bench_batch(case, 1, ["fast"], 1, speed.Meter(), 1))


def test_lambda_sweep_page_rerenders_from_its_result(tmp_path, monkeypatch, synthetic_val_root, assert_rerenders):
    monkeypatch.setattr(tuning, "ensure_tune_data", lambda: synthetic_val_root)
    tool = load_tool("sweep_lambda")
    rows = tool.main(["--num-images", "1", "--lambdas", "0,10", "--steps", "1", "--work-dir", str(tmp_path)])
    assert {(r["attack"], r["defense"]) for r in rows} == {
        (f"adaptive λ_e={lam}", d) for lam in ("0", "10") for d in ("vanilla", "equivariance")}
    assert_rerenders(tool, tmp_path / "sweep_lambda.json")
    with pytest.raises(SystemExit, match="--lambdas takes numbers"):
        tool.main(["--lambdas", "0,x", "--work-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="need num_images >= 1, steps >= 1"):
        tool.main(["--steps", "0", "--work-dir", str(tmp_path)])


def test_clean_traffic_rows_time_detect_then_defend_with_the_tuning_splits_threshold(tmp_path, monkeypatch,
                                                                                   synthetic_val_root):
    from equi_ext.evaluation import demo, detection

    monkeypatch.setattr(demo, "DATA", synthetic_val_root)
    monkeypatch.setattr(demo, "ensure_data", lambda: None)
    monkeypatch.setattr(detection, "ensure_tune_data", lambda: synthetic_val_root)
    rows = speed.bench_clean_traffic([1, 2], 2, ["hflip"], 50.0, "fast", 1, tmp_path)
    assert [(r["batch"], r["what"].split(" (")[0]) for r in rows] == [
        (n, what) for n in (1, 2) for what in ("vanilla prediction", "detect-then-defend", "detect-then-defend")]
    # tuned and reported on the same two images here: the median of their scores flags the lower one
    assert all("the 50th percentile of the tuning split; 1/2 flagged, defended fast" in r["what"] for r in rows
               if r["what"] != "vanilla prediction")
    assert [r["what"].endswith(("reused from the score)", "recomputed)")) for r in rows] == [False, True, True] * 2
    assert all(r["ratio"] > 0 for r in rows)


class FakeCuda:
    """``torch.cuda``'s synchronize and memory calls, for a meter on a machine without a GPU: queued work takes
    ``latency`` seconds to finish, and the allocator peaks ``peak_mib`` above what was allocated."""

    def __init__(self, latency: float, peak_mib: float) -> None:
        self.latency, self.peak_mib, self.calls = latency, peak_mib, []

    def synchronize(self, device):
        self.calls.append("synchronize")
        time.sleep(self.latency)

    def reset_peak_memory_stats(self, device):
        self.calls.append("reset")

    def memory_allocated(self, device):
        return 100 * 2**20

    def max_memory_allocated(self, device):
        return 100 * 2**20 + self.peak_mib * 2**20


def test_a_cuda_meter_waits_for_the_gpu_and_reports_the_allocators_peak():
    import torch

    fake = FakeCuda(latency=0.05, peak_mib=42.0)
    meter = speed.Meter("cuda", cuda=fake)
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    case = speed.Case("toy", torch.rand(2, 3, 16, 16) * 255, lambda x: net(x), lambda x: [net(x)],
                      lambda x, t: net(x).sum(), lambda n: None, net)
    rows = speed.bench_batch(case, 2, ["fast"], 2, meter, 1)
    vanilla = rows[0]
    # the forward returns at once: only waiting for the (simulated) GPU makes a call of 2 images take >= latency
    assert vanilla["what"] == "vanilla forward" and vanilla["min"] * 2 >= fake.latency
    assert vanilla["peak_mib"] == 42.0 and rows[1]["peak_mib"] == 42.0
    assert fake.calls.count("reset") == 2  # once per memory measurement
    page = speed.render(dict(rows=rows, device="cuda:0 (fake)", memory=meter.memory))
    assert "| peak CUDA memory allocated (MiB) |" in page and "| 42 |" in page
    old_row = {k: v for k, v in rows[0].items() if k != "peak_mib"} | {"peak_rss_mib": 7.0}  # written before
    assert "| peak RSS (MiB) |" in speed.render(dict(rows=[old_row])) and "| 7 |" in speed.render(dict(rows=[old_row]))
