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


def test_written_files_follow_the_umask_without_the_writer_changing_it(tmp_path, monkeypatch):
    import os

    from equi_ext.files import atomic_write_bytes

    real_umask = os.umask
    old = real_umask(0o027)
    changes = []
    try:
        monkeypatch.setattr(os, "umask", lambda mask: changes.append(mask) or real_umask(mask))
        atomic_write_bytes(tmp_path / "page.md", b"x")
    finally:
        real_umask(old)
    assert (tmp_path / "page.md").stat().st_mode & 0o777 == 0o640
    assert not changes  # read from /proc, never set (Linux)


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    """Results, settings stamps and checkpoints are written whole or not at all: a write that fails before its
    rename (an interruption, a full disk) leaves the previous file as it was and nothing beside it."""
    import os

    import torch

    from equi_ext.files import atomic_torch_save, atomic_write_text

    target = tmp_path / "weights.pth"
    atomic_torch_save({"w": torch.ones(2)}, target)
    stamp = tmp_path / "setting.json"
    atomic_write_text(stamp, '{"eps": 4}')

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    for write in (lambda: atomic_torch_save({"w": torch.zeros(2)}, target), lambda: atomic_write_text(stamp, "{")):
        try:
            write()
        except KeyboardInterrupt:
            pass
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert stamp.read_text() == '{"eps": 4}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["setting.json", "weights.pth"]
