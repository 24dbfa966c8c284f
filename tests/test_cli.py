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


def test_bfloat16_reconstruct_matches_float32_or_names_the_flag(tmp_path, small, capsys):
    """--dtype bfloat16 (a CPU with native bfloat16): the picture float32 gives, up to rounding
    (the decoded images agree to > 30 dB PSNR); without native bfloat16: one line naming --dtype."""
    import numpy as np

    from gpstoken.runtime import native_cpu_bfloat16

    args = ["reconstruct", small, "--tokens", "16", "--device", "cpu"]
    assert cli.main([*args, "-o", str(tmp_path / "f32.png")]) == 0
    code = cli.main([*args, "-o", str(tmp_path / "bf16.png"), "--dtype", "bfloat16"])
    if not native_cpu_bfloat16():
        assert code == 1 and _one_line(capsys.readouterr().err).endswith("use float32")
        return
    assert code == 0
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=np.float64) for n in ("f32.png", "bf16.png"))
    assert a.shape == b.shape == (64, 96, 3)
    assert np.any(a != b)  # it did run in bfloat16
    assert 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)) > 30


@pytest.mark.parametrize("argv, expected", [
    (["reconstruct", "{tmp}/nope.png", "-o", "{tmp}/x.png"], "input: image not found: .*nope.png; check the path"),
    (["reconstruct", "{tmp}/junk.png", "-o", "{tmp}/x.png"], "cannot read image .*junk.png .*give a PNG"),
    (["reconstruct", SRC, "-o", "{tmp}"], "is a folder; give an image file name inside it"),
    (["reconstruct", SRC, "-o", "{tmp}/x.pgnn"], "unknown image file extension '.pgnn'; use one of"),
    (["encode", SRC, "-o", "{tmp}"], "is a folder; give a token file name inside it"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--device", "cuda"],
     "--device: 'cuda' asked for, but CUDA is not available .*use 'cpu'"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--device", "tpu9"], "'tpu9' is not a device name"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--dtype", "float16"], "--dtype: torch.float16 inference needs a CUDA"),
    (["decode", "{tmp}/missing.gpst", "-o", "{tmp}/x.png"], "token file not found: .*missing.gpst"),
    (["decode", "{tmp}/junk.png", "-o", "{tmp}/x.png"], "is not a .gpst token file"),
    # found by the new-user audit (session 5)
    (["encode", SRC, "-o", "{tmp}/x.png"], "-o: .*x.png is an image file name, but token files are not images; "
                                           "name it .*x.gpst"),
    (["decode", "{tmp}", "-o", "{tmp}/x.png"], "is a folder, not a token file; give a .gpst file"),
    (["reconstruct", SRC, "-o", "{tmp}/x.png", "--device", "mps"], "--device: 'mps' is a mps device; .*use 'cpu'"),
    (["reconstruct", "{tmp}/bomb.png", "-o", "{tmp}/x.png"], "input: .*bomb.png has too many pixels to open safely "
                                                             ".*downscale it first"),
    (["generate", "--class", "0", "-o", "{tmp}/junk.png"], "-o: .*junk.png is a file, but this output is a folder"),
    (["tokenize", "{tmp}", "{tmp}/junk.png", "--tokens", "16"], "OUT: .*junk.png is a file, but this output is a "
                                                                "folder"),
    (["eval", "{tmp}", "-o", "{tmp}/junk.png"], "--out: .*junk.png is a file, but this output is a folder"),
    (["eval", "{tmp}", "-o", "{tmp}/ev", "--fid-weights", "{tmp}/none.pth"], "--fid-weights: no such file .*none.pth"),
    (["tokenize", "{tmp}", "{tmp}/out", "--tokens", "16", "--image-column", "pic"],
     "--image-column: .* is a folder, not a datasets dataset; leave --image-column out"),
    (["convert", "{tmp}/junk.png", "{tmp}/x.safetensors", "--trust"], "src: .*junk.png is not a PyTorch checkpoint "
                                                                      "\\(neither a torch zip file nor a pickle\\)"),
    (["models", "gpstoken-tny"], "unknown pretrained checkpoint 'gpstoken-tny' \\(did you mean 'gpstoken-tiny'"),
    (["train", "tokenizer", "--config", "{tmp}/junk.png"], "config: .*junk.png is not a JSON file"),
])
def test_failures_are_one_line_with_the_fix(tmp_path, capsys, monkeypatch, argv, expected):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    if "{tmp}/bomb.png" in argv:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # bomb.png is above twice the limit
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


def test_a_sixteen_bit_grey_png_is_read_as_sixteen_bit(tmp_path):
    """The CLI reads the file the way the Python API reads the PIL image (it once clipped
    16-bit values to white with convert("RGB"))."""
    import numpy as np

    import gpstoken

    grey = np.asarray(Image.open(SRC).convert("L").resize((64, 64)))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert cli.main(["encode", str(tmp_path / "g16.png"), "-o", str(tmp_path / "a.gpst"), "--tokens", "16"]) == 0
    want = gpstoken.encode(Image.fromarray(grey), 16)
    got = gpstoken.GPSTokens.load(tmp_path / "a.gpst")
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(got.features, want.features, atol=1e-4, rtol=1e-4)


def test_models_default_shows_the_default_of_each_kind(capsys):
    assert cli.main(["models", "default"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpstoken-tiny: ") and "\ngpstoken-tiny-generator: " in out and "16 classes" in out


def test_a_negative_class_index_is_out_of_range(tmp_path, capsys):
    code, err = _run(capsys, "generate", "--class", "-1", "-o", str(tmp_path / "g"), "--steps", "2")
    assert code == 1 and "class_id: -1 is out of range" in _one_line(err) and not (tmp_path / "g").exists()


def test_interrupted_tokenize_says_how_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_tokenize", interrupted)
    code, err = _run(capsys, "tokenize", str(tmp_path), str(tmp_path / "out"), "--tokens", "16")
    assert code == 130 and "the finished shards are kept; rerun the same command to resume" in _one_line(err)


def test_train_config_values_of_the_wrong_kind_name_the_field(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"max_steps": "many"}')
    code, err = _run(capsys, "train", "tokenizer", "--config", str(tmp_path / "c.json"))
    assert code == 1 and "TokenizerTrainConfig.max_steps: expected an integer, got 'many'" in _one_line(err)
