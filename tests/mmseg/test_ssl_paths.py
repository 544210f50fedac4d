"""The SSL baselines through MMSeg: equi_ext.evaluation.ssl_heads (tools/train_ssl_head.py) on the demo model, then
``model.test_cfg.defense=dict(type='rotation'|'contrastive', head=...)`` in tools/test.py."""

from __future__ import annotations

import pytest

from equi_ext.core.ssl import load_head
from equi_ext.data.synthetic import generate_dataset
from equi_ext.evaluation.ssl_heads import train_ssl_head

from .conftest import DEMO_CHECKPOINT, DEMO_CONFIG, load_tool


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl_mmseg") / "shapes"
    generate_dataset(root, seed=5, image_size=128, num_train=6, num_val=1)
    return root


@pytest.mark.parametrize("kind", ["rotation", "contrastive"])
def test_train_tool_writes_a_head_that_tools_test_uses_by_name(kind, tiny_root, tmp_path, test_tool, ssl_defense_calls):
    head_path = tmp_path / f"{kind}.pth"
    metrics = train_ssl_head(config=DEMO_CONFIG, checkpoint=DEMO_CHECKPOINT, kind=kind, out=head_path, iters=5,
                             data_root=tiny_root, work_dir=tmp_path / "log")
    assert metrics["train_images"] + metrics["held_out_images"] == 6 and 0 <= metrics["value"] <= 1
    head = load_head(head_path, kind=kind)
    assert head.in_channels == [128] and "feature_layer=backbone" in head.feature_spec  # ResNetV1c-18/4, stage 4

    calls = ssl_defense_calls
    rows = test_tool.main([
        str(DEMO_CONFIG), str(DEMO_CHECKPOINT), "--work-dir", str(tmp_path / "test"), "--scenarios", "clean_defended",
        "--cfg-options", f"test_dataloader.dataset.data_root={tiny_root}", "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False", f"model.test_cfg.defense.type={kind}",
        f"model.test_cfg.defense.head={head_path}", "model.test_cfg.defense.steps=2",
        "model.test_cfg.defense.eps_v=3"])
    assert [r["scenario"] for r in rows] == ["clean_defended"] and rows[0]["images"] == 1
    ((name, moved, low, high),) = calls
    assert name == f"{kind.capitalize()}Defense" and 0 < moved <= 3 + 1e-3 and low >= 0 and high <= 255


def test_missing_or_mismatched_heads_are_refused_by_name(tiny_root, tmp_path, test_tool):
    from equi_ext.core.ssl import SSLHead, save_head

    with pytest.raises(FileNotFoundError, match=r"SSL head file '.*nope.pth' does not exist"):  # before any run
        test_tool.main([str(DEMO_CONFIG), "--cfg-options", "model.test_cfg.defense.type=contrastive",
                        f"model.test_cfg.defense.head={tmp_path / 'nope.pth'}"])
    head = SSLHead("rotation", [256, 256, 256], feature_spec="detectron2:fpn")
    save_head(head, tmp_path / "d2.pth")
    with pytest.raises(ValueError, match=r"trained on 3 feature map\(s\) with channels \[256, 256, 256\] "
                                         r"\(detectron2:fpn\), but the model's features have 1 map\(s\) with "
                                         r"channels \[128\]"):
        test_tool.main([
            str(DEMO_CONFIG), str(DEMO_CHECKPOINT), "--work-dir", str(tmp_path / "test"), "--cfg-options",
            f"test_dataloader.dataset.data_root={tiny_root}", "test_dataloader.num_workers=0",
            "test_dataloader.persistent_workers=False", "model.test_cfg.defense.type=rotation",
            f"model.test_cfg.defense.head={tmp_path / 'd2.pth'}", "model.test_cfg.defense.steps=1"])


@pytest.mark.parametrize("args, message", [
    (["nope.py", str(DEMO_CHECKPOINT)], "error: config file 'nope.py' does not exist"),
    ([str(DEMO_CONFIG), "nope.pth"], "error: checkpoint 'nope.pth' does not exist"),
    ([str(DEMO_CONFIG), str(DEMO_CHECKPOINT), "--num-images", "3"], "error: num_images must be >= 4"),
])
def test_train_tool_refuses_bad_arguments_before_building_a_model(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_tool("train_ssl_head").main([*args, "--kind", "rotation", "--out", str(tmp_path / "head.pth")])
    assert not list(tmp_path.iterdir())
