"""Property test of the public API (issue #11): random shapes, dtypes, value ranges and option
values. Every call returns a result of the right kind (finite, the right shape) or raises
ValueError/TypeError whose message starts with the name of the bad argument; never another
exception or a NaN output.

Bounded for CI: few examples, small images, tiny randomly initialised models (the input
contract does not depend on the weights).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import gpstoken
from gpstoken.checkpoint import GeneratorConfig
from gpstoken.models.configs import SiTConfig
from gpstoken.models.sit import SiT
from gpstoken.pipeline import Generator

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
CHANNELS = 4  # features of the tiny tokenizer (conftest.py)
N_GEN = 16  # tokens of the tiny generator


@pytest.fixture(scope="module")
def tiny_generator(tiny_tokenizer) -> Generator:
    torch.manual_seed(0)
    config = GeneratorConfig(SiTConfig(input_size=(N_GEN, 1), in_channels=5 + CHANNELS, hidden_size=32, depth=1,
                                       num_heads=2, num_classes=3),
                             latent_mean=(0.0,) * (5 + CHANNELS), latent_std=(0.1,) * (5 + CHANNELS), tokenizer="tiny")
    return Generator(SiT(config.texture), tiny_tokenizer, config, name="tiny-gen")


def call(fn, names: tuple[str, ...]):
    """``fn()``'s result, or None when it raised ValueError/TypeError naming one of ``names``."""
    try:
        result = fn()
        event("accepted")
        return result
    except (ValueError, TypeError) as e:
        event(f"refused: {str(e).split(':')[0]}")
        message = str(e)
        assert re.match(r"(%s)\b" % "|".join(map(re.escape, names)), message), f"{type(e).__name__}: {message}"
        return None


def mostly(valid, bad):
    """Draw from ``valid`` 5 times in 6, else from ``bad``: most calls then get far enough to
    exercise the next argument (or the model), and every argument is sometimes wrong."""
    return st.integers(0, 5).flatmap(lambda k: bad if k == 0 else valid)


# --------------------------------------------------------------------------- image inputs
SIDES = st.sampled_from([0, 1, 3, 31, 32, 40, 64])
OK_SIDES = st.sampled_from([32, 40, 64])
BOUNDS = st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (0.0, 255.0), (-1.0, 0.0), (-300.0, 300.0), (0.0, 0.0),
                          (-1.001, 1.0005)])


@st.composite
def tensors(draw, valid=False):
    h, w = draw(OK_SIDES if valid else SIDES), draw(OK_SIDES if valid else SIDES)
    layouts = ["chw", "bchw"] if valid else ["chw", "bchw", "hwc", "bhwc", "hw", "b4hw", "flat"]
    layout = draw(st.sampled_from(layouts))
    b = draw(st.integers(1 if valid else 0, 2))
    shape = {"chw": (3, h, w), "bchw": (b, 3, h, w), "hwc": (h, w, 3), "bhwc": (b, h, w, 3), "hw": (h, w),
             "b4hw": (b, 4, h, w), "flat": (h,)}[layout]
    lo, hi = (-1.0, 1.0) if valid else draw(BOUNDS)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * (hi - lo) + lo
    if not valid and x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf]))
    floats = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    x = x.to(draw(st.sampled_from(floats if valid else floats + [torch.uint8, torch.int64, torch.bool])))
    return x.requires_grad_() if x.is_floating_point() and draw(st.booleans()) else x


@st.composite
def arrays(draw, valid=False):
    h, w = draw(OK_SIDES if valid else SIDES), draw(OK_SIDES if valid else SIDES)
    shapes = [(h, w, 3), (h, w), (h, w, 4)] + ([] if valid else [(3, h, w), (h, w, 1), (h, w, 3, 1)])
    shape = draw(st.sampled_from(shapes))
    dtypes = [np.uint8, np.uint16, np.float32, np.float64] + ([] if valid else [np.int32, np.bool_])
    dtype = draw(st.sampled_from(dtypes))
    lo, hi = draw(BOUNDS) if not valid else (0.0, np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0)
    arr = np.random.default_rng(draw(st.integers(0, 99))).random(shape) * (hi - lo) + lo
    if np.issubdtype(dtype, np.integer):
        arr = np.clip(arr, np.iinfo(dtype).min, np.iinfo(dtype).max)
    return arr.astype(dtype)


@st.composite
def pil_images(draw, valid=False):
    size = (draw(OK_SIDES), draw(OK_SIDES)) if valid else (max(1, draw(SIDES)), max(1, draw(SIDES)))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "CMYK", "LA", "I;16", "I", "F"]))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size[::-1]).astype(np.uint16))
    if mode == "I":
        low = 0 if valid else draw(st.sampled_from([0, -5]))
        return Image.fromarray(rng.integers(low, 65536 if valid else 70000, size[::-1]).astype(np.int32), "I")
    if mode == "F":
        lo, hi = draw(st.sampled_from([(0.0, 1.0), (0.0, 255.0)])) if valid else draw(BOUNDS)
        return Image.fromarray((rng.random(size[::-1]) * (hi - lo) + lo).astype(np.float32))
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3)).astype(np.uint8)).convert(mode)


def single_images(valid=False):
    kinds = [tensors(valid), arrays(valid), pil_images(valid)]
    return st.one_of(*kinds) if valid else st.one_of(*kinds, st.sampled_from([None, "img.png", 3, [[0.5]]]))


def image_inputs():
    bad = st.one_of(single_images(), st.lists(single_images(), max_size=2))
    ok = st.one_of(single_images(True), arrays(True).map(lambda a: [a, a.copy()]))
    return mostly(ok, bad)


N_TOKENS = mostly(st.integers(1, 40), st.sampled_from([0, -1, None, 2.0, math.nan, True, "8", 1025]))


def expected_size(image) -> tuple[int, int]:
    """(H, W) of an accepted image input; (1, 1) for inputs that have none."""
    first = image[0] if isinstance(image, list) and image else image
    if isinstance(first, Image.Image):
        return first.height, first.width
    if isinstance(first, np.ndarray) and first.ndim >= 2:
        return tuple(first.shape[:2])
    if isinstance(first, torch.Tensor) and first.ndim >= 2:
        return tuple(first.shape[-2:])
    return 1, 1


@settings(FUZZ, max_examples=40)
@given(image_inputs(), N_TOKENS,
       mostly(st.sampled_from([None, [(0, 0, 10, 10)], "mask"]), st.sampled_from([[(0.5, 0, 1, 1)], "badmask", 7])),
       mostly(st.sampled_from([2.5, 1, 0.5]), st.sampled_from([0.0, -1.0, math.nan, True, "2"])))
def test_partition_accepts_or_names_the_argument(image, n_tokens, priority, weight):
    if isinstance(priority, str):
        h, w = expected_size(image)
        priority = np.ones((h, w)) if priority == "mask" else np.full((h, w), math.nan)
    layout = call(lambda: gpstoken.partition(image, n_tokens, priority=priority, weight=weight),
                  ("image", "n_tokens", "priority", "weight"))
    if layout is not None:
        assert layout.image_size == expected_size(image) and layout.n_tokens == n_tokens
        assert torch.isfinite(layout.geometry).all() and (layout.regions.abs() <= 1).all()


@settings(FUZZ, max_examples=6)
@given(image_inputs(), mostly(st.sampled_from([None, 4, 16]), st.sampled_from([0, math.nan])))
def test_reconstruct_gives_the_kind_it_was_given(tiny_tokenizer, image, n_tokens):
    out = call(lambda: gpstoken.reconstruct(image, n_tokens, model=tiny_tokenizer), ("image", "n_tokens"))
    if out is None:
        return
    outs, ins = (out, image) if isinstance(image, list) else ([out], [image])
    for o, i in zip(outs, ins):
        assert type(o) is type(i)
        if isinstance(i, Image.Image):
            assert o.size == i.size and o.mode == "RGB"
        elif isinstance(i, np.ndarray):
            assert o.shape[:2] == i.shape[:2] and o.dtype == i.dtype and np.isfinite(o).all()
        else:
            assert o.shape == i.shape and o.dtype == torch.float32 and torch.isfinite(o).all()
            assert not o.requires_grad


# --------------------------------------------------------------------------- render
BAD_VALUES = {0: [-1.0, 0.0, math.nan], 1: [0.0, math.inf], 2: [-1.0, 1.0, math.nan], 3: [math.nan], 4: [math.inf]}


@st.composite
def token_tensors(draw, b, n, c):
    """Valid random tokens, then now and then one field or feature made invalid."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    g = torch.cat([torch.rand(b, n, 2, generator=gen) * 0.5 + 0.01, torch.rand(b, n, 1, generator=gen) * 1.8 - 0.9,
                   torch.rand(b, n, 2, generator=gen) * 3 - 1.5], -1)
    f = torch.randn(b, n, c, generator=gen)
    what = draw(mostly(st.just("ok"), st.sampled_from(["geometry", "features", "dtype"])))
    if what == "geometry" and g.numel():
        k = draw(st.integers(0, 4))
        g[draw(st.integers(0, b - 1)), draw(st.integers(0, n - 1)), k] = draw(st.sampled_from(BAD_VALUES[k]))
    elif what == "features" and f.numel():
        f.view(-1)[draw(st.integers(0, f.numel() - 1))] = math.nan
    elif what == "dtype":
        g = g.to(torch.int32)
    return g.to(draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))) if what != "dtype" else g, f


@settings(FUZZ, max_examples=40)
@given(st.data(), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3),
       mostly(st.sampled_from([(8, 8), (5, 7), (2, 2)]), st.sampled_from([(1, 8), (8.0, 8), (0, 0), "8x8", (3,)])),
       mostly(st.sampled_from([3.0, 0.5, math.inf, 1]), st.sampled_from([0.0, -1.0, math.nan, True, "3"])),
       mostly(st.sampled_from(["auto", "torch", "dense"]), st.just("cuda")))
def test_render_returns_a_finite_map_or_names_the_argument(data, b, n, c, size, support, backend):
    geometry, features = data.draw(token_tensors(b, n, c))
    out = call(lambda: gpstoken.render(geometry, features, size, support=support, backend=backend), ("render",))
    if out is not None:
        assert out.shape == (b, c, *size) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- Layout / GPSTokens
def _grid_layout() -> gpstoken.Layout:
    """A 300x300 image: a 2x2 grid of patches of 8 tokens."""
    return gpstoken.partition(torch.linspace(-1, 1, 300 * 300 * 3).reshape(3, 300, 300).sin(), 8)


GRID = _grid_layout()


@settings(FUZZ, max_examples=40)
@given(st.data(), mostly(st.sampled_from(["ok", "noise"]),
                         st.sampled_from(["regions*255", "swap", "int", "shape", "nan", "sigma", "rho"])),
       mostly(st.just((300, 300)), st.sampled_from([(256, 256), (300.0, 300), (0, 300), "300"])),
       mostly(st.sampled_from([None, (2, 2)]), st.sampled_from([(1, 1), (2,)])))
def test_layout_and_tokens_construction(data, change, image_size, grid):
    g, r = GRID.geometry.clone(), GRID.regions.clone()
    i = data.draw(st.integers(0, g.shape[1] - 1))
    if change == "regions*255":
        r = (r + 1) * 127.5
    elif change == "swap":
        r = r[..., [2, 3, 0, 1]]
    elif change == "int":
        g = g.long()
    elif change == "shape":
        g = g[..., :4]
    elif change == "nan":
        g[0, i, data.draw(st.integers(0, 4))] = math.nan
    elif change == "noise":
        g = g + 0.05 * torch.randn_like(g).abs()
    elif change in ("sigma", "rho"):
        g[0, i, 0 if change == "sigma" else 2] = data.draw(st.sampled_from([0.0, -1.0, 1.0, 1.5]))
    layout = call(lambda: gpstoken.Layout(g, r, image_size, grid), ("Layout",))
    if layout is None:
        return
    assert layout.total_tokens == 32 and layout.geometry.dtype == torch.float32
    features = torch.randn(1, layout.total_tokens, data.draw(mostly(st.just(3), st.just(0))))
    if features.shape[-1] and data.draw(mostly(st.just(False), st.just(True))):
        features[0, i, 0] = math.inf
    model = data.draw(mostly(st.just("m"), st.sampled_from(["", None])))
    tokens = call(lambda: gpstoken.GPSTokens(layout.geometry, features, image_size, layout, model), ("GPSTokens",))
    if tokens is not None:
        assert torch.isfinite(tokens.as_array()).all()


# --------------------------------------------------------------------------- edit_layout
def _in_patch(p: int) -> st.SearchStrategy:
    """A pixel (x, y) inside patch p of the 2x2 grid of a 300x300 image."""
    row, col = divmod(p, 2)
    return st.tuples(st.floats(col * 256, min(col * 256 + 255, 299)), st.floats(row * 256, min(row * 256 + 255, 299)))


VALID_MOVES = st.dictionaries(st.integers(0, 31), st.just(None), max_size=3).flatmap(
    lambda d: st.fixed_dictionaries({i: _in_patch(i // 8) for i in d}))
BAD_MOVES = st.one_of(
    st.dictionaries(st.sampled_from([0, 31, -1, 40, "a", 1.0]),
                    st.one_of(st.tuples(st.sampled_from([0, 300, -5, math.nan]), st.just(3)),
                              st.sampled_from([(1,), "ab", None])), min_size=1, max_size=2),
    st.sampled_from([[(0, (1, 2))], "move"]))
REMOVES = mostly(st.sampled_from([None, [], [0, 8, 16, 24], [-1, 7, 15, 23], np.arange(32) % 8 == 3]),
                 st.sampled_from([[0], [10_000], [0.5], "0", np.zeros(3, bool), np.ones(32, bool)]))
ADDS = mostly(st.sampled_from([None, [(0, 0, 63, 63), (256, 0, 290, 40), (0, 256, 40, 290), (256, 256, 299, 299)]]),
              st.sampled_from([[], [(0, 0, 63, 63)], [(10, 10, 5, 5)], [(0, 0, math.nan, 1)], [(0, 0, 400, 400)],
                               "x", [[1, 2, 3]], 5]))


@settings(FUZZ, max_examples=40)
@given(REMOVES, mostly(VALID_MOVES, BAD_MOVES), ADDS, mostly(st.booleans(), st.just("yes")))
def test_edit_layout_edits_or_names_the_argument(remove, move, add, calibrate):
    out = call(lambda: gpstoken.edit_layout(GRID, remove=remove, move=move, add=add, calibrate=calibrate),
               ("remove", "move", "add", "calibrate"))
    if out is not None:
        assert out.grid == (2, 2) and out.image_size == (300, 300)
        assert torch.isfinite(out.geometry).all() and (out.regions.abs() <= 1).all()


# --------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def gen_layout() -> gpstoken.Layout:
    """A user layout for the tiny generator (it has no layout model or bank)."""
    return gpstoken.partition(torch.linspace(-1, 1, 256 * 256 * 3).reshape(3, 256, 256).sin(), N_GEN)


@settings(FUZZ, max_examples=10)
@given(mostly(st.integers(0, 2), st.sampled_from([3, -1, 1.0, "cat"])),
       mostly(st.integers(1, 2), st.sampled_from([0, True, 1.5])),
       mostly(st.sampled_from([None, 0, 7]), st.sampled_from([-1, 2**70, 1.5, math.nan])),
       mostly(st.sampled_from([1.0, 1.5]), st.sampled_from([0.5, math.nan, math.inf, "2"])),
       mostly(st.integers(2, 3), st.sampled_from([1, 2.0, math.nan])),
       mostly(st.sampled_from(["euler", "sde", "ode"]), st.sampled_from(["nope", None])),
       mostly(st.sampled_from([(0.0, 1.0), (0.2, 0.8)]), st.sampled_from([(0.2, 0.1), (0.0, math.nan), (0.0,), "all"])))
def test_generate_options(tiny_generator, gen_layout, class_id, n, seed, cfg_scale, steps, sampler, interval):
    result = call(lambda: tiny_generator.generate(class_id, n=n, seed=seed, layout=gen_layout, cfg_scale=cfg_scale,
                                                  steps=steps, sampler=sampler, guidance_interval=interval,
                                                  progress=False),
                  ("class_id", "n", "seed", "cfg_scale", "steps", "sampler", "guidance_interval"))
    if result is not None:
        assert len(result.images) == n and all(im.size == (256, 256) for im in result.images)
        assert torch.isfinite(result.tokens.as_array()).all()
