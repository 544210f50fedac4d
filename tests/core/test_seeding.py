"""Per-image seeds: from the file name, never from the folder the data lives in."""

from __future__ import annotations

from equi_ext.core.seeding import file_seed, image_seed


def test_an_images_seed_depends_on_its_name_not_its_folder():
    assert file_seed("/data/shapes/img_dir/val/00001.png") == file_seed("other/place/00001.png")
    assert file_seed("00001.png") != file_seed("00002.png")


def test_an_image_seed_comes_from_its_file_name_else_its_id_else_its_index():
    assert image_seed("/data/a/img_001.png", 7, 3) == image_seed("img_001.png", None, 0) == file_seed("img_001.png")
    assert image_seed(None, 7, 3) == 7 and image_seed("", 7, 3) == 7
    assert image_seed(None, "coco-7", 3) == 3 and image_seed(None, True, 3) == 3  # not an integer id
