"""register_synthetic_shapes: catalog entries, records and the DatasetMapper agree with the label maps."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from PIL import Image

from equi_ext.data.synthetic import CLASSES, generate_dataset, split_paths
from equi_ext.detectron2 import register_synthetic_shapes

SIZE = 64
_ids = itertools.count()

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _prefix() -> str:
    # Detectron2's catalogs are process-global: every test gets its own names.
    return f"equi_test_shapes_{next(_ids)}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2") / "shapes"
    generate_dataset(root, seed=2, image_size=SIZE, num_train=6, num_val=2)
    return root


def _mapper_cfg():
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = SIZE
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def test_registration_and_metadata(data_root):
    prefix = _prefix()
    names = register_synthetic_shapes(data_root, prefix=prefix)
    assert names == [f"{prefix}_train", f"{prefix}_val"]
    for name, split in zip(names, ("train", "val")):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASSES[1:])
        assert meta.evaluator_type == "coco"
        assert meta.json_file == str(split_paths(data_root.resolve(), split)["coco_json"])
    records = DatasetCatalog.get(names[0])
    assert len(records) == 6
    assert all(r["annotations"] and (r["height"], r["width"]) == (SIZE, SIZE) for r in records)
    assert {a["category_id"] for r in records for a in r["annotations"]} <= {0, 1, 2}
    assert MetadataCatalog.get(names[0]).thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}


def test_mapper_masks_match_semantic_map(data_root):
    name = register_synthetic_shapes(data_root, prefix=_prefix())[0]
    mapper = DatasetMapper(_mapper_cfg(), is_train=True)
    for record in DatasetCatalog.get(name)[:3]:
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, SIZE, SIZE)
        instances = out["instances"]
        masks = instances.gt_masks.tensor.numpy()
        classes = instances.gt_classes.numpy()
        assert len(instances) == len(record["annotations"]) > 0
        semantic = np.asarray(Image.open(record["file_name"].replace("img_dir", "ann_dir")))
        for contiguous_id in range(len(CLASSES) - 1):
            union = masks[classes == contiguous_id].sum(axis=0)
            assert union.max(initial=0) <= 1
            np.testing.assert_array_equal(union.astype(bool), semantic == contiguous_id + 1)
        for mask, box in zip(masks, instances.gt_boxes.tensor.numpy()):
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_reregistering_same_files_is_a_noop(data_root, tmp_path):
    prefix = _prefix()
    first = register_synthetic_shapes(data_root, prefix=prefix)
    assert register_synthetic_shapes(str(data_root), prefix=prefix) == first
    other = tmp_path / "other"
    shutil.copytree(data_root, other)
    with pytest.raises(ValueError, match=f"{prefix}_train.*already registered"):
        register_synthetic_shapes(other, prefix=prefix)


def test_only_present_splits_are_registered(tmp_path):
    generate_dataset(tmp_path / "t", image_size=32, num_train=2, num_val=0)
    prefix = _prefix()
    assert register_synthetic_shapes(tmp_path / "t", prefix=prefix) == [f"{prefix}_train"]
    assert f"{prefix}_val" not in DatasetCatalog.list()


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic-shapes split"):
        register_synthetic_shapes(tmp_path, prefix=_prefix())
    with pytest.raises(ValueError, match="prefix must be a non-empty str"):
        register_synthetic_shapes(tmp_path, prefix="")
    with pytest.raises(TypeError, match="prefix must be a str"):
        register_synthetic_shapes(tmp_path, prefix=3)
