"""The one 8-bit conversion (gpstoken.images.from_uint8 / to_uint8): pinned values, and every
loader (user images, tokenize / eval, training crops, the crop cache) gives the same tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpstoken.images import from_uint8, to_tensor, to_uint8

PIXELS = np.array([0, 1, 2, 64, 127, 128, 191, 253, 254, 255], dtype=np.uint8)


def test_from_uint8_values_are_the_float64_formula_cast_once():
    exact = PIXELS.astype(np.float64) / 255.0 * 2.0 - 1.0  # the official conversion
    assert torch.equal(from_uint8(PIXELS, torch.float64), torch.from_numpy(exact))
    got = from_uint8(PIXELS)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(exact).float())
    assert got[0] == -1 and got[-1] == 1 and got[4] == np.float32(-1 / 255) and got[5] == np.float32(1 / 255)
    # float32 arithmetic (x / 127.5 - 1) is one rounding step off for some values: not what we compute
    f32 = torch.from_numpy(np.arange(256, dtype=np.uint8)).float() / 127.5 - 1.0
    assert not torch.equal(from_uint8(np.arange(256, dtype=np.uint8)), f32)
    with pytest.raises(TypeError, match="pixels: expected uint8"):
        from_uint8(PIXELS.astype(np.int32))


def test_to_uint8_inverts_from_uint8_and_clamps():
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(every)), every)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


def test_every_loader_converts_like_the_public_api(tmp_path):
    from gpstoken.image_dataset import PreparedImages
    from gpstoken.sources import open_source
    from gpstoken.train.data import DataConfig, make_crop

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    reference = to_tensor(arr)[0][0]
    assert torch.equal(to_tensor(Image.fromarray(arr))[0][0], reference)
    assert torch.equal(make_crop(arr, None, DataConfig()), reference)  # centre crop at 256: the pixels as is
    Image.fromarray(arr).save(tmp_path / "a.png")
    item = PreparedImages(open_source(tmp_path), size=256, token_counts=[16])[0]
    assert torch.equal(item["image"], reference)


# ----------------------------------------------------------------------------- image files
def _grey16(tmp_path) -> tuple[np.ndarray, str]:
    """A 16-bit grey PNG (values well above 255) and its 8-bit twin's pixels."""
    grey = np.random.default_rng(1).integers(0, 256, (40, 48), dtype=np.uint8)
    path = tmp_path / "g16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    return grey, str(path)


def test_open_image_keeps_16_bit_and_float_grey_and_reads_every_mode(tmp_path):
    from gpstoken.images import open_image, to_rgb8

    grey, path16 = _grey16(tmp_path)
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    want = to_tensor(Image.fromarray(grey))[0]
    for path in (path16, tmp_path / "f.tiff"):
        im = open_image(path)
        assert im.mode in ("I", "I;16", "F") and im.size == (48, 40)
        torch.testing.assert_close(to_tensor(im)[0], want, atol=1e-6, rtol=0)
        # the 8-bit readers of tokenize / eval / the studio: the same pixels, not clipped
        assert np.array_equal(np.asarray(to_rgb8(im))[..., 0], grey)
    for mode in ("RGBA", "P", "CMYK", "LA", "1"):
        Image.fromarray(grey).convert(mode).save(tmp_path / f"m.{'jpg' if mode == 'CMYK' else 'png'}")
        im = open_image(tmp_path / f"m.{'jpg' if mode == 'CMYK' else 'png'}")
        assert im.mode == "RGB" and im.size == (48, 40)


def test_the_dataset_reader_keeps_16_bit_grey(tmp_path):
    from gpstoken.sources import open_source

    grey, _ = _grey16(tmp_path)
    assert np.array_equal(np.asarray(open_source(tmp_path).load(0))[..., 0], grey)


def test_open_image_applies_the_exif_orientation(tmp_path):
    from gpstoken.images import open_image

    im = Image.new("RGB", (60, 40), (200, 0, 0))
    im.paste((0, 0, 200), (0, 0, 10, 40))  # a blue band on the left
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = open_image(tmp_path / "r.jpg")
    assert shown.size == (40, 60)  # as viewers show it
    assert shown.getpixel((20, 2))[2] > 150  # the left band is now at the top
    assert open_image(tmp_path / "r.jpg", orient=False).size == (60, 40)


def test_open_image_of_an_animation_warns_and_gives_the_first_frame(tmp_path):
    from gpstoken.images import open_image

    frames = [Image.new("RGB", (40, 40), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(UserWarning, match=r"input: .*a\.gif is an animation of 2 frames; only the first frame is used"):
        im = open_image(tmp_path / "a.gif", "input")
    assert im.getpixel((20, 20))[0] > 200  # red: the first frame


def test_open_image_errors_name_the_argument_and_the_fix(tmp_path, monkeypatch):
    from gpstoken.images import open_image

    with pytest.raises(FileNotFoundError, match="input: image not found: .*nope.png; check the path"):
        open_image(tmp_path / "nope.png", "input")
    with pytest.raises(IsADirectoryError, match="input: .* is a folder, not an image file"):
        open_image(tmp_path, "input")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="input: cannot read image .*junk.png .*give a PNG"):
        open_image(tmp_path / "junk.png", "input")
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="input: .*big.png has too many pixels to open safely .*downscale it first"):
        open_image(tmp_path / "big.png", "input")


def test_a_file_name_passed_as_an_image_says_how_to_open_it():
    from pathlib import Path

    for path in ("photo.png", Path("photo.png")):
        with pytest.raises(TypeError, match=r"image: got the file name 'photo.png'; .*open_image\('photo.png'\)"):
            to_tensor(path)
