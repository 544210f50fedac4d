"""Per-image records: one file per image, keyed by file name, never shared by two images."""

import pytest

from equi_ext.core.validation import SettingsError
from equi_ext.reporting import record_paths


def test_two_images_with_one_file_name_are_refused_before_any_record_is_touched(tmp_path):
    paths = record_paths(tmp_path, ["data/val/a.png", "/elsewhere/val/b.png", "data/val/a.png"])
    assert [p.name for p in paths] == ["a.png.json", "b.png.json", "a.png.json"]  # the same image twice: one record
    with pytest.raises(SettingsError, match=r"images 'a/frankfurt/0001.png' and 'b/munich/0001.png' have the same "
                                            r"file name: equi-ext keys per-image records and random seeds"):
        record_paths(tmp_path, ["a/frankfurt/0001.png", "b/munich/0001.png"])
    assert not list(tmp_path.iterdir())
