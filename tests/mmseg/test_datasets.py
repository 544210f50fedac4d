"""SyntheticShapesDataset loads the generator's output through a real MMSeg pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import equi_ext.mmseg  # noqa: F401  (registers SyntheticShapesDataset)
from equi_ext.data.synthetic import CLASSES, PALETTE, generate_dataset, split_paths
from equi_ext.mmseg.datasets import SyntheticShapesDataset

SIZE = 64
PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    root = tmp_path_factory.mktemp("mmseg") / "shapes"
    generate_dataset(root, seed=1, image_size=SIZE, num_train=6, num_val=3)
    return root


def _build(root, split):
    from mmseg.registry import DATASETS

    return DATASETS.build(
        dict(
            type="SyntheticShapesDataset",
            data_root=str(root),
            data_prefix=dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}"),
            pipeline=PIPELINE,
        )
    )


def test_metainfo_and_defaults(data_root):
    ds = _build(data_root, "val")
    assert isinstance(ds, SyntheticShapesDataset)
    assert tuple(ds.metainfo["classes"]) == CLASSES
    assert [list(c) for c in ds.metainfo["palette"]] == PALETTE
    assert ds.img_suffix == ds.seg_map_suffix == ".png"
    assert ds.reduce_zero_label is False


@pytest.mark.parametrize("split, n", [("train", 6), ("val", 3)])
def test_samples_match_files(data_root, split, n):
    ds = _build(data_root, split)
    assert len(ds) == n
    paths = split_paths(data_root, split)
    for index in (0, n - 1):
        sample = ds[index]
        name = f"{index:05d}.png"
        assert sample["data_samples"].img_path.endswith(name)
        inputs = sample["inputs"].numpy()
        assert inputs.shape == (3, SIZE, SIZE)
        rgb = np.asarray(Image.open(paths["img_dir"] / name))
        # MMSeg loads BGR: channel 0 is blue.
        np.testing.assert_array_equal(inputs[::-1].transpose(1, 2, 0), rgb)
        gt = sample["data_samples"].gt_sem_seg.data.numpy()
        assert gt.shape == (1, SIZE, SIZE)
        np.testing.assert_array_equal(gt[0], np.asarray(Image.open(paths["ann_dir"] / name)))
        assert gt.max() < len(CLASSES) and gt.max() > 0
