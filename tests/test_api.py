"""Public API and CLI on the embedded default checkpoints (real trained weights, offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import gpstoken
from gpstoken.images import to_tensor
from gpstoken.metrics import psnr

REPO_DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(REPO_DATA / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def tokens(photo):
    return gpstoken.encode(photo, 128)


def test_default_tokenizer_reconstructs_a_photo(photo, tokens):
    assert tokens.model == "gpstoken-tiny"
    assert tokens.geometry.shape == (1, 128, 5) and tokens.features.shape == (1, 128, 16)
    rec = gpstoken.decode(tokens)
    assert isinstance(rec, Image.Image) and rec.size == photo.size
    x, _ = to_tensor(photo)
    y, _ = to_tensor(rec)
    flat = x.mean(dim=(2, 3), keepdim=True).expand_as(x)  # best constant-colour image
    assert psnr(y, x).item() > psnr(flat, x).item() + 4.0  # a trained model (held-out figures: docs/)


def test_refined_geometry_is_valid(tokens):
    g = tokens.geometry
    assert ((g[..., :2] > 0) & (g[..., :2] < 1)).all()
    assert (g[..., 2:].abs() < 1).all()


def test_output_kind_follows_input_kind_and_size():
    arr = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    out = gpstoken.reconstruct(arr, 16)
    assert isinstance(out, np.ndarray) and out.shape == arr.shape and out.dtype == np.uint8
    t = torch.rand(2, 3, 48, 64) * 2 - 1
    out_t = gpstoken.reconstruct(t, 16)
    assert out_t.shape == t.shape and out_t.dtype == torch.float32
    assert out_t.min() >= -1 and out_t.max() <= 1


def test_tokens_round_trip_through_a_file(tmp_path, tokens):
    path = tokens.save(tmp_path / "a.gpst")
    loaded = gpstoken.GPSTokens.load(path)
    assert torch.equal(loaded.geometry, tokens.geometry) and loaded.model == tokens.model
    assert isinstance(gpstoken.decode(loaded), Image.Image)  # no source kind stored: PIL


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.zeros(1, 4, 64, 64), ValueError, "[3,H,W]"),
        (torch.full((3, 64, 64), float("nan")), ValueError, "NaN"),
        (np.zeros((16, 16, 3), np.uint8), ValueError, "at least 32"),
        (np.zeros((64, 64, 3), np.float32) + 2.0, ValueError, "[0, 1]"),
        ("not an image", TypeError, "PIL image"),
    ],
)
def test_bad_images_get_clear_errors(bad, exc, words):
    with pytest.raises(exc, match=None) as info:
        gpstoken.encode(bad, 16)
    assert words in str(info.value)


def test_too_many_tokens_says_the_maximum(photo):
    with pytest.raises(ValueError, match="1024"):
        gpstoken.partition(photo, 5000)


def test_tokens_of_another_model_are_refused(tokens):
    other = gpstoken.GPSTokens(tokens.geometry, torch.zeros(1, 128, 32), tokens.image_size, tokens.layout, "x")
    with pytest.raises(ValueError, match="feature channels"):
        gpstoken.decode(other, model="default")


def test_priority_box_gets_more_tokens(photo):
    box = (60, 20, 190, 150)  # the face
    plain = gpstoken.edit_layout(photo, n_tokens=64)
    focused = gpstoken.edit_layout(photo, n_tokens=64, priority=[box])

    def inside(layout):
        mu = (layout.geometry[0, :, 3:5] + 1) / 2 * 255
        return int(((mu[:, 0] >= box[0]) & (mu[:, 0] <= box[2]) & (mu[:, 1] >= box[1]) & (mu[:, 1] <= box[3])).sum())

    assert inside(focused) > inside(plain)
    assert gpstoken.encode(photo, layout=focused).layout is focused


def test_edit_layout_remove_and_add_keep_a_valid_layout(photo):
    layout = gpstoken.edit_layout(photo, n_tokens=32)
    edited = gpstoken.edit_layout(layout, remove=[0, 1], add=[(0, 0, 63, 63), (64, 0, 127, 63)])
    assert edited.n_tokens == 32
    from gpstoken.layout import is_valid_layout

    assert is_valid_layout(edited)
    with pytest.raises(ValueError, match="priority"):
        gpstoken.edit_layout(layout, priority=[(0, 0, 10, 10)])


def test_edit_layout_move_takes_index_to_pixel_centre(photo):
    layout = gpstoken.edit_layout(photo, n_tokens=32)
    moved = gpstoken.edit_layout(layout, move={3: (100.0, 50.0), 5: (10.0, 20.0)}, calibrate=False)
    from gpstoken.layout import image_pixels

    _, gaussians = image_pixels(moved.geometry[0], moved.regions[0], moved.grid)
    assert gaussians[3, :2].tolist() == pytest.approx([100.0, 50.0], abs=1e-3)
    assert gaussians[5, :2].tolist() == pytest.approx([10.0, 20.0], abs=1e-3)
    assert torch.equal(moved.geometry[0, :3], layout.geometry[0, :3])


def test_generate_is_reproducible_and_class_dependent():
    gen = gpstoken.load_generator("default")
    a = gpstoken.generate(0, n=1, seed=3, steps=8, sampler="ode", model=gen, progress=False)
    b = gpstoken.generate(0, n=1, seed=3, steps=8, sampler="ode", model=gen, progress=False)
    c = gpstoken.generate(7, n=1, seed=3, steps=8, sampler="ode", model=gen, progress=False)
    assert a[0].size == (256, 256)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    with pytest.raises(ValueError, match="class_id"):
        gpstoken.generate(999, model=gen, progress=False)


def test_generate_from_a_user_layout(photo):
    gen = gpstoken.load_generator("default")
    layout = gpstoken.edit_layout(photo, n_tokens=gen.n_tokens)
    out = gpstoken.generate(4, layout=layout, seed=0, steps=6, sampler="euler", model=gen, progress=False)
    assert len(out) == 1 and out[0].size == (256, 256)
    with pytest.raises(ValueError, match="tokens per patch"):
        gpstoken.generate(4, layout=gpstoken.edit_layout(photo, n_tokens=16), model=gen, progress=False)
