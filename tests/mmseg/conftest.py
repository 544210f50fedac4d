"""Fixtures for the MMSeg path: datasets written under tmp dirs, and tools/test.py as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equi_ext.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs/demo/deeplabv3_r18c16-d8_1xb8-3k_synthetic-128x128.py"
DEMO_CHECKPOINT = REPO / "checkpoints/deeplabv3_r18c16-d8_synthetic-128x128.pth"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"equi_tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def test_tool():
    return load_tool("test")


@pytest.fixture(scope="session")
def synthetic_val_root(tmp_path_factory) -> Path:
    """The demo benchmark's val split (seed 0, 128×128), as tools/generate_data.py writes it."""
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    generate_dataset(root, seed=0, image_size=128, num_train=0, num_val=100)
    return root


def write_voc_fixture(root: Path, n: int = 3, size: int = 64) -> Path:
    """A tiny PASCAL VOC 2012 tree: JPEGImages, palette-PNG SegmentationClass, ImageSets."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    palette = rng.integers(0, 255, size=(256, 3), dtype=np.uint8)
    names = []
    for i in range(n):
        name = f"2007_{i:06d}"
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(8, size - 24, size=2)
        label[y:y + 16, x:x + 16] = [1, 15, 7][i % 3]
        label[y - 1, x:x + 16] = 255  # VOC's 'void' border
        image = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        image[label > 0] = [200, 40, 40]
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette.flatten().tolist())
        png.save(root / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")
    return root
