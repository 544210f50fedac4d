"""The corruption benchmark (P, mPC, rPC): images corrupted as loaded, seeded by file name, the aggregation, the
tool end to end on the demo DeepLabV3."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from equi_ext.core.seeding import file_seed
from equi_ext.data.corruptions import corrupt
from equi_ext.evaluation.corruption import corruption_summary
from equi_ext.evaluation.demo import build_demo_runner
from equi_ext.mmseg.evaluation import corrupted_loading

from .conftest import load_tool


def test_mpc_and_rpc_follow_michaelis_et_al_on_a_hand_computed_table():
    clean = {"vanilla": 50.0, "defended": 40.0, "broken": 0.0}
    table = {"fog": {"1": {"vanilla": 40.0, "defended": 30.0, "broken": 0.0},
                     "3": {"vanilla": 20.0, "defended": 30.0, "broken": 0.0}},
             "snow": {"1": {"vanilla": 30.0, "defended": 20.0, "broken": 0.0},
                      "3": {"vanilla": 10.0, "defended": 40.0, "broken": 0.0}}}
    summary = corruption_summary(clean, table)
    assert summary["vanilla"] == {"P": 50.0, "mPC": 25.0, "rPC": 0.5}
    assert summary["defended"] == {"P": 40.0, "mPC": 30.0, "rPC": 0.75}
    assert summary["broken"]["mPC"] == 0.0 and math.isnan(summary["broken"]["rPC"])
    # mPC averages every (corruption, severity) alike: one corruption with more severities weighs more
    uneven = corruption_summary({"m": 10.0}, {"a": {"1": {"m": 6.0}}, "b": {"1": {"m": 2.0}, "2": {"m": 4.0}}})
    assert uneven["m"]["mPC"] == pytest.approx((6.0 + 3.0) / 2)


def test_images_are_corrupted_as_loaded_before_normalisation_seeded_by_file_name(synthetic_val_root, tmp_path):
    runner = build_demo_runner(synthetic_val_root, 1, tmp_path / "run")
    dataset = runner.test_loop.dataloader.dataset
    clean = dataset[0]["inputs"].numpy()
    path = dataset[0]["data_samples"].img_path
    raw = np.asarray(Image.open(path).convert("RGB"))
    with corrupted_loading(runner, dict(corruption="fog", severity=3)):
        sample = dataset[0]
        names = [type(t).__name__ for t in dataset.pipeline.transforms]
        assert names[names.index("LoadImageFromFile") + 1] == "ImageCorruption"
        again = dataset[0]["inputs"].numpy()
    # the packed uint8 image (what the data preprocessor normalises) is the file's image, corrupted with the
    # seed of its name: the test pipeline's Resize keeps these 128×128 images as they are
    expected = corrupt(raw, "fog", 3, file_seed(path))
    assert np.array_equal(sample["inputs"].numpy().transpose(1, 2, 0)[..., ::-1], expected)
    assert np.array_equal(again, sample["inputs"].numpy())
    assert not np.array_equal(clean, again)
    assert np.array_equal(dataset[0]["inputs"].numpy(), clean), "the block left the pipeline corrupting"
    assert "ImageCorruption" not in [type(t).__name__ for t in dataset.pipeline.transforms]


@pytest.mark.parametrize("argv, message", [
    (["--corruptions", "fogg"], "unknown corruption\\(s\\) \\['fogg'\\]; valid names: gaussian_noise"),
    (["--severities", "0,6"], "severities must be among 1, 2, 3, 4, 5; got \\[0, 6\\]"),
    (["--severities", "3,x"], "--severities takes integers"),
    (["--severities", "3,3"], "each severity once, please; got \\[3, 3\\]"),
    (["--corruptions", "fog,snow,fog"], "each corruption once"),
    (["--corruptions", ""], "name at least one corruption: gaussian_noise, shot_noise"),
    (["--num-tune-images", "1"], "need num_images >= 1 and num_tune_images >= 2"),
    (["--clean-percentile", "101"], "clean_percentile must be in \\[0, 100\\]"),
    (["--checkpoint", "/nonexistent.pth"], "checkpoint /nonexistent.pth does not exist"),
])
def test_bad_settings_fail_before_anything_runs(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_tool("corruption_benchmark").main([*argv, "--work-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_benchmark_end_to_end_resumes_and_rerenders(synthetic_val_root, tmp_path, assert_rerenders):
    tool = load_tool("corruption_benchmark")
    argv = ["--num-images", "2", "--num-tune-images", "3", "--clean-percentile", "40", "--corruptions", "fog",
            "--severities", "2,5",
            "--data-root", str(synthetic_val_root), "--tune-root", str(synthetic_val_root),
            "--work-dir", str(tmp_path / "work")]
    data = tool.main(argv)
    work = tmp_path / "work"
    assert list(data["columns"]) == ["vanilla", "equivariance", "detect-then-defend"]
    assert set(data["table"]) == {"fog"} and set(data["table"]["fog"]) == {"2", "5"}
    for column in data["columns"]:
        cells = [data["table"]["fog"][s][column] for s in ("2", "5")]
        assert data["summary"][column]["mPC"] == pytest.approx(sum(cells) / 2)
        assert data["summary"][column]["rPC"] == pytest.approx(data["summary"][column]["mPC"] / data["clean"][column])
    # the threshold is the 40th percentile of detect-then-defend's clean scores on the tuning images
    tune_scores = [json.loads(p.read_text())["score"] for p in sorted((work / "cells/tune").glob("*.json"))]
    assert len(tune_scores) == 3 and data["threshold"] == pytest.approx(float(np.percentile(tune_scores, 40)))
    def records(column, label):
        return [json.loads(p.read_text()) for p in sorted((work / "cells" / column / label).glob("*.png.json"))]

    all_flags = []
    for label, share in (("clean", data["flagged"]["clean"]), ("fog_2", data["flagged"]["fog"]["2"]),
                         ("fog_5", data["flagged"]["fog"]["5"])):
        # flagged = the share of inputs the detector scores below the threshold; detect-then-defend predicts
        # those as the equivariance defense does and the others as the undefended model
        flags = [r["score"] < data["threshold"] for r in records("detector", label)]
        assert len(flags) == 2 and share == np.mean(flags)
        all_flags += flags
        for flag, dtd, equi, vanilla in zip(flags, records("detect-then-defend", label), records("equivariance", label),
                                            records("vanilla", label)):
            assert dtd["iou"] == (equi if flag else vanilla)["iou"], (label, flag)
    assert any(all_flags) and not all(all_flags), "both branches of detect-then-defend are checked"
    assert [r["iou"] for r in records("vanilla", "clean")] != [r["iou"] for r in records("vanilla", "fog_5")]
    with open(work / "corruption_mmseg.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * 3  # (clean + 2 severities) × 3 columns
    assert_rerenders(tool, work / "corruption_mmseg.json", plots=["corruption_mmseg.png"])
    # a resumed run runs no image again and reports the same numbers
    resumed = tool.main([*argv, "--resume"])
    assert resumed["summary"] == data["summary"] and resumed["threshold"] == data["threshold"]
    assert resumed["seconds"] == data["seconds"] and all(s > 0 for s in data["seconds"].values())
    # a killed run resumes inside a corrupted cell: the missing image runs corrupted, the numbers do not move
    (work / "cells/equivariance/fog_5" / "00001.png.json").unlink()
    again = tool.main([*argv, "--resume"])
    assert again["table"] == data["table"] and again["summary"] == data["summary"]
    with pytest.raises(SystemExit, match="holds records made with other settings \\(clean_percentile: 40.0 then, "
                                         "50.0 now\\)"):
        tool.main([*argv, "--resume", "--clean-percentile", "50"])
