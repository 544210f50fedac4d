"""detectron2 as tools/install.sh builds it from PyPI's pb1-detectron2 sdist (tools/patch_detectron2_sdist.py).

Each test checks one patch. A detectron2 with its compiled ops (built elsewhere) needs no stand-in: those
tests are skipped there, the rest hold for any detectron2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2 import _C, model_zoo

built_from_the_sdist = pytest.mark.skipif(not _C.__file__.endswith(".py"),
                                          reason="this detectron2 has its compiled ops; no stand-in to test")


@built_from_the_sdist
def test_stand_in_ops_fail_naming_the_op_and_the_way_around():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    with pytest.raises(NotImplementedError, match="pb1-detectron2.*'box_iou_rotated'"):
        pairwise_iou_rotated(boxes, boxes)
    with pytest.raises(NotImplementedError, match="'COCOevalAccumulate'.*use_fast_impl=False"):
        _C.COCOevalAccumulate({}, [])
    assert not hasattr(_C, "__wrapped__")  # dunder look-ups stay AttributeErrors (copy, pickle, inspect)


def test_collect_env_runs():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


def test_model_zoo_configs_ship_with_the_package():
    for name in ("Base-RCNN-FPN.yaml", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"):
        assert Path(model_zoo.get_config_file(name)).is_file()


def test_pillow_10_and_numpy_2_spots_work():
    from detectron2.data.transforms import ExtentTransform
    from detectron2.structures.masks import polygons_to_bitmask

    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    assert ExtentTransform((0, 0, 10, 10), (5, 5)).apply_image(image).shape == (5, 5, 3)  # was Image.LINEAR
    empty = polygons_to_bitmask([], 4, 6)  # was np.bool
    assert empty.dtype == bool and empty.shape == (4, 6) and not empty.any()
