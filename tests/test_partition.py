"""Entropy partition: official parity, tie-breaking, errors, priority, reference, kernel."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gpstoken.geometry import cells_to_arrays
from gpstoken.kernels import entropy_hist
from gpstoken.partition import (
    complexities,
    grey_of,
    max_cells,
    native_available,
    partition,
    partition_patch,
)
from gpstoken.partition import native as native_path
from gpstoken.partition.api import partition_stack

from reference_partition import grey_of as ref_grey_of
from reference_partition import reference_partition


def _load(path) -> torch.Tensor:
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).float()


@pytest.fixture(scope="module")
def fixtures(official):
    from safetensors.numpy import load_file

    root = official / "partition"
    return root, json.loads((root / "index.json").read_text()), load_file(root / "partition.safetensors")


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Run a test on the native C path and on the pure-torch path (its reference)."""
    if request.param == "torch":
        monkeypatch.setattr(native_path, "_native", None)
    elif not native_available():
        pytest.skip("gpstoken._cpartition is not built (no C compiler at install); the torch path is tested")
    return request.param


def test_native_partition_is_built_in_ci():
    if not os.environ.get("CI"):
        pytest.skip("only required in CI: a user's install without a C compiler falls back to torch")
    assert native_available(), "gpstoken._cpartition was not built: `pip install -e .` needs a C compiler (gcc)"


def _cells_of(regions: np.ndarray, size: int = 256) -> np.ndarray:
    return np.round((regions.astype(np.float64) / 2 + 0.5) * (size - 1)).astype(np.int64)


# ----------------------------------------------------------------------------- official parity
@pytest.mark.parametrize("n", [16, 64, 128, 256])
def test_official_256(fixtures, n, backend):
    root, index, tensors = fixtures
    images = index["images256"]
    grey = grey_of(torch.stack([_load(root / im["file"]) for im in images]))
    cells = partition_stack(grey, n, 2.5, 8, None)
    for im, got, g in zip(images, cells, grey):
        key = f"{im['name']}/n{n}"
        geometry, regions = cells_to_arrays(got)
        np.testing.assert_array_equal(regions, tensors[f"{key}/regions"], err_msg=key)
        np.testing.assert_array_equal(geometry, tensors[f"{key}/gpscodes"], err_msg=key)
        if n in (16, 64):  # complexities too (a cheaper subset of sizes)
            np.testing.assert_allclose(complexities(g, got), tensors[f"{key}/complexity"], rtol=1e-9, err_msg=key)


def test_official_single_patch_api(fixtures):
    root, index, tensors = fixtures
    im = next(i for i in index["images256"] if i["name"] == "synthetic_checker32")
    g = grey_of(_load(root / im["file"])[None])[0]
    cells = partition_patch(g.numpy(), 64)
    np.testing.assert_array_equal(cells, _cells_of(tensors["synthetic_checker32/n64/regions"]))


def test_official_512_batched(fixtures, backend):
    root, index, tensors = fixtures
    images = torch.stack([_load(root / im["file"]) for im in index["images512"]])
    for n in (16, 64, 128, 256):
        layout = partition(images, n)
        assert layout.geometry.shape == (3, 4 * n, 5) and layout.image_size == (512, 512)
        assert tuple(layout.grid) == (2, 2)
        for b, im in enumerate(index["images512"]):
            key = f"{im['name']}/n{n}"
            np.testing.assert_array_equal(layout.regions[b].numpy(), tensors[f"{key}/regions"], err_msg=key)
            np.testing.assert_array_equal(layout.geometry[b].numpy(), tensors[f"{key}/gpscodes"], err_msg=key)


# ----------------------------------------------------------------------------- ties and reference
def _tiled(seed: int, tile: int) -> np.ndarray:
    """A grey patch made of one random tile repeated: many exactly tied complexities."""
    rng = np.random.default_rng(seed)
    t = (rng.integers(0, 256, (tile, tile)).astype(np.float64) / 127.5 - 1.0).astype(np.float32)
    return np.tile(t, (256 // tile, 256 // tile))


def _random_patch(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.integers(0, 256, (3, 256, 256)).astype(np.float64) / 127.5 - 1.0).float()
    # smooth a random half so complexities differ a lot across cells
    img[:, :, :128] = torch.nn.functional.avg_pool2d(img[None, :, :, :128], 9, 1, 4)[0]
    return ref_grey_of(img)


@pytest.mark.parametrize("grey", [
    pytest.param(_tiled(0, 16), id="tiled16"),
    pytest.param(_tiled(1, 64), id="tiled64"),
    pytest.param(np.zeros((256, 256), np.float32), id="flat"),
    pytest.param(np.tile(np.linspace(-1, 1, 256, dtype=np.float32), (256, 1)), id="ramp"),
    pytest.param(_random_patch(2), id="random"),
])
def test_matches_reference_with_ties(grey, backend):
    want, want_c = reference_partition(grey, 40)
    got = partition_patch(grey, 40)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(complexities(grey, got), want_c)


def test_matches_reference_with_bias(backend):
    rng = np.random.default_rng(3)
    grey = _random_patch(4)
    bias = np.round(rng.random((256, 256)) * 300 * 256) / 256  # already on the 2**-24 grid
    bias[:100] = 0
    want, want_c = reference_partition(grey, 30, bias=bias)
    got = partition_patch(grey, 30, bias=bias)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(complexities(grey, got, bias=bias), want_c)


def test_full_split_and_too_many_tokens(backend):
    grey = _random_patch(5)
    assert max_cells(256, 256, 8) == 1024
    cells = partition_patch(grey, 1024)
    area = np.zeros((256, 256), np.int64)
    for x0, y0, x1, y1 in cells:
        area[y0:y1 + 1, x0:x1 + 1] += 1
    assert (area == 1).all()  # a partition: no duplicates, no overlaps, no holes
    with pytest.raises(ValueError, match="at most 1024"):
        partition_patch(grey, 1025)
    with pytest.raises(ValueError, match="at most 1024"):
        partition(torch.zeros(3, 64, 64), 1025)


def test_output_is_a_partition_and_official_order_small_n(backend):
    grey = _random_patch(6)
    assert partition_patch(grey, 1).tolist() == [[0, 0, 255, 255]]
    cells = partition_patch(grey, 2)
    assert sorted(map(tuple, cells)) in ([(0, 0, 127, 255), (128, 0, 255, 255)],
                                         [(0, 0, 255, 127), (0, 128, 255, 255)])


@pytest.mark.skipif(not native_available(), reason="gpstoken._cpartition is not built")
@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (64, 96), (17, 9)])
def test_native_equals_torch_path(shape, monkeypatch):
    """Any image size, odd cell sizes, cells wider than 64 and a bias: identical cells and values."""
    rng = np.random.default_rng(shape[0])
    grey = (rng.integers(0, 256, shape) / 127.5 - 1.0).astype(np.float32)
    grey[: shape[0] // 2] = np.round(grey[: shape[0] // 2] * 2) / 2  # coarse half: ties, bin edges
    bias = np.round(rng.random(shape) * 50 * 256) / 256
    n = min(37, max_cells(*shape))
    cells = [partition_patch(grey, n), partition_patch(grey, n, bias=bias)]
    ys, xs = rng.integers(0, shape[0], (2, 40)), rng.integers(0, shape[1], (2, 40))
    boxes = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], 1)  # random cells, any size
    values = [complexities(grey, boxes), complexities(grey, boxes, bias=bias)]
    monkeypatch.setattr(native_path, "_native", None)
    np.testing.assert_array_equal(cells[0], partition_patch(grey, n))
    np.testing.assert_array_equal(cells[1], partition_patch(grey, n, bias=bias))
    np.testing.assert_array_equal(values[0], complexities(grey, boxes))
    np.testing.assert_array_equal(values[1], complexities(grey, boxes, bias=bias))


@pytest.mark.skipif(not native_available(), reason="gpstoken._cpartition is not built")
def test_native_module_checks_its_buffers():
    from gpstoken import _cpartition

    grey = np.zeros((1, 32, 32), np.float32)
    with pytest.raises(ValueError, match="out: expected 64 bytes"):
        _cpartition.partition(grey, 1, 32, 32, None, 4, 8, 2.5, 1, np.zeros((1, 4, 3), np.int32))
    with pytest.raises(ValueError, match="integral"):
        _cpartition.partition(grey, 1, 32, 32, np.zeros((32, 32)), 4, 8, 2.5, 1, np.zeros((1, 4, 4), np.int32))
    with pytest.raises(ValueError, match="cells\\[1\\]: outside"):
        _cpartition.complexities(grey, 1, 32, 32, None, np.array([[0, 0, 0, 8, 8], [0, 30, 0, 8, 8]], np.int32),
                                 2, 2.5, 1, np.zeros(2))


@pytest.mark.parametrize("bad, msg", [
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.zeros((2, 32, 32), np.float32), "float \\[H,W\\]"),
    (np.zeros((32, 32), np.int64), "float \\[H,W\\]"),
])
def test_grey_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        partition_patch(bad, 4)


def test_complexities_rejects_cells_outside():
    with pytest.raises(ValueError, match="outside"):
        complexities(np.zeros((32, 32), np.float32), np.array([[0, 0, 32, 10]]))


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(n_tokens=0), ValueError, "n_tokens"),
    (dict(n_tokens=2.0), TypeError, "n_tokens"),
    (dict(n_tokens=True), TypeError, "n_tokens"),
    (dict(n_tokens=4, weight=-1.0), ValueError, "weight"),
    (dict(n_tokens=4, weight="x"), TypeError, "weight"),
    (dict(n_tokens=4, min_size=0), ValueError, "min_size"),
    (dict(n_tokens=4, min_size=2.5), TypeError, "min_size"),
    (dict(n_tokens=4, priority="box"), TypeError, "priority"),
    (dict(n_tokens=4, priority=[(10, 10, 5, 20)]), ValueError, "priority"),
    (dict(n_tokens=4, priority=[(0, 0, 9, 9), (70, 0, 90, 9)]), ValueError,
     r"priority\[1\]: box \(70, 0, 90, 9\) lies outside the 64x64 image .*prioritise nothing"),
    (dict(n_tokens=4, priority=np.ones((10, 10))), ValueError, "priority"),
])
def test_validation(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        partition(torch.zeros(3, 64, 64), **kwargs)


# ----------------------------------------------------------------------------- batched API
def test_non_multiple_size_pads_and_keeps_size():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    layout = partition(img, 8)
    assert layout.image_size == (300, 200) and tuple(layout.grid) == (2, 1)
    assert layout.geometry.shape == (1, 16, 5) and layout.regions.dtype == torch.float32
    padded = np.zeros((512, 256, 3), np.float32)
    x = torch.from_numpy(img.astype(np.float64) / 127.5 - 1.0).float()
    padded[:300, :200] = x.numpy()
    grey = grey_of(torch.from_numpy(padded).permute(2, 0, 1)[None])[0]
    for p in range(2):
        want = partition_patch(grey[256 * p:256 * (p + 1)], 8)
        np.testing.assert_array_equal(layout.regions[0, 8 * p:8 * (p + 1)].numpy(), cells_to_arrays(want)[1])


def test_priority_box_gets_more_tokens():
    grey_img = torch.from_numpy(np.stack([_random_patch(8)] * 3)).float()
    box = (16, 16, 79, 79)

    def inside(layout):
        cells = _cells_of(layout.regions[0].numpy())
        cx, cy = (cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2
        return int(((cx >= box[0]) & (cx <= box[2]) & (cy >= box[1]) & (cy <= box[3])).sum())

    plain = inside(partition(grey_img, 64))
    boxed = inside(partition(grey_img, 64, priority=[box]))
    mask = np.zeros((256, 256), bool)
    mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    masked = inside(partition(grey_img, 64, priority=mask))
    assert boxed > plain + 10
    assert masked == boxed


# ----------------------------------------------------------------------------- kernel
def test_hist_kernel_matches_torch_twin():
    rng = np.random.default_rng(9)
    r = torch.from_numpy(rng.random((2, 64, 64)).astype(np.float32))
    r[1, :, :32] = 0.25  # flat part: zero gradients
    r[1, 10, 40] = r[1, 10, 41] + np.float32(11 / 512 / 8)  # a magnitude on a bin edge
    r[1, 0, :] = 3.0
    r[1, 1, :] = 0.0  # a step of 3: magnitudes above 5.5, dropped
    want = entropy_hist.gradient_hist_torch(r)
    assert want.shape == (2, 256) and want.dtype == torch.int32
    assert int(want[0].sum()) == 4096 and int(want[1].sum()) < 4096
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the interpreter (conftest)
    got = entropy_hist.gradient_hist_triton(r.to(dev)).cpu()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_hist_twin_is_numpy_histogram():
    import reference_partition as ref

    rng = np.random.default_rng(10)
    r = rng.random((3, 64, 64)).astype(np.float32)
    r[2] = np.round(r[2] * 4) / 4  # coarse values put many magnitudes exactly on bin edges
    got = entropy_hist.gradient_hist_torch(torch.from_numpy(r)).numpy()
    for k in range(3):
        gx, gy = ref.sobel(r[k])
        hist, _ = np.histogram(np.sqrt(gx**2 + gy**2), bins=512, range=(-5.5, 5.5))
        assert not hist[:256].any()
        np.testing.assert_array_equal(got[k], hist[256:])


def test_aot_specs_shape():
    specs = entropy_hist.aot_specs()
    assert len(specs) == 1
    fn, signature, constexprs = specs[0]
    assert set(constexprs) <= set(signature) and signature["r_ptr"] == "*fp32"
    assert hasattr(fn, "fn")


# ----------------------------------------------------------------------------- CPU fast histogram
def _blocks_for_fast_counts(h: int, w: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(h * 1000 + w)
    flat_step = torch.zeros(6, h, w)
    flat_step[:, :, w // 2:] = torch.rand(6, 1, 1, generator=g)
    return [
        torch.rand(6, h, w, generator=g),  # noise
        torch.randint(0, 256, (6, h, w), generator=g).float() / 255,  # 8-bit levels
        torch.round(torch.rand(6, h, w, generator=g) * 4) / 4,  # many magnitudes on bin edges
        flat_step,  # flat areas (zero gradients) and one edge
    ]


@pytest.mark.parametrize("h, w", [(8, 16), (16, 16), (16, 32), (32, 32), (64, 32), (64, 64), (128, 64),
                                  (256, 256), (37, 50), (100, 70), (3, 5), (1, 1), (150, 300)])
def test_fast_counts_equal_exact_histogram(h, w):
    from gpstoken.partition.fast_hist import MARGIN, fast_counts
    from gpstoken.partition.resize import resize

    groups = _blocks_for_fast_counts(h, w)
    want = torch.cat([entropy_hist.gradient_hist_torch(resize(b)).long() for b in groups])
    torch.testing.assert_close(fast_counts(groups, MARGIN), want, rtol=0, atol=0)
    # a margin wider than any bin marks every pixel uncertain: the exact path alone
    torch.testing.assert_close(fast_counts(groups[2:3], 300.0), want[12:18], rtol=0, atol=0)
