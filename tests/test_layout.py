"""Layout value type, edits, drawing and calibration (algorithms.md sections 1, 5, 7)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gpstoken.geometry import geometry_from_cells, regions_from_geometry
from gpstoken.layout import (
    Layout,
    calibrate,
    is_valid_cell,
    is_valid_layout,
    min_cell_side,
)


def _tiling(choices: list[int], min_size: int = 8) -> list[tuple[int, int, int, int]]:
    """A partition of a 256 patch by recursive halving, steered by ``choices``."""
    cells = [(0, 0, 256, 256)]  # x0, y0, w, h
    for c in choices:
        splittable = [i for i, (_, _, w, h) in enumerate(cells) if not (w - 1 <= min_size and h - 1 <= min_size)]
        if not splittable:
            break
        x, y, w, h = cells.pop(splittable[c % len(splittable)])
        vertical = w > h or (w == h and (c // 7) % 2 == 0)
        if vertical:
            cells += [(x, y, w // 2, h), (x + w // 2, y, w - w // 2, h)]
        else:
            cells += [(x, y, w, h // 2), (x, y + h // 2, w, h - h // 2)]
    return [(x, y, x + w - 1, y + h - 1) for x, y, w, h in cells]


tilings = st.lists(st.integers(0, 10**6), min_size=0, max_size=80).map(_tiling)


def _layout(cells, image_size=(256, 256)) -> Layout:
    return Layout.from_cells(torch.tensor(cells, dtype=torch.int64)[None], image_size)


# ---------------------------------------------------------------------------- formulas
def test_from_cells_matches_official_partition(official):
    from safetensors.torch import load_file

    data = load_file(str(official / "partition" / "partition.safetensors"))
    checked = 0
    for key in data:
        if not key.endswith("/gpscodes"):
            continue
        size = (512, 512) if "_512/" in key else (256, 256)
        ref = Layout(data[key][None], data[key.replace("gpscodes", "regions")][None], size)
        rebuilt = Layout.from_cells(ref.cells(), size)
        assert torch.equal(rebuilt.geometry, ref.geometry), key
        assert torch.equal(rebuilt.regions, ref.regions), key
        assert is_valid_layout(ref), key
        assert calibrate(ref) is ref, key  # official partitions are valid: returned unchanged
        checked += 1
    assert checked > 100


def test_formulas_on_a_known_cell():
    g, r = geometry_from_cells(torch.tensor([[0, 128, 63, 255]]))
    expect_g = [63 / 256 * 2 / 3, 127 / 256 * 2 / 3, 0.0, (31.5 / 255 - 0.5) * 2, (191.5 / 255 - 0.5) * 2]
    assert torch.allclose(g[0].double(), torch.tensor(expect_g, dtype=torch.float64), atol=1e-7)
    assert r[0].tolist() == pytest.approx([-1.0, (128 / 255 - 0.5) * 2, (63 / 255 - 0.5) * 2, 1.0], abs=1e-7)


def test_regions_from_geometry_inverts_the_formulas():
    lay = _layout(_tiling(list(range(40))))
    assert torch.allclose(regions_from_geometry(lay.geometry), lay.regions, atol=1e-5)


# ---------------------------------------------------------------------------- validation
def test_sizes_and_grid():
    lay = Layout.from_cells(torch.tensor([[0, 0, 255, 255]] * 6)[None], (300, 700))
    assert lay.grid == (2, 3) and lay.n_tokens == 1 and lay.total_tokens == 6 and lay.batch_size == 1
    assert lay.to("cpu").geometry.device.type == "cpu"
    assert "n_tokens=1" in repr(lay)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(geometry=torch.zeros(1, 4, 4)), r"geometry: expected shape \[B,N,5\]"),
        (dict(geometry=torch.zeros(1, 4, 5, dtype=torch.int64)), "float tensor"),
        (dict(regions=torch.zeros(1, 2, 4)), "same \\[B,N\\]"),
        (dict(image_size=(0, 256)), "image_size"),
        (dict(grid=(2, 2)), "cut into \\(1, 1\\)"),
        (dict(image_size=(512, 512)), "multiple of the 4 patches"),
    ],
)
def test_validation_errors(kwargs, match):
    base = _layout([(0, 0, 127, 127), (128, 0, 255, 127), (0, 128, 127, 255), (128, 128, 255, 255)][:3])
    args = dict(geometry=base.geometry, regions=base.regions, image_size=(256, 256))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        Layout(**args)


def test_value_errors_nan_sigma_rho_regions():
    base = _layout([(0, 0, 255, 127), (0, 128, 255, 255)])
    for col, value, match in ((3, float("nan"), "NaN"), (0, 0.0, "sigma"), (2, 1.0, "rho")):
        g = base.geometry.clone()
        g[0, 0, col] = value
        with pytest.raises(ValueError, match=match):
            Layout(g, base.regions, (256, 256))
    r = base.regions.flip(-1)
    with pytest.raises(ValueError, match="x0 <= x1"):
        Layout(base.geometry, r, (256, 256))


def test_from_cells_rejects_bad_cells():
    with pytest.raises(TypeError, match="integer"):
        Layout.from_cells(torch.zeros(1, 1, 4), (256, 256))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        Layout.from_cells(torch.tensor([[0, 0, 256, 255]]), (256, 256))
    with pytest.raises(ValueError, match="x0 < x1"):
        Layout.from_cells(torch.tensor([[5, 0, 5, 255]]), (256, 256))


# ---------------------------------------------------------------------------- edits
def test_add_box_uses_official_formulas_and_goes_last():
    lay = _layout(_tiling([1, 2, 3]))
    out = lay.add([(10, 20, 41, 83)])
    assert out.total_tokens == lay.total_tokens + 1
    assert torch.equal(out.geometry[:, :-1], lay.geometry)
    g, r = geometry_from_cells(torch.tensor([[10, 20, 41, 83]]))
    assert torch.equal(out.geometry[0, -1], g[0]) and torch.equal(out.regions[0, -1], r[0])


def test_add_in_a_grid_keeps_patch_major_and_equal_counts():
    lay = Layout.from_cells(torch.tensor([[0, 0, 255, 255]] * 4)[None], (512, 400))
    with pytest.raises(ValueError, match="same number of tokens"):
        lay.add([(300, 300, 330, 340)])
    out = lay.add([(300, 300, 330, 340), (0, 0, 31, 31), (260, 0, 299, 63), (0, 400, 63, 463)])
    assert out.n_tokens == 2
    # patch (1,1) got the first box, translated into its own frame: pixels 44..74 x 44..84
    g, _ = geometry_from_cells(torch.tensor([[44, 44, 74, 84]]))
    assert torch.allclose(out.geometry[0, 7], g[0])
    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 399"):
        lay.add([(390, 0, 400, 10)])


def test_add_box_across_patches_is_clipped_to_the_centre_patch():
    lay = Layout.from_cells(torch.tensor([[0, 0, 255, 255]] * 2)[None], (256, 512))
    out = lay.add([(200, 0, 330, 40), (10, 10, 50, 50)])  # first centre at x=265 -> patch 1
    # patch-major: [patch 0: old, box 2], [patch 1: old, box 1]
    assert out.cells()[0, 1].tolist() == [10, 10, 50, 50]
    x0, _, x1, _ = out.cells()[0, 3].tolist()
    assert (x0, x1) == (0, 74)


def test_add_gaussians_in_merged_frame():
    lay = Layout.from_cells(torch.tensor([[0, 0, 255, 255]] * 2)[None], (256, 512))
    # a Gaussian centred in the right patch, merged frame (section 5): x' = -1 + (2*1 + x + 1)/2
    local = torch.tensor([0.1, 0.2, 0.3, 0.5, -0.25])
    merged = torch.tensor([0.1 / 2, 0.2, 0.3, -1 + (2 + 0.5 + 1) / 2, -0.25])
    out = lay.add(gaussians=[merged.tolist(), [0.05, 0.2, 0.0, -0.5, 0.0]])
    assert torch.allclose(out.geometry[0, 3], local, atol=1e-6)
    assert torch.allclose(out.regions[0, 3], regions_from_geometry(local), atol=1e-6)
    with pytest.raises(ValueError, match="boxes"):
        lay.add()


def test_select_remove_move():
    cells = _tiling([0, 0, 0, 5, 9])
    lay = _layout(cells)
    n = lay.total_tokens
    assert torch.equal(lay.select([2, 0]).geometry[0], lay.geometry[0, [2, 0]])
    kept = lay.remove([0, -1])
    assert kept.total_tokens == n - 2 and torch.equal(kept.geometry[0], lay.geometry[0, 1:-1])
    with pytest.raises(ValueError, match="token indices"):
        lay.remove([n])
    with pytest.raises(TypeError, match="integer token indices"):
        lay.select([0.5])
    moved = lay.move([1], [(100.0, 50.0)])
    assert moved.geometry[0, 1, 3:].tolist() == pytest.approx([(100 / 255 - 0.5) * 2, (50 / 255 - 0.5) * 2], abs=1e-6)
    assert torch.equal(moved.geometry[0, 1, :3], lay.geometry[0, 1, :3])
    assert torch.equal(moved.geometry[0, 2:], lay.geometry[0, 2:])
    delta = moved.geometry[0, 1, 3:] - lay.geometry[0, 1, 3:]
    expect = (lay.regions[0, 1] + delta.repeat(2)).clamp(-1, 1)
    assert torch.allclose(moved.regions[0, 1], expect, atol=1e-6)


def test_move_cannot_leave_the_patch_and_remove_keeps_patches_equal():
    lay = Layout.from_cells(torch.tensor([[0, 0, 127, 255], [128, 0, 255, 255]] * 2)[None], (256, 512))
    with pytest.raises(ValueError, match="outside its patch"):
        lay.move([0], [(300.0, 10.0)])
    with pytest.raises(ValueError, match="same number of tokens"):
        lay.remove([0])
    assert lay.remove([0, 3]).n_tokens == 1


# ---------------------------------------------------------------------------- drawing
def test_draw_over_grey_and_over_image():
    lay = Layout.from_cells(torch.tensor([[0, 0, 127, 255], [128, 0, 255, 255]] * 2)[None], (200, 300))
    pic = lay.draw()
    assert isinstance(pic, Image.Image) and pic.size == (300, 200)
    arr = np.asarray(pic)
    assert (arr == [128, 128, 128]).all(-1).mean() > 0.5  # mostly grey background
    assert ((arr[..., 0] > 200) & (arr[..., 1] < 100)).any()  # red 1-sigma ellipses
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    assert np.asarray(lay.draw(img, scale=2)).shape == (400, 600, 3)
    with pytest.raises(ValueError, match="expected size 200x300"):
        lay.draw(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="index"):
        lay.draw(index=3)


# ---------------------------------------------------------------------------- calibration
def test_valid_cells():
    assert min_cell_side(8) == 8 and min_cell_side(16) == 16 and min_cell_side(6) == 4
    assert is_valid_cell(0, 0, 255, 127) and is_valid_cell(8, 16, 15, 31)
    assert not is_valid_cell(0, 0, 255, 63)  # aspect 4
    assert not is_valid_cell(4, 0, 11, 7)  # misaligned
    assert not is_valid_cell(0, 0, 3, 3)  # below the minimum side
    assert not is_valid_cell(0, 0, 23, 23)  # not a power of two


@settings(max_examples=40, deadline=None)
@given(tilings, st.randoms(use_true_random=False))
def test_valid_tilings_are_returned_unchanged(cells, rnd):
    rnd.shuffle(cells)  # any token order
    lay = _layout(cells)
    assert is_valid_layout(lay)
    assert calibrate(lay) is lay


@settings(max_examples=30, deadline=None)
@given(tilings, st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
def test_perturbed_layouts_snap_to_valid_tilings(cells, noise, seed):
    lay = _layout(cells)
    gen = torch.Generator().manual_seed(seed)
    g = lay.geometry.clone()
    g[..., 3:] += noise * torch.randn(g[..., 3:].shape, generator=gen)
    g[..., :2] *= torch.exp(noise * torch.randn(g[..., :2].shape, generator=gen))
    g[..., 2] = (noise * torch.randn(g[..., 2].shape, generator=gen)).clamp(-0.9, 0.9)
    out = calibrate(Layout(g, lay.regions, (256, 256)))
    assert out.total_tokens == lay.total_tokens
    assert is_valid_layout(out)  # valid cells tiling the patch: no gaps, no overlaps
    assert calibrate(out) is out  # idempotent
    if noise < 1e-3:
        assert torch.equal(out.cells(), lay.cells())


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_arbitrary_gaussians_in_a_grid_calibrate(n, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(2, 2 * n, 5, generator=gen)
    g[..., :2] = g[..., :2] * 0.3 + 1e-3
    g[..., 2] = 0.0
    g[..., 3:] = g[..., 3:] * 2.4 - 1.2  # some centres outside the patch
    lay = Layout(g, regions_from_geometry(g), (256, 300))
    out = calibrate(lay)
    assert out.grid == (1, 2) and out.total_tokens == 2 * n
    assert is_valid_layout(out)
    assert calibrate(out) is out


def test_calibrate_after_add_and_remove_re_tiles():
    lay = _layout(_tiling(list(range(30))))
    added = calibrate(lay.add([(100, 100, 131, 131)]))
    assert is_valid_layout(added) and added.total_tokens == lay.total_tokens + 1
    removed = calibrate(lay.remove([0, 1, 2]))
    assert is_valid_layout(removed) and removed.total_tokens == lay.total_tokens - 3


def test_calibrate_rejects_too_many_tokens():
    g = torch.full((1, 1025, 5), 0.01)
    g[..., 2:] = 0.0
    with pytest.raises(ValueError, match="at most 1024 cells"):
        calibrate(Layout(g, regions_from_geometry(g), (256, 256)))
    with pytest.raises(TypeError, match="Layout"):
        calibrate(g)
