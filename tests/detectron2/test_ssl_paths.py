"""The SSL baselines through Detectron2: equi_ext.evaluation.ssl_heads (tools/train_ssl_head.py) on the demo
Mask R-CNN's FPN maps, then ``EQUI.DEFENSE rotation|contrastive`` with ``EQUI.SSL_HEAD`` in a COCO evaluation."""

from __future__ import annotations

import pytest

from equi_ext.core.ssl import load_head
from equi_ext.data.synthetic import generate_dataset
from equi_ext.detectron2.config import equi_settings
from equi_ext.detectron2.evaluation import evaluate_scenarios
from equi_ext.evaluation.ssl_heads import train_ssl_head

from .conftest import DEMO_WEIGHTS, DEMO_YAML, FIXTURE_SIZE, small_cfg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.mark.parametrize("kind", ["rotation", "contrastive"])
def test_train_tool_and_eval_by_name(kind, coco_fixture, tmp_path, ssl_defense_calls):
    root = tmp_path / "shapes"
    generate_dataset(root, seed=6, image_size=FIXTURE_SIZE, num_train=6, num_val=1)
    head_path = tmp_path / f"{kind}.pth"
    size = str(FIXTURE_SIZE)
    metrics = train_ssl_head(
        config=DEMO_YAML, checkpoint=DEMO_WEIGHTS, kind=kind, out=head_path, iters=5, data_root=root,
        opts=["DATASETS.TRAIN", f"('ssl_{kind}_train',)", "DATASETS.TEST", f"('ssl_{kind}_val',)", "EQUI.FPN_LEVELS",
              "['p2','p3','p4']", "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size])
    assert metrics["train_images"] + metrics["held_out_images"] == 6
    head = load_head(head_path, kind=kind)
    assert head.in_channels == [64, 64, 64] and "fpn=['p2', 'p3', 'p4']" in head.feature_spec

    _, dataset = coco_fixture
    # The rotation defense has its own views (quarter turns): the demo yaml's transforms are unset for it.
    views = ["EQUI.TRANSFORMS", "None"] if kind == "rotation" else []
    cfg = small_cfg(dataset, "EQUI.DEFENSE", kind, "EQUI.SSL_HEAD", str(head_path), "EQUI.DEFENSE_STEPS", "2",
                    "EQUI.EPS_V", "3.0", "EQUI.ATTACK", "", *views)
    assert equi_settings(cfg)["defense"]["head"] == str(head_path)
    calls = ssl_defense_calls
    rows = evaluate_scenarios(cfg, str(DEMO_WEIGHTS), scenarios=["clean_defended"], num_images=1,
                              output_dir=str(tmp_path / "eval"))
    assert rows[0]["images"] == 1 and 0 <= rows[0]["segm_AP"] <= 100
    ((name, moved, low, high),) = calls
    assert name == f"{kind.capitalize()}Defense" and 0 < moved <= 3 + 1e-3 and low >= 0 and high <= 255


def test_missing_head_or_other_levels_fail_clearly(coco_fixture, tmp_path):
    from detectron2.modeling import build_model

    from equi_ext.core.ssl import SSLHead, save_head

    _, dataset = coco_fixture
    rotation_defense = ["EQUI.DEFENSE", "rotation", "EQUI.TRANSFORMS", "None"]  # its views are quarter turns
    with pytest.raises(ValueError, match="needs head=PATH.*EQUI.SSL_HEAD"):
        build_model(small_cfg(dataset, *rotation_defense))
    with pytest.raises(FileNotFoundError, match="SSL head file '.*nope.pth' does not exist"):
        build_model(small_cfg(dataset, *rotation_defense, "EQUI.SSL_HEAD", str(tmp_path / "nope.pth")))
    save_head(SSLHead("rotation", [64] * 5, feature_spec="detectron2:fpn=all"), tmp_path / "all.pth")
    cfg = small_cfg(dataset, *rotation_defense, "EQUI.SSL_HEAD", str(tmp_path / "all.pth"),
                    "EQUI.DEFENSE_STEPS", "1", "EQUI.ATTACK", "")
    with pytest.raises(ValueError, match=r"channels \[64, 64, 64, 64, 64\] \(detectron2:fpn=all\), but the "
                                         r"model's features have 3 map\(s\) with channels \[64, 64, 64\]"):
        evaluate_scenarios(cfg, str(DEMO_WEIGHTS), scenarios=["clean_defended"], num_images=1,
                           output_dir=str(tmp_path / "eval"))
