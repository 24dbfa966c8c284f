"""The command line: outputs and one-line errors (problem + fix), exit codes, --debug."""
import errno
from pathlib import Path

import pytest
from PIL import Image

from gpstoken import cli

SRC = str(Path(__file__).resolve().parents[1] / "examples" / "data" / "astronaut.png")


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def small(tmp_path) -> str:
    """A 96x64 crop of a photo (one patch: quick)."""
    path = tmp_path / "small.png"
    Image.open(Path(SRC).with_name("coffee.png")).crop((100, 60, 196, 124)).save(path)
    return str(path)


def test_cli_encode_decode_show_reconstruct(tmp_path, small):
    src = small
    assert cli.main(["encode", src, "-o", str(tmp_path / "c.gpst"), "--tokens", "32"]) == 0
    assert cli.main(["decode", str(tmp_path / "c.gpst"), "-o", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size == Image.open(src).size
    assert cli.main(["show", str(tmp_path / "c.gpst"), "-o", str(tmp_path / "l.png"), "--image", src]) == 0
    assert Image.open(tmp_path / "l.png").size == Image.open(src).size
    assert cli.main(["reconstruct", src, "-o", str(tmp_path / "new" / "r.png"), "--tokens", "16"]) == 0
    assert Image.open(tmp_path / "new" / "r.png").size == (96, 64)


@pytest.mark.parametrize("argv, expected", [
    (["reconstruct", "{tmp}/nope.png", "-o", "{tmp}/x.png"], "input image not found: .*nope.png; check the path"),
    (["reconstruct", "{tmp}/junk.png", "-o", "{tmp}/x.png"], "cannot read image .*junk.png .*give a PNG"),
    (["reconstruct", SRC, "-o", "{tmp}"], "is a folder; give an image file name inside it"),
    (["reconstruct", SRC, "-o", "{tmp}/x.pgnn"], "unknown image file extension '.pgnn'; use one of"),
    (["encode", SRC, "-o", "{tmp}"], "is a folder; give a token file name inside it"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--device", "cuda"], "CUDA is not available .*use device='cpu'"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--device", "tpu9"], "'tpu9' is not a device name"),
    (["decode", "{tmp}/missing.gpst", "-o", "{tmp}/x.png"], "token file not found: .*missing.gpst"),
    (["decode", "{tmp}/junk.png", "-o", "{tmp}/x.png"], "is not a .gpst token file"),
])
def test_failures_are_one_line_with_the_fix(tmp_path, capsys, argv, expected):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1
    assert _one_line(err).startswith(f"gpstoken {argv[0]}: error: ")
    import re
    assert re.search(expected, err), err
    assert not (tmp_path / "x.png").exists()


def test_full_disk_keeps_the_old_output(tmp_path, capsys, monkeypatch, small):
    out = tmp_path / "r.png"
    out.write_bytes(b"old picture")

    def full_disk(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    code, err = _run(capsys, "reconstruct", small, "-o", str(out), "--tokens", "16")
    assert code == 1
    assert "no space left on the device" in _one_line(err) and "free some space" in err
    assert out.read_bytes() == b"old picture" and sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "small.png"]


def test_usage_errors_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reconstruct", SRC])
    assert e.value.code == 2 and "-o/--output" in capsys.readouterr().err
    with pytest.raises(cli.CLIError, match="not found"):
        cli.main(["reconstruct", str(tmp_path / "nope.png"), "-o", str(tmp_path / "x.png"), "--debug"])
    with pytest.raises(cli.CLIError, match="not found"):
        cli.main(["--debug", "reconstruct", str(tmp_path / "nope.png"), "-o", str(tmp_path / "x.png")])


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys, tmp_path):
    def broken(a):
        raise AssertionError("boom")

    monkeypatch.setattr(cli, "_cmd_models", broken)
    code, err = _run(capsys, "models")
    assert code == 1 and "internal error AssertionError: boom; rerun with --debug" in _one_line(err)


def test_cli_lists_the_registered_models(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gpstoken-m128" in out and "xtudbxk/GPSToken" in out and "gpstoken-tiny" in out
