"""The input contract at the public boundary (issue #11): each reproducer gives a correct
result or one clear error naming the argument and the fix."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import gpstoken
from gpstoken.images import to_tensor
from gpstoken.layout import is_valid_layout

REPO_DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(REPO_DATA / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def unit(photo) -> torch.Tensor:
    """The photo as torchvision gives it: float [3,H,W] in [0, 1]."""
    return torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255


# --------------------------------------------------------------------------- tensors
@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda u: u, ValueError, ["[0, 1] convention", "x * 2 - 1"]),
        (lambda u: u * 255, ValueError, ["[0, 255] convention", "x / 127.5 - 1"]),
        (lambda u: (u * 255).to(torch.uint8), TypeError, ["[0, 255]", "x.float() / 127.5 - 1"]),
        (lambda u: u * 4 - 2, ValueError, ["outside [-1, 1]"]),
        (lambda u: (u * 2 - 1).permute(1, 2, 0), ValueError, ["channels-last", "x.permute(2, 0, 1)"]),
        (lambda u: (u * 2 - 1).permute(1, 2, 0)[None], ValueError, ["channels-last", "x.permute(0, 3, 1, 2)"]),
        (lambda u: (u * 2 - 1)[None, :, :0], ValueError, ["empty"]),
        (lambda u: torch.zeros(0, 3, 64, 64), ValueError, ["empty batch"]),
        (lambda u: (u * 2 - 1).to(torch.int32), TypeError, ["float"]),
        (lambda u: torch.where(u > 0.5, math.inf, u * 2 - 1), ValueError, ["NaN or Inf"]),
    ],
)
def test_bad_tensors_name_the_convention_and_the_fix(unit, make, exc, words):
    with pytest.raises(exc) as info:
        gpstoken.partition(make(unit), 16)
    message = str(info.value)
    assert message.startswith("image:")
    for w in words:
        assert w in message


def test_reconstruct_of_a_0_1_tensor_is_refused(unit):
    """The reproducer of the issue: it used to come back washed out, silently."""
    with pytest.raises(ValueError, match=r"image: .*\[0, 1\] convention.*x \* 2 - 1"):
        gpstoken.reconstruct(unit, 128)


def test_tensor_conventions_that_are_accepted(unit):
    x = unit * 2 - 1
    ref = gpstoken.partition(x, 16)
    for variant in (x.clone().requires_grad_(), x.double(), x[None]):
        got = gpstoken.partition(variant, 16)
        assert torch.equal(got.geometry, ref.geometry)
    assert gpstoken.partition(x.half(), 16).n_tokens == 16
    assert gpstoken.partition(x * (1 + 5e-4), 16).n_tokens == 16  # rounding overshoot: clamped
    assert gpstoken.partition(torch.zeros(3, 64, 64), 4).n_tokens == 4  # all zero: mid grey, not [0, 1]


def test_bright_images_are_not_taken_for_0_1_tensors(tiny_tokenizer):
    """PIL/numpy inputs have a known range: a bright one (no pixel below mid grey) is fine, and
    encode does not re-check the converted tensor."""
    bright = Image.new("RGB", (64, 48), (200, 180, 220))
    assert gpstoken.partition(bright, 4).image_size == (48, 64)
    tokens = gpstoken.encode(bright, 4, model=tiny_tokenizer)
    assert tokens.n_tokens == 4 and gpstoken.decode(tokens, model=tiny_tokenizer).size == (64, 48)


def test_requires_grad_input_keeps_its_graph(unit):
    x = (unit * 2 - 1).requires_grad_()
    gpstoken.partition(x, 8)
    assert x.grad is None and x.requires_grad  # untouched, no error


# --------------------------------------------------------------------------- PIL / numpy
def test_16_bit_grey_pngs_read_as_16_bit(tmp_path, photo):
    """16-bit PNGs used to come back near-white (PIL's convert("RGB") clips them)."""
    grey8 = photo.convert("L")
    wide = np.asarray(grey8).astype(np.uint16) * 257  # v/255 == 257 v/65535 exactly
    Image.fromarray(wide).save(tmp_path / "g16.png")
    reopened = Image.open(tmp_path / "g16.png")
    assert reopened.mode in ("I;16", "I")  # how PIL opens 16-bit PNGs depends on its version
    in_memory_i = Image.fromarray(wide.astype(np.int32), "I")
    for im in (reopened, in_memory_i):
        x, _ = to_tensor(im)
        assert torch.equal(x, to_tensor(grey8)[0])
    assert torch.equal(gpstoken.partition(reopened, 16).geometry, gpstoken.partition(grey8, 16).geometry)


def test_16_bit_values_out_of_range_are_refused():
    img = Image.fromarray(np.full((40, 40), 70000, np.int32), "I")
    with pytest.raises(ValueError, match=r"image: .*\[0, 65535\]"):
        to_tensor(img)


def test_float_pil_images(photo):
    grey8 = photo.convert("L")
    ref, _ = to_tensor(grey8)
    unit_f = Image.fromarray(np.asarray(grey8).astype(np.float32) / 255)
    byte_f = Image.fromarray(np.asarray(grey8).astype(np.float32))
    assert unit_f.mode == byte_f.mode == "F"
    assert torch.allclose(to_tensor(unit_f)[0], ref, atol=1e-6)  # [0, 1] floats
    assert torch.equal(to_tensor(byte_f)[0], ref)  # [0, 255] floats, PIL's convention for F


def test_uint16_numpy_round_trips_as_uint16(photo):
    arr = np.asarray(photo).astype(np.uint16) * 257
    x, kind = to_tensor(arr)
    assert torch.equal(x, to_tensor(photo)[0])
    back = gpstoken.images.from_tensor(x, kind)
    assert back.dtype == np.uint16 and np.array_equal(back, arr)


def test_channels_first_numpy_is_refused(photo):
    with pytest.raises(ValueError, match=r"channels-first.*transpose\(1, 2, 0\)"):
        to_tensor(np.asarray(photo).transpose(2, 0, 1).copy())


# --------------------------------------------------------------------------- Layout / GPSTokens
def test_layout_with_pixel_regions_is_refused_on_construction(photo):
    layout = gpstoken.partition(photo, 16)
    pixels = (layout.regions + 1) / 2 * 255
    with pytest.raises(ValueError, match=r"Layout.regions: values in \[0, 255\].*not pixels"):
        gpstoken.Layout(layout.geometry, pixels, layout.image_size)
    nan = layout.regions.clone()
    nan[0, 3, 1] = math.nan
    with pytest.raises(ValueError, match="Layout.regions: .*NaN"):
        gpstoken.Layout(layout.geometry, nan, layout.image_size)


@pytest.mark.parametrize(
    "column, value, words",
    [(0, 0.0, "sigma_x=0.0, which must be > 0"), (1, -2.0, "sigma_y=-2.0"), (2, 1.0, "rho=1.0"),
     (4, math.nan, "mu_y=nan, which is not finite")],
)
def test_layout_geometry_values_name_the_token(photo, column, value, words):
    layout = gpstoken.partition(photo, 16)
    g = layout.geometry.clone()
    g[0, 5, column] = value
    with pytest.raises(ValueError, match=r"Layout.geometry: token \(b=0, n=5\)") as info:
        gpstoken.Layout(g, layout.regions, layout.image_size)
    assert words in str(info.value)
    with pytest.raises(TypeError, match="Layout.geometry: expected a float tensor"):
        gpstoken.Layout(layout.geometry.long(), layout.regions, layout.image_size)


def test_tokens_values_are_checked_on_construction(photo):
    layout = gpstoken.partition(photo, 16)
    features = torch.zeros(1, 16, 4)
    ok = gpstoken.GPSTokens(layout.geometry, features, layout.image_size, layout, "m")
    assert ok.channels == 4
    for column, value, words in ((0, -1.0, "sigma_x=-1.0"), (2, -1.0, "rho=-1.0"), (3, math.inf, "mu_x=inf")):
        g = layout.geometry.clone()
        g[0, 2, column] = value
        with pytest.raises(ValueError, match=r"GPSTokens: token \(b=0, n=2\)") as info:
            gpstoken.GPSTokens(g, features, layout.image_size, layout, "m")
        assert words in str(info.value)
    bad = features.clone()
    bad[0, 7, 1] = math.nan
    with pytest.raises(ValueError, match=r"GPSTokens: token \(b=0, n=7\) has non-finite feature 1"):
        gpstoken.GPSTokens(layout.geometry, bad, layout.image_size, layout, "m")


# --------------------------------------------------------------------------- edit_layout forms
def _pixel_centres(layout: gpstoken.Layout) -> torch.Tensor:
    return (layout.geometry[0, :, 3:5].double() + 1) / 2 * 255


def test_edit_layout_move_as_documented(photo):
    """``move={index: (x, y)}`` used to raise ``Layout.move() missing ... 'centres'``."""
    moved = gpstoken.edit_layout(photo, n_tokens=128, move={0: (100, 100), 5: (30.5, 200)}, calibrate=False)
    centres = _pixel_centres(moved)
    assert torch.allclose(centres[0], torch.tensor([100.0, 100.0], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(centres[5], torch.tensor([30.5, 200.0], dtype=torch.float64), atol=1e-4)
    plain = gpstoken.partition(photo, 128)
    assert torch.equal(moved.geometry[0, 1:5], plain.geometry[0, 1:5])  # the others stay
    calibrated = gpstoken.edit_layout(photo, n_tokens=128, move={0: (100, 100)})
    assert calibrated.n_tokens == 128 and is_valid_layout(calibrated)


def test_edit_layout_move_errors(photo):
    layout = gpstoken.partition(photo, 16)
    for move, exc, words in (
        ([(0, (1, 2))], TypeError, "move: expected a dict"),
        ({0: (1, 2, 3)}, ValueError, "move[0]: expected an (x, y)"),
        ({0: (math.nan, 2)}, ValueError, "move[0] x: must be a finite number"),
        ({"a": (1, 2)}, TypeError, "move key 'a'"),
        ({0: (300, 10)}, ValueError, "outside its patch"),
        ({16: (3, 10)}, ValueError, "token indices must lie in"),
    ):
        with pytest.raises(exc) as info:
            gpstoken.edit_layout(layout, move=move)
        assert words in str(info.value)


def test_edit_layout_priority_mask_and_boxes(photo):
    box = (60, 20, 190, 150)
    mask = np.zeros((photo.height, photo.width), bool)
    mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = True

    def inside(layout):
        c = _pixel_centres(layout)
        return int(((c[:, 0] >= box[0]) & (c[:, 0] <= box[2]) & (c[:, 1] >= box[1]) & (c[:, 1] <= box[3])).sum())

    plain = gpstoken.edit_layout(photo, n_tokens=64)
    by_box = gpstoken.edit_layout(photo, n_tokens=64, priority=[box])
    by_mask = gpstoken.edit_layout(photo, n_tokens=64, priority=mask)
    by_float_mask = gpstoken.edit_layout(photo, n_tokens=64, priority=torch.from_numpy(mask).float())
    assert inside(by_box) > inside(plain)
    assert torch.equal(by_mask.geometry, by_box.geometry) and torch.equal(by_float_mask.geometry, by_box.geometry)
    with pytest.raises(ValueError, match="priority: mask must have the image's shape"):
        gpstoken.edit_layout(photo, n_tokens=64, priority=mask[:10])


def test_edit_layout_remove_add_and_all_at_once(photo):
    base = gpstoken.edit_layout(photo, n_tokens=32)
    removed = gpstoken.edit_layout(base, remove=[0, 1], calibrate=False)
    assert removed.n_tokens == 30 and torch.equal(removed.geometry[0], base.geometry[0, 2:])
    added = gpstoken.edit_layout(base, add=[(0, 0, 63, 63)], calibrate=False)
    assert added.n_tokens == 33
    assert torch.allclose(_pixel_centres(added)[-1], torch.tensor([31.5, 31.5], dtype=torch.float64), atol=1e-4)
    both = gpstoken.edit_layout(photo, n_tokens=32, remove=[0, 1], move={0: (128, 128)},
                                add=[(0, 0, 63, 63), (64, 0, 127, 63)])
    assert both.n_tokens == 32 and is_valid_layout(both)
    with pytest.raises(ValueError, match="n_tokens: 16 disagrees"):
        gpstoken.edit_layout(base, n_tokens=16)
    with pytest.raises(TypeError, match="calibrate: expected True or False"):
        gpstoken.edit_layout(base, calibrate="yes")


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(cfg_scale=math.nan), ValueError, "cfg_scale: must be a finite number >= 1"),
        (dict(cfg_scale=0.5), ValueError, "cfg_scale: must be a finite number >= 1"),
        (dict(steps=1), ValueError, "steps: must be an int >= 2"),
        (dict(steps=2.5), ValueError, "steps: must be an int >= 2"),
        (dict(n=0), ValueError, "n: must be an int >= 1, got 0"),
        (dict(n=True), TypeError, "n: expected an int"),
        (dict(seed=math.nan), TypeError, "seed: expected an int"),
        (dict(sampler="fast"), ValueError, "sampler: expected one of"),
        (dict(progress="no"), TypeError, "progress: expected True or False"),
    ],
)
def test_generation_options_are_checked_first(kwargs, exc, words):
    gen = gpstoken.load_generator("default")
    with pytest.raises(exc) as info:
        gpstoken.generate(0, model=gen, **kwargs)
    assert words in str(info.value)


def test_guidance_interval_is_checked():
    gen = gpstoken.load_generator("default")
    for bad in ((0.0, math.nan), (0.8, 0.2), (0.5,), "all"):
        with pytest.raises(ValueError, match="guidance_interval: "):
            gen.generate(0, guidance_interval=bad)


def test_models_do_not_validate_per_render(monkeypatch):
    """Checks live at the boundary: a model's render never runs the value check (no host sync)."""
    from gpstoken.models.configs import DecoderConfig, TokenizerConfig
    from gpstoken.models.tokenizer import GPSTokenizer
    from gpstoken.validate import tokens as token_checks

    calls = []
    monkeypatch.setattr(token_checks, "gaussians", lambda *a, **k: calls.append(1))
    model = GPSTokenizer(TokenizerConfig(gpsenc_n=1, gpsenc_c=32, gps_num=4, gps_c=4,
                                         decoder=DecoderConfig(ch=32, ch_mult=(1,), num_res_blocks=0, z_channels=4)))
    tokens = torch.cat([torch.full((1, 4, 2), 0.2), torch.zeros(1, 4, 3), torch.randn(1, 4, 4)], -1)
    assert model.render(tokens).shape == (1, 4, 64, 64)
    assert calls == []
    gpstoken.render(tokens[..., :5], tokens[..., 5:], (8, 8))
    assert calls == [1]


def test_devices_other_than_cpu_and_cuda_are_refused_with_the_fix():
    from gpstoken.pipeline import pick_device

    for name in ("meta", "mps"):
        with pytest.raises(ValueError, match=f"device: '{name}' is a {name} device; .*use 'cpu', 'cuda' or 'cuda:N'"):
            pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")


def test_class_ids_may_be_numpy_integers():
    gen = gpstoken.load_generator("default")
    assert gen.class_index(np.int64(3)) == 3 and type(gen.class_index(np.int32(3))) is int
    with pytest.raises(TypeError, match="class_id: expected an int or a class name"):
        gen.class_index(np.float64(3))


def test_a_mistyped_model_name_gets_the_close_registry_names():
    with pytest.raises(ValueError, match=r"name_or_path: 'gpstoken-tny' is not a registry name \(did you mean "
                                         r"'gpstoken-tiny'"):
        gpstoken.load_tokenizer("gpstoken-tny")
    with pytest.raises(ValueError, match=r"kind: 'default' names one model per kind, 'gpstoken-tiny' \(tokenizer\)"):
        gpstoken.hub.get_spec("default")


def test_config_values_must_have_the_declared_kind():
    from dataclasses import dataclass

    from gpstoken.validate import config_values

    @dataclass
    class Config:
        steps: int = 1
        lr: float = 1e-3
        flip: bool = True
        name: str = "x"
        model: "str | dict" = "m"

    config_values(Config, {"steps": 2, "lr": 1, "flip": False, "name": "y", "model": {"depth": 2}}, "cfg")
    for field, value, what in (("steps", "many", "an integer"), ("steps", 2.0, "an integer"),
                               ("lr", "1e-4", "a number"), ("flip", 1, "true or false"), ("name", 3, "a string"),
                               ("steps", True, "an integer")):
        with pytest.raises(TypeError, match=f"cfg.{field}: expected {what}, got {value!r}"):
            config_values(Config, {field: value}, "cfg")
