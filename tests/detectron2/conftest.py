"""Fixtures for the Detectron2 path: a COCO-format fixture on disk and a small Mask R-CNN config."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2 import load_config, register_synthetic_shapes

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128.yaml"
DEMO_EQUI_YAML = REPO / "configs/demo/mask_rcnn_R18_FPN_synthetic-128x128_equi.yaml"
DEMO_WEIGHTS = REPO / "checkpoints/mask_rcnn_R18_FPN_synthetic-128x128.pth"
FIXTURE_SIZE = 64
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def test_tool():
    spec = importlib.util.spec_from_file_location("equi_tools_test_d2", REPO / "tools" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def coco_fixture(tmp_path_factory) -> tuple[Path, str]:
    """A 3-image COCO instances val split (JSON + PNGs) written by the data generator; (root, dataset name)."""
    root = tmp_path_factory.mktemp("coco") / "shapes"
    generate_dataset(root, seed=3, image_size=FIXTURE_SIZE, num_train=0, num_val=3)
    prefix = f"equi_d2_fixture_{next(_prefixes)}"
    (name,) = register_synthetic_shapes(root, prefix=prefix)
    return root, name


def small_cfg(dataset: str, *opts: str):
    """The demo architecture at the fixture's image size, evaluating ``dataset``."""
    return load_config(DEMO_EQUI_YAML, [
        "MODEL.WEIGHTS", "", "EQUI.SYNTHETIC_ROOT", "", "DATASETS.TEST", f"('{dataset}',)",
        "INPUT.MIN_SIZE_TEST", str(FIXTURE_SIZE), "INPUT.MAX_SIZE_TEST", str(FIXTURE_SIZE), *opts])


def build_small_model(dataset: str, *opts: str):
    torch.manual_seed(0)
    cfg = small_cfg(dataset, *opts)
    model = build_model(cfg)
    model.eval()
    return cfg, model
