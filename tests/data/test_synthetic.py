"""Tests for the framework-free synthetic-shapes generator.

The agreement tests compare independent views of the same labels (semantic
PNG, COCO RLE, replayed full shape masks) so that a mismatch in any one of
them fails.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from equi_ext.data import synthetic
from equi_ext.data.synthetic import (
    CLASSES,
    PALETTE,
    SPLITS,
    generate_dataset,
    render_scene,
    split_paths,
    split_rng,
)

# pycocotools' own numpy-2 deprecation noise, not something these tests control.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = Path(__file__).resolve().parents[2]
SIZE, N_TRAIN, N_VAL, SEED = 64, 6, 4, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "data"
    calls = []
    summary = generate_dataset(
        root, seed=SEED, image_size=SIZE, num_train=N_TRAIN, num_val=N_VAL, progress=calls.append
    )
    return root, summary, calls


def _load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_constants_are_consistent():
    assert CLASSES == ("background", "circle", "square", "triangle")
    assert len(PALETTE) == len(CLASSES)
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in PALETTE)


def test_render_scene_outputs_and_exact_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, semantic, instances = render_scene(rng, SIZE)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert semantic.shape == (SIZE, SIZE) and semantic.dtype == np.uint8
        assert 1 <= len(instances) <= 5
        covered = np.zeros((SIZE, SIZE), dtype=int)
        for k, inst in enumerate(instances):
            mask, full = inst["mask"], inst["full_mask"]
            assert inst["area"] == mask.sum() >= synthetic.DEFAULT_MIN_AREA
            assert not (mask & ~full).any()
            # Visible = own shape minus every *later* shape (draw order = occlusion order).
            later = np.zeros_like(full)
            for other in instances[k + 1 :]:
                later |= other["full_mask"]
            np.testing.assert_array_equal(mask, full & ~later)
            if not (full & later).any():
                assert inst["area"] == full.sum()
            assert (semantic[mask] == inst["category_id"]).all()
            ys, xs = np.nonzero(mask)
            assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            covered += mask
        assert covered.max() <= 1
        np.testing.assert_array_equal(covered.astype(bool), semantic > 0)


def test_last_shape_is_unoccluded_and_masks_are_hard():
    image, semantic, instances = render_scene(np.random.default_rng(7), 128, max_shapes=3)
    last = instances[-1]
    np.testing.assert_array_equal(last["mask"], last["full_mask"])
    assert set(np.unique(semantic)) <= set(range(len(CLASSES)))


def test_render_scene_is_seeded():
    a = render_scene(np.random.default_rng(11), SIZE)
    b = render_scene(np.random.default_rng(11), SIZE)
    c = render_scene(np.random.default_rng(12), SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_colour_does_not_identify_class():
    rng = np.random.default_rng(5)
    colours = {c: [] for c in range(1, len(CLASSES))}
    for _ in range(60):
        for inst in render_scene(rng, 32)[2]:
            colours[inst["category_id"]].append(inst["color"])
    means = np.array([np.mean(colours[c], axis=0) for c in colours])
    assert all(len(v) > 20 for v in colours.values())
    # Uniform colours: per-class means all near 127.5, nothing separates classes.
    assert np.abs(means - 127.5).max() < 40


def test_layout_and_summary(dataset):
    root, summary, calls = dataset
    assert calls == [1] * (N_TRAIN + N_VAL)
    assert summary["root"] == str(root)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        paths = split_paths(root, split)
        assert summary["splits"][split]["coco_json"] == str(paths["coco_json"])
        names = [f"{i:05d}.png" for i in range(n)]
        assert sorted(p.name for p in paths["img_dir"].iterdir()) == names
        assert sorted(p.name for p in paths["ann_dir"].iterdir()) == names
        with Image.open(paths["img_dir"] / names[0]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE))
        coco = json.loads(paths["coco_json"].read_text())
        assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(CLASSES[1:])
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        assert [im["file_name"] for im in coco["images"]] == names
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        assert summary["splits"][split]["num_instances"] == len(coco["annotations"])
    meta = json.loads((root / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["palette"] == PALETTE
    assert (meta["seed"], meta["image_size"], meta["num_train"], meta["num_val"]) == (
        SEED,
        SIZE,
        N_TRAIN,
        N_VAL,
    )


@pytest.mark.parametrize("split", SPLITS)
def test_coco_agrees_with_semantic_maps(dataset, split):
    root = dataset[0]
    paths = split_paths(root, split)
    coco = json.loads(paths["coco_json"].read_text())
    rng = split_rng(SEED, split)  # replay the split to recover un-occluded masks
    for image_info in coco["images"]:
        semantic = _load_png(paths["ann_dir"] / image_info["file_name"])
        assert semantic.shape == (image_info["height"], image_info["width"])
        assert semantic.max() < len(CLASSES)
        replay_image, replay_semantic, replayed = render_scene(rng, SIZE)
        np.testing.assert_array_equal(replay_image, _load_png(paths["img_dir"] / image_info["file_name"]))
        np.testing.assert_array_equal(replay_semantic, semantic)
        anns = [a for a in coco["annotations"] if a["image_id"] == image_info["id"]]
        assert len(anns) == len(replayed)
        union = {c: np.zeros(semantic.shape, dtype=int) for c in range(1, len(CLASSES))}
        for k, (ann, inst) in enumerate(zip(anns, replayed)):
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            pixels = int(mask.sum())
            assert ann["iscrowd"] == 0
            assert ann["area"] == int(mask_utils.area(ann["segmentation"])) == pixels
            assert pixels == int((semantic[mask] == ann["category_id"]).sum())
            assert ann["bbox"] == [int(v) for v in mask_utils.toBbox(ann["segmentation"])]
            assert ann["category_id"] == inst["category_id"]
            np.testing.assert_array_equal(mask, inst["mask"])
            occluders = [o["full_mask"] for o in replayed[k + 1 :]]
            if not any((inst["full_mask"] & o).any() for o in occluders):
                assert pixels == int(inst["full_mask"].sum())
            union[ann["category_id"]] += mask
        for c, count in union.items():
            assert count.max() <= 1, "a pixel belongs to two annotations"
            np.testing.assert_array_equal(count.astype(bool), semantic == c)


def test_same_seed_gives_identical_bytes(tmp_path):
    kwargs = dict(seed=9, image_size=SIZE, num_train=3, num_val=2)
    generate_dataset(tmp_path / "a", **kwargs)
    generate_dataset(tmp_path / "b", **kwargs)
    generate_dataset(tmp_path / "c", **{**kwargs, "seed": 10})
    files_a, files_b, files_c = (_files(tmp_path / d) for d in "abc")
    assert len(files_a) == 3 * 2 + 2 * 2 + 2 + 1
    assert files_a == files_b
    assert files_a["img_dir/train/00000.png"] != files_c["img_dir/train/00000.png"]


def test_splits_use_independent_streams(tmp_path):
    generate_dataset(tmp_path / "a", seed=1, image_size=SIZE, num_train=1, num_val=2)
    generate_dataset(tmp_path / "b", seed=1, image_size=SIZE, num_train=3, num_val=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a["img_dir/val/00001.png"] == b["img_dir/val/00001.png"]
    assert a["annotations/instances_val.json"] == b["annotations/instances_val.json"]
    assert a["img_dir/train/00000.png"] != a["img_dir/val/00000.png"]


def test_zero_split_is_not_written(tmp_path):
    summary = generate_dataset(tmp_path / "d", image_size=32, num_train=2, num_val=0)
    assert list(summary["splits"]) == ["train"]
    assert not split_paths(tmp_path / "d", "val")["coco_json"].exists()


def test_overwrite(tmp_path):
    out = tmp_path / "o"
    generate_dataset(out, image_size=32, num_train=3, num_val=1)
    (out / "keep.txt").write_text("user file")
    with pytest.raises(ValueError, match="out_dir.*not empty.*overwrite=True"):
        generate_dataset(out, image_size=32, num_train=1, num_val=1)
    generate_dataset(out, image_size=32, num_train=1, num_val=1, overwrite=True)
    assert sorted(p.name for p in (out / "img_dir" / "train").iterdir()) == ["00000.png"]
    assert (out / "keep.txt").read_text() == "user file"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=31), r"image_size must be an int >= 32; got 31"),
        (dict(image_size=64.0), r"image_size .*got 64\.0"),
        (dict(image_size=True), r"image_size .*got True"),
        (dict(num_train=-1), r"num_train .*got -1"),
        (dict(num_val=-2), r"num_val .*got -2"),
        (dict(num_train=1.5), r"num_train .*got 1\.5"),
        (dict(num_train=0, num_val=0), r"zero images"),
        (dict(seed=-1), r"seed .*got -1"),
        (dict(seed="0"), r"seed .*got '0'"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", **{"num_train": 1, "num_val": 1, **kwargs})
    assert not (tmp_path / "x").exists()


def test_out_dir_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="out_dir must be a directory"):
        generate_dataset(tmp_path / "f", image_size=32, num_train=1, num_val=0)


def test_split_and_scene_validation():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\); got 'test'"):
        split_paths("root", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        split_rng(0, "test")
    with pytest.raises(ValueError, match="image_size must be an int >= 32; got 16"):
        render_scene(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match="max_shapes .*got 0"):
        render_scene(np.random.default_rng(0), 32, max_shapes=0)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        render_scene(0, 32)


def _load_cli():
    # In-process (not a subprocess): spares a ~3 s interpreter start per call.
    spec = importlib.util.spec_from_file_location("generate_data_cli", REPO / "tools" / "generate_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_defaults():
    args = _load_cli().parse_args([])
    assert (args.out, args.seed, args.size, args.num_train, args.num_val) == (
        "data/synthetic_shapes",
        0,
        128,
        300,
        100,
    )


def test_cli_writes_dataset_and_reports_errors(tmp_path, capsys):
    cli = _load_cli()
    base = [
        "--size",
        "32",
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "cli"),
    ]
    assert cli.main(base) == 0
    meta = json.loads((tmp_path / "cli" / "meta.json").read_text())
    assert (meta["image_size"], meta["num_train"], meta["num_val"]) == (32, 2, 1)
    assert cli.main(base) == 2
    assert "overwrite" in capsys.readouterr().err
    assert cli.main([*base, "--overwrite", "--seed", "4"]) == 0


def test_generator_is_framework_free():
    tree = ast.parse(Path(synthetic.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"torch", "mmseg", "mmengine", "mmcv", "detectron2", "tqdm"}
