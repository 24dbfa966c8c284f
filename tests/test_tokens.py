"""GPSTokens value type and the .gpst file format."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from gpstoken.layout import Layout
from gpstoken.tokens import FORMAT_VERSION, GPSTokens


def _tokens(image_size=(300, 500), n=3, c=16, batch=2, seed=0) -> GPSTokens:
    gen = torch.Generator().manual_seed(seed)
    k, m = -(-image_size[0] // 256), -(-image_size[1] // 256)
    cells = torch.tensor([[0, 0, 127, 255], [128, 0, 255, 127], [128, 128, 255, 255]])[:n]
    layout = Layout.from_cells(cells.repeat(batch, k * m, 1), image_size)
    geometry = layout.geometry + 0.01 * torch.rand(layout.geometry.shape, generator=gen)
    features = torch.randn(batch, layout.total_tokens, c, generator=gen)
    return GPSTokens(geometry, features, image_size, layout, "gpstoken-m128")


def test_sizes_and_array():
    t = _tokens()
    assert t.grid == (2, 2) and t.n_tokens == 3 and t.total_tokens == 12 and t.channels == 16
    arr = t.as_array()
    assert arr.shape == (2, 12, 21)
    assert torch.equal(arr[..., :5], t.geometry) and torch.equal(arr[..., 5:], t.features)
    back = GPSTokens.from_array(arr, t.layout, t.model)
    assert torch.equal(back.as_array(), arr)
    assert t.to("cpu").device.type == "cpu"
    assert "gpstoken-m128" in repr(t)


def test_validation():
    t = _tokens()
    with pytest.raises(ValueError, match="geometry: expected shape"):
        GPSTokens(t.geometry[:, :-1], t.features, t.image_size, t.layout, t.model)
    with pytest.raises(ValueError, match="features: expected shape"):
        GPSTokens(t.geometry, t.features[:, :, :0], t.image_size, t.layout, t.model)
    with pytest.raises(ValueError, match="differs from the layout"):
        GPSTokens(t.geometry, t.features, (256, 256), t.layout, t.model)
    with pytest.raises(TypeError, match="Layout"):
        GPSTokens(t.geometry, t.features, t.image_size, None, t.model)
    with pytest.raises(ValueError, match="model id"):
        GPSTokens(t.geometry, t.features, t.image_size, t.layout, "")
    with pytest.raises(ValueError, match=r"\[B,N,5\+C\]"):
        GPSTokens.from_array(t.geometry, t.layout, t.model)


def test_save_load_round_trip(tmp_path):
    t = _tokens()
    path = t.save(tmp_path / "x.gpst")
    assert [p.name for p in tmp_path.iterdir()] == ["x.gpst"]  # no temp file left behind
    back = GPSTokens.load(path)
    assert back.image_size == t.image_size and back.grid == t.grid and back.model == t.model
    for a, b in ((back.geometry, t.geometry), (back.features, t.features),
                 (back.layout.geometry, t.layout.geometry), (back.layout.regions, t.layout.regions)):
        assert torch.equal(a, b)


def test_save_keeps_feature_dtype_and_replaces_atomically(tmp_path):
    t = _tokens(batch=1)
    t = GPSTokens(t.geometry, t.features.to(torch.bfloat16), t.image_size, t.layout, t.model)
    path = tmp_path / "x.gpst"
    path.write_bytes(b"old")
    t.save(path)
    assert GPSTokens.load(path).features.dtype == torch.bfloat16


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such token file"):
        GPSTokens.load(tmp_path / "missing.gpst")
    with pytest.raises(IsADirectoryError, match="load: .* is a folder, not a token file; give the .gpst file"):
        GPSTokens.load(tmp_path)
    junk = tmp_path / "junk.gpst"
    junk.write_bytes(b"\x00" * 5 + b"not safetensors at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        GPSTokens.load(junk)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a gpstoken token file"):
        GPSTokens.load(other)
    t = _tokens()
    newer = tmp_path / "newer.gpst"
    tensors = {"geometry": t.geometry, "features": t.features,
               "layout.geometry": t.layout.geometry, "layout.regions": t.layout.regions}
    meta = {"format": "gpst", "format_version": str(FORMAT_VERSION + 1), "image_size": json.dumps([300, 500]),
            "grid": json.dumps([2, 2]), "model": "m"}
    save_file(tensors, str(newer), metadata=meta)
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}"):
        GPSTokens.load(newer)
    del tensors["features"]
    save_file(tensors, str(newer), metadata={**meta, "format_version": "1"})
    with pytest.raises(ValueError, match="missing tensors"):
        GPSTokens.load(newer)


def test_draw_uses_refined_geometry():
    t = _tokens(image_size=(256, 256), batch=1)
    pic = t.draw()
    assert isinstance(pic, Image.Image) and pic.size == (256, 256)
    moved = GPSTokens(t.geometry * torch.tensor([0.5, 0.5, 1, 1, 1]), t.features, t.image_size, t.layout, t.model)
    assert not np.array_equal(np.asarray(moved.draw()), np.asarray(pic))
    assert not np.array_equal(np.asarray(t.layout.draw()), np.asarray(pic))  # layout = initial Gaussians


def test_save_refuses_a_folder_and_image_names_before_writing(tmp_path):
    t = _tokens()
    with pytest.raises(ValueError, match=r"path: .*x.PNG is an image file name, but token files are not images; "
                                         r"name it .*x.gpst"):
        t.save(tmp_path / "x.PNG")
    with pytest.raises(IsADirectoryError, match="path: .* is a folder; give a token file name inside it"):
        t.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert GPSTokens.load(t.save(tmp_path / "x")).image_size == (300, 500)  # any other name is fine
