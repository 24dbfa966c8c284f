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
