"""Corrupted loading for Detectron2 (before the test resize, seeded by file name) and the corruption benchmark run
end to end on the demo Mask R-CNN."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from equi_ext.core.seeding import file_seed
from equi_ext.data.corruptions import corrupt
from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2.evaluation import build_annotated_test_loader

from .conftest import REPO, small_cfg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
NOISE = dict(corruption="gaussian_noise", severity=2)


def first(loader) -> dict:
    (item,) = next(iter(loader))
    return item


def test_images_are_corrupted_as_loaded_seeded_by_file_name_and_annotations_kept(coco_fixture, tmp_path):
    _, dataset = coco_fixture
    cfg = small_cfg(dataset, "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96")  # resized 64 → 96 px
    record = dict(DatasetCatalog.get(dataset)[0])
    corrupted = first(build_annotated_test_loader(cfg, [record], corruption=NOISE))
    assert corrupted["image"].shape[-2:] == (96, 96)
    # the same record read from a file that already holds the corrupted image, through the plain mapper
    rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    (tmp_path / "holds_corrupted").mkdir()
    stored = tmp_path / "holds_corrupted" / "image.png"
    Image.fromarray(corrupt(rgb, NOISE["corruption"], NOISE["severity"], file_seed(record["file_name"]))).save(stored)
    plain = first(build_annotated_test_loader(cfg, [dict(record, file_name=str(stored))]))
    assert torch.equal(corrupted["image"], plain["image"])
    assert torch.equal(corrupted["instances"].gt_boxes.tensor, plain["instances"].gt_boxes.tensor)
    assert torch.equal(corrupted["instances"].gt_masks.tensor, plain["instances"].gt_masks.tensor)
    clean = first(build_annotated_test_loader(cfg, [record]))
    assert not torch.equal(clean["image"], corrupted["image"])
    # the seed is the file name's, not the folder's
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / record["file_name"].rsplit("/", 1)[-1]
    shutil.copy(record["file_name"], moved)
    again = first(build_annotated_test_loader(cfg, [dict(record, file_name=str(moved))], corruption=NOISE))
    assert torch.equal(again["image"], corrupted["image"])


def test_a_bad_corruption_is_refused_when_the_loader_is_built(coco_fixture):
    _, dataset = coco_fixture
    with pytest.raises(ValueError, match=r"severities must be among 1, 2, 3, 4, 5; got \[7\]"):
        build_annotated_test_loader(small_cfg(dataset), dataset, 1, corruption=dict(corruption="fog", severity=7))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_benchmark_runs_on_the_demo_mask_rcnn(tmp_path, assert_rerenders):
    val, tune = tmp_path / "val", tmp_path / "tune"
    generate_dataset(val, seed=0, image_size=128, num_train=0, num_val=1)
    generate_dataset(tune, seed=1, image_size=128, num_train=0, num_val=2)
    spec = importlib.util.spec_from_file_location("equi_tools_d2_corruption", REPO / "tools/corruption_benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    data = tool.main(["--detectron2", "--num-images", "1", "--num-tune-images", "2", "--corruptions", "fog",
                      "--severities", "5", "--data-root", str(val), "--tune-root", str(tune),
                      "--work-dir", str(tmp_path / "work")])
    assert data["framework"] == "detectron2" and data["metric"] == "segm_AP"
    for column in data["columns"]:
        assert data["summary"][column]["mPC"] == data["table"]["fog"]["5"][column]
        assert 0 <= data["clean"][column] <= 100
    assert data["columns"]["detect-then-defend"]["defense"] == data["columns"]["equivariance"]
    tune_scores = [json.loads(p.read_text())["score"] for p in (tmp_path / "work/cells/tune").glob("*.png.json")]
    assert len(tune_scores) == 2 and data["threshold"] == pytest.approx(float(np.percentile(tune_scores, 5)))

    def record(column, label):
        (path,) = (tmp_path / "work/cells" / column / label).glob("*.png.json")
        return json.loads(path.read_text())

    for label, share in (("clean", data["flagged"]["clean"]), ("fog_5", data["flagged"]["fog"]["5"])):
        flag = record("detector", label)["score"] < data["threshold"]
        assert share == float(flag)  # detect-then-defend predicts as the defense where it flags, else as vanilla
        assert (record("detect-then-defend", label)["prediction"]
                == record("equivariance" if flag else "vanilla", label)["prediction"])
    assert_rerenders(tool, tmp_path / "work/corruption_detectron2.json", plots=["corruption_detectron2.png"])
