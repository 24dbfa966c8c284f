"""gpstoken.geometry: the one owner of layout constants and frame conversions."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gpstoken import geometry as G
from gpstoken.images import pad_to_patches


@pytest.fixture(scope="module")
def official_codes(official):
    """Every official (gpscodes, regions) pair of the partition fixtures, per-patch frames."""
    from safetensors.numpy import load_file

    tensors = load_file(official / "partition" / "partition.safetensors")
    keys = sorted({k.rsplit("/", 1)[0] for k in tensors})
    return [(tensors[f"{k}/gpscodes"], tensors[f"{k}/regions"]) for k in keys]


def test_regions_from_geometry_inverts_the_official_formula(official_codes):
    """Regions from sigma: the cell spans 1.5*sigma*256 pixels (the official sigma divides by
    the patch size 256, not 255), so the official regions come back to float32 rounding."""
    worst = worst_255 = 0.0
    for codes, regions in official_codes:
        g = torch.from_numpy(codes)
        got = G.regions_from_geometry(g).numpy()
        worst = max(worst, float(np.abs(got - regions).max()))
        # the other convention seen before: half-size 1.5*sigma in normalised units (/255 scale)
        half = 1.5 * codes[:, :2].astype(np.float64)
        alt = np.concatenate([codes[:, 3:5] - half, codes[:, 3:5] + half], 1)
        worst_255 = max(worst_255, float(np.abs(alt - regions).max()))
    assert worst < 1e-6
    assert worst_255 > 1e-3  # that convention does not reproduce the official regions


def test_geometry_from_cells_is_the_official_output(official_codes):
    """Cells recovered from official regions give back the official gpscodes and regions
    bit for bit, in the torch and the numpy form."""
    for codes, regions in official_codes:
        cells = np.rint(G.to_pixel(regions.astype(np.float64))).astype(np.int64)
        g, r = G.geometry_from_cells(torch.from_numpy(cells))
        np.testing.assert_array_equal(g.numpy(), codes)
        np.testing.assert_array_equal(r.numpy(), regions)
        g2, r2 = G.cells_to_arrays(cells)
        np.testing.assert_array_equal(g2, codes)
        np.testing.assert_array_equal(r2, regions)


def test_regions_from_geometry_clamps_to_the_patch():
    g = torch.tensor([[0.5, 0.5, 0.0, 0.95, -0.95]])
    r = G.regions_from_geometry(g)
    assert r[0, 0] > -1 and r[0, 1] == -1.0 and r[0, 2] == 1.0 and r[0, 3] < 1
    assert r.dtype == torch.float32


def test_pixel_norm_round_trip_and_pixel_centres():
    p = torch.arange(256, dtype=torch.float64)
    torch.testing.assert_close(G.to_pixel(G.to_norm(p)), p, atol=1e-12, rtol=0)
    assert G.to_norm(0.0) == -1.0 and G.to_norm(255.0) == 1.0 and G.to_norm(63.0, 64) == 1.0
    c = G.pixel_coords(256)
    assert c.dtype == torch.float32 and c[0] == -1 and c[-1] == 1
    torch.testing.assert_close(c, G.to_norm(p).float(), atol=1e-7, rtol=0)


def test_patch_grid_and_check_grid():
    assert G.patch_grid(256, 256) == (1, 1)
    assert G.patch_grid(257, 512) == (2, 2)
    assert G.patch_grid(32, 600) == (1, 3)
    assert G.check_grid([2, 3]) == (2, 3)
    for bad in [(0, 1), (1,), (1.0, 2), (True, 1), "ab", 3]:
        with pytest.raises(ValueError, match="grid: expected"):
            G.check_grid(bad)


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_join_patches(channels_last):
    x = torch.randn(2, 3, 2 * 8, 3 * 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = G.split_patches(x, (2, 3))
    assert p.shape == (12, 3, 8, 8)
    assert torch.equal(p[1 * 6 + 1 * 3 + 2], x[1, :, 8:16, 16:24])  # image 1, patch (1, 2)
    assert p.is_contiguous(memory_format=torch.channels_last) == channels_last
    back = G.join_patches(p, (2, 3))
    assert torch.equal(back, x)
    assert back.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_split_patches_of_a_padded_image():
    x = torch.rand(1, 3, 300, 520) * 2 - 1
    p = G.split_patches(*pad_to_patches(x))
    assert p.shape == (6, 3, 256, 256)
    assert torch.equal(p[5, :, :44, :8], x[0, :, 256:, 512:])
    assert (p[5, :, 44:] == 0).all()


def test_to_patch_frame_inverts_merge_patch_tokens():
    k, m, n = 2, 3, 5
    gen = torch.Generator().manual_seed(0)
    local = torch.rand(k * m, n, 5, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    local[..., :2] = local[..., :2].abs() * 0.3 + 0.01
    tokens = torch.cat([local, torch.zeros(k * m, n, 1, dtype=torch.float64)], -1)
    merged = G.merge_patch_tokens(tokens, (k, m))[0, :, :5]
    back, patch = G.to_patch_frame(merged, (k, m))
    assert torch.equal(patch, torch.arange(k * m).repeat_interleave(n))
    torch.testing.assert_close(back, local.reshape(-1, 5).float(), atol=1e-6, rtol=0)


def test_image_pixel_to_patch():
    x = torch.tensor([0.0, 255.5, 256.0, 700.0])
    y = torch.tensor([10.0, 300.0, 511.0, -3.0])
    patch, lx, ly = G.image_pixel_to_patch(x, y, (2, 3))
    assert patch.tolist() == [0, 3, 4, 2]
    assert lx.tolist() == [0.0, 255.5, 0.0, 188.0] and ly.tolist() == [10.0, 44.0, 255.0, -3.0]


def test_constants_have_one_owner():
    """No other module of the package defines the patch size or the geometry width."""
    root = Path(G.__file__).parent
    pattern = re.compile(r"^\s*(N_GEOMETRY|GEOMETRY|PATCH|_LAST|LAST)\s*=", re.M)
    owners = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert owners == ["geometry.py"]
