"""Per-image seeds: from the file name, never from the folder the data lives in."""

from __future__ import annotations

from equi_ext.core.seeding import file_seed


def test_an_images_seed_depends_on_its_name_not_its_folder():
    assert file_seed("/data/shapes/img_dir/val/00001.png") == file_seed("other/place/00001.png")
    assert file_seed("00001.png") != file_seed("00002.png")
