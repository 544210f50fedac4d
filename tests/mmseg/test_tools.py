"""tools/test.py on real MMSeg configs: mmseg's own VOC config, wiring and config-time errors."""

from __future__ import annotations

import json

import pytest

from equi_ext.core.validation import SettingsError
from equi_ext.evaluation.demo import build_demo_runner

from .conftest import DEMO_CONFIG, REPO, load_tool, write_voc_fixture

VOC_CONFIG = str(REPO / "configs/deeplabv3_voc_equi.py")


def voc_options(root, work_dir):
    return [
        "--work-dir", str(work_dir),
        "--cfg-options",
        f"test_dataloader.dataset.data_root={root}",
        "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False",
        "test_dataloader.dataset.pipeline.1.scale=(64,64)",
        "model.pretrained=None",
        "model.test_cfg.defense.steps=2",
        "model.test_cfg.defense.transforms=['hflip','resize:0.5']",
        "model.test_cfg.attack.steps=1",
    ]


def test_mmseg_voc_config_end_to_end(tmp_path, test_tool, monkeypatch):
    import torch
    from mmseg.models import EncoderDecoder

    import equi_ext.mmseg as equi_mmseg
    from equi_ext.core.defense import EquivarianceDefense

    defended, predicted_on = [], []  # the defense's outputs; the pixels each final prediction ran on
    stock_defense, stock_inference = EquivarianceDefense.__call__, EncoderDecoder.inference

    def defense(self, images, *args, **kwargs):
        out = stock_defense(self, images, *args, **kwargs)
        defended.append(out.images.detach().clone())
        return out

    def inference(self, inputs, metas):
        if not torch.is_grad_enabled():  # the final prediction, not an attack step
            predicted_on.append(equi_mmseg.runtime(self).pixels.to_pixels(inputs.detach()))
        return stock_inference(self, inputs, metas)

    monkeypatch.setattr(EquivarianceDefense, "__call__", defense)
    monkeypatch.setattr(EncoderDecoder, "inference", inference)
    root = write_voc_fixture(tmp_path / "VOC2012")
    rows = test_tool.main([VOC_CONFIG, *voc_options(root, tmp_path / "work")])
    # clean, clean + defense, attacked, attacked + defense: 3 images each; the defended scenarios predict on
    # exactly what the defense returned (the preprocessor pads at the bottom/right: compare the image part).
    assert len(predicted_on) == 12 and len(defended) == 6
    for seen, out in zip(predicted_on[3:6] + predicted_on[9:12], defended, strict=True):
        torch.testing.assert_close(seen[..., :out.shape[-2], :out.shape[-1]], out, atol=1e-3, rtol=0)
    assert [r["scenario"] for r in rows] == ["clean", "clean_defended", "attacked", "defended"]
    for row in rows:
        assert 0.0 <= row["mIoU"] <= 100.0 and row["images"] == 3
        assert -1.0 <= row["equivariance_score"] <= 1.0
    score = {r["scenario"]: r["equivariance_score"] for r in rows}
    # Each scenario saw other images: the defense moved the clean ones, the attack moved them, the defense
    # moved the attacked ones (the score is a smooth function of the images the model saw).
    assert len({score["clean"], score["clean_defended"], score["attacked"], score["defended"]}) == 4
    saved = json.loads((tmp_path / "work/equi_results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(rows))
    assert "| attacked + defense |" in (tmp_path / "work/equi_results.md").read_text()


@pytest.mark.parametrize(
    "option, message",
    [
        ("model.test_cfg.defense.type=magic", "unknown defense 'magic'; valid names"),
        ("model.test_cfg.attack.eps=-1", "eps must be >= 0"),
        ("model.test_cfg.attack.type=fgsm", "unknown attack 'fgsm'; valid names"),
        ("model.test_cfg.defense.eps_v=0.02", r"eps_v=0.02 is in \(0, 1\)"),
        ("model.test_cfg.feature_layer=head", "feature_layer must be one of"),
        ("model.test_cfg.defence=equi", r"model.test_cfg.defence is not an equi-ext or MMSeg setting \(did you mean 'defense'"),
        ("model.test_cfg.defense.eps_vv=4", r"defense 'equi' \(EquivarianceDefense\) does not accept 'eps_vv' \(did you mean"),
        ("model.test_cfg.attack.samples=8", r"attack 'pgd' \(PGD\) does not accept 'samples'; it accepts"),
    ],
)
def test_bad_settings_fail_before_running(tmp_path, test_tool, option, message, capsys):
    with pytest.raises(SystemExit, match=message):
        test_tool.main([VOC_CONFIG, "--work-dir", str(tmp_path), "--cfg-options", option])


def test_missing_and_mismatched_checkpoints_are_named(tmp_path, test_tool):
    import torch

    root = write_voc_fixture(tmp_path / "VOC2012", n=1)
    args = voc_options(root, tmp_path / "work")
    with pytest.raises(SystemExit, match="does not exist"):
        test_tool.main([VOC_CONFIG, str(tmp_path / "nope.pth"), *args])
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(SystemExit, match="does not match the model"):
        test_tool.main([VOC_CONFIG, str(bad), *args])


def test_missing_config_is_named(test_tool):
    with pytest.raises(SystemExit, match="does not exist"):
        test_tool.main(["configs/nope.py"])


def test_train_tool_trains_the_demo_config_and_its_checkpoint_loads(tmp_path, test_tool):
    from equi_ext.data.synthetic import generate_dataset

    from .conftest import DEMO_CONFIG, load_tool

    root = tmp_path / "shapes"
    generate_dataset(root, seed=3, image_size=128, num_train=4, num_val=2)
    common = [f"train_dataloader.dataset.data_root={root}", f"test_dataloader.dataset.data_root={root}",
              f"val_dataloader.dataset.data_root={root}", "train_dataloader.num_workers=0",
              "train_dataloader.persistent_workers=False", "train_dataloader.batch_size=2",
              "val_dataloader.num_workers=0", "test_dataloader.num_workers=0"]
    load_tool("train").main([str(DEMO_CONFIG), "--work-dir", str(tmp_path / "train"), "--cfg-options",
                             "train_cfg.max_iters=2", "train_cfg.val_interval=2",
                             "default_hooks.checkpoint.interval=2", *common])
    checkpoint = tmp_path / "train/iter_2.pth"
    assert checkpoint.is_file()
    rows = test_tool.main([str(DEMO_CONFIG), str(checkpoint), "--work-dir", str(tmp_path / "test"),
                           "--cfg-options", *common])
    assert [r["scenario"] for r in rows] == ["clean"] and rows[0]["images"] == 2


@pytest.mark.numerics
def test_two_processes_with_the_pytorch_launcher_match_one_process(tmp_path, synthetic_val_root):
    """`torchrun --nproc_per_node 2 tools/test.py ... --launcher pytorch` (gloo on CPU) shards the images
    and reports the same metrics as one process: per-image seeds do not depend on the shard. Both runs use
    one thread per process (torchrun's default), so that only the sharding differs, not the kernels."""
    import os
    import socket
    import subprocess
    import sys

    from .conftest import DEMO_CHECKPOINT, DEMO_CONFIG

    options = ["--scenarios", "clean,attacked", "--cfg-options", f"test_dataloader.dataset.data_root={synthetic_val_root}",
               "test_dataloader.dataset.indices=4", "test_dataloader.num_workers=0",
               "test_dataloader.persistent_workers=False", "model.test_cfg.attack.type=pgd",
               "model.test_cfg.attack.steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runs = {"one": [], "two": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]}
    results = {}
    for name, launcher in runs.items():
        extra = ["--launcher", "pytorch"] if name == "two" else []
        run = subprocess.run([sys.executable, *launcher, str(REPO / "tools/test.py"), str(DEMO_CONFIG),
                              str(DEMO_CHECKPOINT), *extra, "--work-dir", str(tmp_path / name), *options],
                             capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "equi_results.json").read_text())["results"]
    for one, two in zip(results["one"], results["two"], strict=True):
        assert one["scenario"] == two["scenario"] and one["images"] == two["images"] == 4
        assert two["mIoU"] == pytest.approx(one["mIoU"], abs=1e-6)
        assert two["equivariance_score"] == pytest.approx(one["equivariance_score"], abs=1e-5)


def test_per_image_metric_reproduces_iou_metric_and_sanity_report_runs(synthetic_val_root, tmp_path,
                                                                          assert_rerenders):
    """PerImageIoUMetric's worst case over one run is that run's IoUMetric mIoU; the honesty
    report runs end to end (tiny budgets) and pools every ε-bounded run per image."""
    from equi_ext.mmseg.evaluation import evaluate_grid, worst_case

    runner = build_demo_runner(synthetic_val_root, 3, tmp_path / "grid",
                               test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]))
    (row,) = evaluate_grid(runner, {"vanilla": None}, {"clean": None})
    assert [r["img"] for r in row["per_image"]] == sorted({r["img"] for r in row["per_image"]})
    assert all(r["loss"] > 0 for r in row["per_image"])
    worst = worst_case(runner, [row])
    assert worst["mIoU"] == pytest.approx(row["mIoU"], abs=1e-6) and worst["greedy_mIoU"] == pytest.approx(row["mIoU"])

    report = load_tool("sanity_checks").main([
        "--data-root", str(synthetic_val_root), "--num-images", "2", "--steps", "1", "--bpda-steps", "1",
        "--max-bpda-steps", "2", "--restarts", "2", "--lambdas", "1", "--eot-samples", "1",
        "--work-dir", str(tmp_path / "sanity")])
    assert [c["check"] for c in report["checks"]] == list("abcdefg")
    assert [s for s, _ in report["bpda_curve"]] == [1, 2] and [s for s, _ in report["apgd_curve"]] == [1, 2]
    bounded = [label for label in report["runs"]
               if label not in ("clean", "clean + defense", "PGD (vanilla)") and "ε=255" not in label]
    # 2 restarts, BPDA ×2, APGD ×2, SEA, EOT, adaptive, unrolled
    assert len(report["worst_case_picks"]) == 2 and len(bounded) == 10 and "SEA-2" in bounded
    assert set(p.split(" / ")[0] for p in report["worst_case_picks"]) <= set(bounded)
    assert "Per-image worst case" in (tmp_path / "sanity/sanity_checks.md").read_text()
    assert_rerenders(load_tool("sanity_checks"), tmp_path / "sanity/sanity_checks.json")


def test_results_do_not_depend_on_the_data_folder(synthetic_val_root, tmp_path):
    """The same images in another folder (it differs between machines) give equal per-image records."""
    import shutil
    from pathlib import Path

    from equi_ext.mmseg.evaluation import evaluate_grid

    names = sorted(p.name for p in (synthetic_val_root / "img_dir/val").iterdir())[:2]
    records = {}
    for place in ("here", "elsewhere/deeper"):
        root = tmp_path / place / "shapes"
        for sub in ("img_dir/val", "ann_dir/val"):
            (root / sub).mkdir(parents=True)
            for name in names:
                shutil.copy(synthetic_val_root / sub / name, root / sub / name)
        runner = build_demo_runner(root, 2, tmp_path / place / "work",
                                   test_evaluator=dict(type="PerImageIoUMetric", iou_metrics=["mIoU"]))
        (row,) = evaluate_grid(runner, {"equi": dict(type="equi", steps=1, transforms=["hflip"])},
                               {"pgd": dict(type="pgd", eps=4, steps=1)})
        records[place] = [{**r, "img": Path(r["img"]).name, "areas": [a.tolist() for a in r["areas"]]}
                          for r in row["per_image"]]
    assert [r["img"] for r in records["here"]] == names
    assert records["here"] == records["elsewhere/deeper"]


def test_a_none_defense_adds_no_defended_scenario(tmp_path, test_tool):
    """``defense='none'`` is no defense: the default scenarios are clean and attacked, no 'clean + defense' row."""
    root = write_voc_fixture(tmp_path / "VOC2012", n=1)
    options = [option for option in voc_options(root, tmp_path / "work") if not option.startswith("model.test_cfg.defense")]
    rows = test_tool.main([VOC_CONFIG, *options, "model.test_cfg.defense=none"])
    assert [r["scenario"] for r in rows] == ["clean", "attacked"]


def test_class_weights_are_the_inverse_pixel_counts_of_the_training_label_maps(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from equi_ext.data.synthetic import generate_dataset

    root = tmp_path / "shapes"
    generate_dataset(root, seed=3, image_size=32, num_train=3, num_val=0)
    result = load_tool("class_weights").main([str(DEMO_CONFIG), "--data-root", str(root), "--out",
                                              str(tmp_path / "w.json")])
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((root / "ann_dir/train").iterdir())])
    counts = [int((labels == c).sum()) for c in range(len(result["classes"]))]
    assert result["counts"] == counts and result["images"] == 3
    inverse = [1 / n if n else 0.0 for n in counts]
    assert result["weights"] == pytest.approx([w / sum(inverse) for w in inverse], rel=1e-12)
    assert json.loads((tmp_path / "w.json").read_text()) == result
    assert "attack=dict(type='sea', class_weights=[" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="num_images must be >= 1; got 0"):
        load_tool("class_weights").main([str(DEMO_CONFIG), "--num-images", "0"])


def test_the_first_command_prints_each_cell_as_it_finishes(synthetic_val_root, tmp_path, monkeypatch, capsys,
                                                          assert_rerenders):
    """tools/run_demo.py: vanilla vs equivariance under clean, PGD and BPDA (the same defense), each cell's
    progress bar and its mIoU printed before the table, and the pointer to the worst-case evaluation."""
    from equi_ext.evaluation import demo

    monkeypatch.setattr(demo, "DATA", synthetic_val_root)
    monkeypatch.setattr(demo, "ATTACK_STEPS", 1)
    monkeypatch.setattr(demo, "BPDA_STEPS", 1)
    result = load_tool("run_demo").main(["--num-images", "2", "--batch-size", "2", "--work-dir", str(tmp_path)])
    cells = {(r["attack"], r["defense"]) for r in result["rows"]}
    assert cells == {(a, d) for a in ("clean", "PGD-1", "BPDA-1") for d in ("vanilla", "equivariance")}
    captured = capsys.readouterr()
    out = captured.out
    table = out.index("| attack |")
    for row in result["rows"]:
        assert out.index(f"{row['attack']:<18} {row['defense']:<13} mIoU {row['mIoU']:6.2f}") < table
    assert "BPDA-1 is not the worst case" in (tmp_path / "demo_results.md").read_text()
    for row in result["rows"]:  # one progress bar per cell, named by it, over its images
        assert f"{row['attack']} / {row['defense']}: 100%" in captured.err and "2/2" in captured.err
    assert_rerenders(load_tool("run_demo"), tmp_path / "demo_results.json")
    with pytest.raises(SystemExit, match="batch_size must be >= 1"):
        load_tool("run_demo").main(["--batch-size", "0", "--work-dir", str(tmp_path)])


def test_the_demo_spread_tabulates_each_run_and_the_range_per_cell(tmp_path, assert_rerenders):
    """tools/run_demo.py --spread: each cell of several run_demo results side by side, labelled by where and how
    each ran, with max − min; results of another grid, or not of this tool, are refused."""
    committed = json.loads((REPO / "docs/benchmarks/demo/demo_results.json").read_text())
    committed["provenance"].update(cpu="AMD EPYC", cpu_capability="AVX2", torch_threads=1)  # whatever ran it
    other = json.loads(json.dumps(committed))
    other["provenance"].update(cpu="Intel Xeon", cpu_capability="DEFAULT", torch_threads=2)
    other["batch_size"] = 8
    other["rows"][0]["mIoU"] += 1.25
    other["scores"]["clean"] -= 0.002
    paths = []
    for name, data in (("a.json", committed), ("b.json", other)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    tool = load_tool("run_demo")
    result = tool.main(["--spread", *map(str, paths), "--work-dir", str(tmp_path / "spread")])
    page = (tmp_path / "spread/demo_spread.md").read_text()
    first = committed["rows"][0]
    assert "| cell | AMD EPYC, AVX2, 1 thread, batch 1 | Intel Xeon, DEFAULT, 2 threads, batch 8 | range |" in page
    assert (f"| {first['attack']} / {first['defense']} | {first['mIoU']:.2f} | {first['mIoU'] + 1.25:.2f} | 1.25 |"
            in page)
    clean = committed["scores"]["clean"]
    assert f"| score clean | {clean:.3f} | {clean - 0.002:.3f} | 0.002 |" in page
    second = committed["rows"][1]
    assert f"| {second['attack']} / {second['defense']} | {second['mIoU']:.2f} | {second['mIoU']:.2f} | 0.00 |" in page
    assert [r["provenance"]["cpu"] for r in result["runs"]] == ["AMD EPYC", "Intel Xeon"]
    assert_rerenders(tool, tmp_path / "spread/demo_spread.json")
    del other["rows"][-1]
    paths[1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="not of one grid"):
        tool.main(["--spread", *map(str, paths), "--work-dir", str(tmp_path / "bad")])
    paths[1].write_text("{}")
    with pytest.raises(SystemExit, match=r"b.json is not a run_demo result \(KeyError"):
        tool.main(["--spread", *map(str, paths), "--work-dir", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="at least two"):
        tool.main(["--spread", str(paths[0]), "--work-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_adversarial_training_runs_in_two_processes_with_the_pytorch_launcher(tmp_path):
    """`torchrun --nproc_per_node 2 tools/train.py ADV_CONFIG --launcher pytorch` (gloo on CPU) trains: each
    process attacks its own shard inside the DistributedDataParallel forward, and the weights it saves differ
    from those of the same two-process run with a zero budget (standard training)."""
    import os
    import socket
    import subprocess
    import sys

    import torch

    from equi_ext.data.synthetic import generate_dataset

    root = tmp_path / "shapes"
    generate_dataset(root, seed=3, image_size=128, num_train=8, num_val=2)
    adversarial = DEMO_CONFIG.with_name("deeplabv3_r18c16-d8_1xb8-adv_synthetic-128x128.py")
    options = ["--cfg-options", f"train_dataloader.dataset.data_root={root}",
               f"val_dataloader.dataset.data_root={root}", "train_dataloader.num_workers=0",
               "train_dataloader.persistent_workers=False", "train_dataloader.batch_size=2",
               "train_cfg.max_iters=2", "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    weights = {}
    for name, extra in (("adversarial", []), ("standard", ["model.train_cfg.adversarial.attack.eps=0"])):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                              str(port), str(REPO / "tools/train.py"), str(adversarial), "--launcher", "pytorch",
                              "--work-dir", str(tmp_path / name), *options, *extra],
                             capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        weights[name] = torch.load(tmp_path / name / "iter_2.pth", map_location="cpu", weights_only=False)["state_dict"]
    changed = [k for k in weights["standard"] if not torch.equal(weights["standard"][k], weights["adversarial"][k])]
    assert any("conv" in k for k in changed)


BENCHMARKS = {  # tool -> (module, entry point, the other settings it requires)
    "benchmark_robustness": ("robustness", "benchmark_robustness", dict(
        defense_names=["vanilla"], attack_names=["clean"], seeds=[0], num_images=1, steps=1, bpda_steps=1,
        eot_samples=1, lambdas=[1.0])),
    "standard_evaluation": ("standard", "standard_evaluation", {}),
    "sanity_checks": ("sanity_checks", "sanity_checks", {}),
    "corruption_benchmark": ("corruption", "corruption_benchmark", {}),
    "tune_defense": ("tuning", "tune_defense", {}),
}


@pytest.mark.parametrize("tool", list(BENCHMARKS))
def test_every_benchmark_takes_the_framework_by_name(tool, tmp_path, monkeypatch):
    """Each benchmark names its framework (``framework='mmseg' | 'detectron2'``, ``--framework`` or the shorthand
    ``--detectron2`` in its tool) and refuses an unknown one before anything is built or written."""
    import importlib

    module_name, entry, required = BENCHMARKS[tool]
    module = importlib.import_module(f"equi_ext.evaluation.{module_name}")
    with pytest.raises(SettingsError, match=r"unknown framework 'detectron'; valid: mmseg, detectron2"):
        getattr(module, entry)(framework="detectron", work_dir=tmp_path / "out", **required)
    assert not list(tmp_path.iterdir())

    loaded = load_tool(tool)
    seen = []
    monkeypatch.setattr(loaded, entry, lambda **kwargs: seen.append(kwargs["framework"]) or {})
    for argv in ([], ["--detectron2"], ["--framework", "detectron2"], ["--framework", "mmseg"]):
        loaded.main([*argv, "--work-dir", str(tmp_path / "tool")])
    assert seen == ["mmseg", "detectron2", "detectron2", "mmseg"]
    with pytest.raises(SystemExit):
        loaded.main(["--framework", "yolo"])
