"""Test-time fitting of tokens (gpstoken.models.token_fit, Tokenizer.fit_steps): it lowers the
reconstruction error of real photos, keeps the tokens valid and their format, is off for
fit_steps=0, and the default comes from the checkpoint's metadata."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpstoken
from gpstoken import checkpoint, cli
from gpstoken.images import to_tensor
from gpstoken.metrics import psnr
from gpstoken.models.token_fit import RHO_LIMIT, fit_tokens

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture(scope="module")
def default():
    return gpstoken.load_tokenizer("default", device="cpu")


@pytest.fixture(scope="module")
def coffee() -> torch.Tensor:
    """A photo at 256x256, float [1,3,256,256] in [-1,1]."""
    return to_tensor(Image.open(DATA / "astronaut.png").convert("RGB").resize((256, 256)))[0]


def test_embedded_default_fits_four_steps_and_official_models_none(default, tiny_tokenizer):
    assert default.fit_steps == 4
    assert tiny_tokenizer.fit_steps == 0  # built in memory: the official behaviour


def test_fitting_lowers_the_error_of_a_photo_and_keeps_tokens_valid(default, coffee):
    layout = gpstoken.partition(coffee, 64)
    plain = default.encode_tensor(coffee, layout, fit_steps=0)
    fitted = default.encode_tensor(coffee, layout, fit_steps=2)
    gain = (psnr(default.decode_tensor(fitted), coffee) - psnr(default.decode_tensor(plain), coffee)).item()
    assert gain > 0.2, gain  # 2 steps: about +0.5 dB on this crop
    assert fitted.geometry.shape == plain.geometry.shape and fitted.features.shape == plain.features.shape
    assert torch.equal(fitted.layout.geometry, plain.layout.geometry)  # the layout it was encoded from
    g = fitted.geometry
    assert (g[..., :2] > 0).all() and (g[..., 2].abs() <= RHO_LIMIT).all() and torch.isfinite(g).all()
    # the tokens moved, the geometry by a fraction of each token's size
    moved = (g[..., 3:] - plain.geometry[..., 3:]).abs() / plain.geometry[..., :2]
    assert 0 < moved.max() < 2


def test_zero_steps_give_the_encoders_tokens(default, coffee):
    layout = gpstoken.partition(coffee, 32)
    a = default.encode_tensor(coffee, layout, fit_steps=0)
    default_before = default.fit_steps
    try:
        default.fit_steps = 0
        b = default.encode_tensor(coffee, layout)
    finally:
        default.fit_steps = default_before
    assert torch.equal(a.geometry, b.geometry) and torch.equal(a.features, b.features)


def test_fitting_works_under_no_grad_and_inference_mode(default, coffee):
    """Users often wrap inference in torch.no_grad() / torch.inference_mode(): same tokens."""
    layout = gpstoken.partition(coffee, 32)
    ref = default.encode_tensor(coffee, layout, fit_steps=1)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got = default.encode_tensor(coffee, layout, fit_steps=1)
        assert torch.equal(got.geometry, ref.geometry) and torch.equal(got.features, ref.features), mode


def test_fit_tokens_follows_the_decoder_it_is_given():
    """A toy decoder whose best tokens are known: fitting moves the features towards them."""
    target = torch.full((1, 3, 256, 256), 0.5)

    def decode(tokens):  # image = mean feature of the first channel, everywhere
        return tokens[..., 5].mean(dim=1).view(-1, 1, 1, 1).expand(-1, 3, 256, 256)

    tokens = torch.cat([torch.tensor([[[0.1, 0.1, 0.0, 0.0, 0.0]]]).expand(1, 8, 5),
                        torch.zeros(1, 8, 2)], -1)
    fitted = fit_tokens(decode, tokens, target, 4)
    assert (fitted[..., 5] > 0.3).all() and torch.equal(fitted[..., 6], tokens[..., 6])
    assert torch.allclose(fitted[..., :5], tokens[..., :5])  # no gradient reaches the geometry here


def test_multi_patch_image_is_fitted_patch_by_patch(default):
    img = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB").resize((520, 300)))
    x = to_tensor(img)[0]
    plain, fitted = (default.encode(img, 32, fit_steps=k) for k in (0, 1))
    assert fitted.geometry.shape == plain.geometry.shape == (1, 2 * 3 * 32, 5)
    gain = psnr(default.decode_tensor(fitted), x) - psnr(default.decode_tensor(plain), x)
    assert gain > 0.05, gain


@pytest.mark.parametrize("value, error, match", [
    (-1, ValueError, r"fit_steps: must be an int >= 0, got -1"),
    (1.5, TypeError, r"fit_steps: expected an int, got float 1.5"),
])
def test_bad_fit_steps_are_refused_naming_the_argument(tiny_tokenizer, value, error, match):
    with pytest.raises(error, match=match):
        tiny_tokenizer.encode(np.zeros((40, 40, 3), np.uint8), fit_steps=value)


def test_fit_steps_metadata_round_trip_and_corrupt_value(tiny_tokenizer, tmp_path):
    tiny_tokenizer.fit_steps = 3
    try:
        folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    finally:
        tiny_tokenizer.fit_steps = 0
    assert checkpoint.read_metadata(folder / "model.safetensors")["fit_steps"] == "3"
    assert gpstoken.load_tokenizer(folder, device="cpu").fit_steps == 3
    with pytest.raises(checkpoint.CheckpointFormatError, match=r"f.safetensors: metadata 'fit_steps' must be an int"):
        checkpoint.fit_steps({"fit_steps": "-2"}, "f.safetensors")


def test_cli_fit_steps_error_is_one_line(tmp_path, capsys):
    src = tmp_path / "s.png"
    Image.open(DATA / "coffee.png").crop((0, 0, 64, 64)).save(src)
    code = cli.main(["encode", str(src), "-o", str(tmp_path / "s.gpst"), "--fit-steps", "-1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and "--fit-steps: must be" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.gpst").exists()


def test_models_command_says_how_the_default_encodes(capsys):
    assert cli.main(["models", "gpstoken-tiny"]) == 0
    assert "then 4 test-time fitting steps (--fit-steps 0: the encoder alone)" in capsys.readouterr().out
