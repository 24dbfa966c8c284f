"""Atomic writes (gpstoken.io) and the writers that use it."""
import errno
import os
import stat

import pytest
import torch
from PIL import Image

from gpstoken import io as gio
from gpstoken.layout_bank import LayoutBank


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, error):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def half_write(img, fp, format=None):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG truncated")
        raise error

    img = Image.new("RGB", (8, 8))
    img.save = lambda fp, format=None: half_write(img, fp, format)
    with pytest.raises(type(error)):
        gio.save_image(img, target)
    assert target.read_bytes() == b"previous" and _files(tmp_path) == ["out.png"]


def test_permissions_follow_the_umask_and_folders_are_created(tmp_path):
    old = os.umask(0o027)
    try:
        path = gio.write_safetensors({"w": torch.zeros(3)}, tmp_path / "new" / "deep" / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    old = os.umask(0o002)
    try:
        gio.write_text(path, "replaced")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664 and path.read_text() == "replaced"


def test_a_folder_or_an_unknown_suffix_is_refused_with_the_fix(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder; give an image file name inside it"):
        gio.save_image(Image.new("RGB", (4, 4)), tmp_path)
    with pytest.raises(ValueError, match=r"unknown image file extension '\.xyz'; use one of"):
        gio.save_image(Image.new("RGB", (4, 4)), tmp_path / "a.xyz")
    assert _files(tmp_path) == []


def test_writers_go_through_io(tmp_path, monkeypatch):
    """.gpst files, checkpoints and banks: a failing write leaves the old file and no temp."""
    import safetensors.torch

    import gpstoken
    from gpstoken import hub

    img = Image.open(os.path.join(os.path.dirname(__file__), "..", "examples", "data", "astronaut.png"))
    tokens = gpstoken.encode(img.resize((64, 64)), 16)
    bank = LayoutBank({0: torch.rand(2, 16, 5)})
    writers = {
        "x.gpst": tokens.save,
        "c.safetensors": lambda p: hub.save_checkpoint({"w": torch.zeros(2)}, p, {}, "tokenizer"),
        "bank.safetensors": bank.save,
    }
    for name, write in writers.items():
        write(tmp_path / "ok" / name)  # missing folder created
    assert _files(tmp_path / "ok") == sorted(writers)

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    for name, write in writers.items():
        (tmp_path / name).write_bytes(b"old")
        with pytest.raises(OSError, match="No space"):
            write(tmp_path / name)
        assert (tmp_path / name).read_bytes() == b"old"
    assert _files(tmp_path) == sorted([*writers, "ok"])


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_atomic_dir_appears_whole_or_not_at_all(tmp_path, error):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(type(error)):
        with gio.atomic_dir(target) as tmp:
            (tmp / "a").write_text("half")
            raise error
    assert _files(tmp_path) == ["ckpt"] and (target / "a").read_text() == "old" and _files(target) == ["a"]
    old = os.umask(0o027)
    try:
        with gio.atomic_dir(target) as tmp:
            (tmp / "b").write_text("new")
            assert not (target / "b").exists()  # not in place before the end
    finally:
        os.umask(old)
    assert _files(tmp_path) == ["ckpt"] and _files(target) == ["b"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
