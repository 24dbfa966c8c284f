"""Render paths (dense reference, culled torch, Triton kernels) vs the official fixtures and
vs each other, with gradients; input validation.

The Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, set by conftest) or on
a GPU (``GPSTOKEN_TEST_NO_INTERPRET=1`` with CUDA); shapes here are tiny for the interpreter.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpstoken.render import pixel_bounds, pixel_coords, render, render_dense

CUDA = torch.cuda.is_available()
TRITON_OK = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton needs CUDA or TRITON_INTERPRET=1")


def random_tokens(B: int, N: int, C: int, seed: int, *, spread: float = 1.2, dtype=torch.float32, device="cpu"):
    """geometry [B,N,5] (sigma in [0.02, 0.42], |rho| <= 0.8, centres in [-spread, spread]), features [B,N,C]."""
    gen = torch.Generator().manual_seed(seed)
    sig = torch.rand(B, N, 2, generator=gen) * 0.4 + 0.02
    rho = torch.rand(B, N, 1, generator=gen) * 1.6 - 0.8
    mu = (torch.rand(B, N, 2, generator=gen) * 2 - 1) * spread
    feat = torch.randn(B, N, C, generator=gen)
    return torch.cat([sig, rho, mu], -1).to(device, dtype), feat.to(device, dtype)


def run(geometry, features, size, backend, grad_out, support=3.0):
    """(out, grad_geometry, grad_features) of sum(render * grad_out)."""
    g = geometry.detach().clone().requires_grad_()
    f = features.detach().clone().requires_grad_()
    if backend == "reference":
        out = render_dense(g, f, size, support)
    else:
        out = render(g, f, size, support=support, backend=backend)
    gg, gf = torch.autograd.grad((out * grad_out).sum(), (g, f))
    return out.detach(), gg, gf


def assert_close_scaled(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """|got - ref| <= tol * max(1, max|ref|): float32 sums over many pixels differ in order."""
    scale = max(1.0, ref.abs().max().item())
    err = (got.to(ref.dtype) - ref).abs().max().item()
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} > {tol:g} * {scale:.3g}"


# --------------------------------------------------------------------------- official fixtures
def load_render_case(official, k: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    data = load_file(str(official / "render" / "cases.safetensors"))
    return {name.split("/", 1)[1]: t for name, t in data.items() if name.startswith(f"case{k}/")}


@pytest.mark.parametrize("backend", ["dense", "torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_official_render_parity(official, case, backend):
    c = load_render_case(official, case)
    h, w = c["size_hw"].tolist()
    geometry = torch.cat([c["sigmas"], c["coords"]], -1)[None].to(DEV if backend == "triton" else "cpu")
    features = c["colors"][None].to(geometry.device)
    grad_out = c["grad_out"].permute(2, 0, 1)[None].to(geometry.device)
    out, gg, gf = run(geometry, features, (h, w), backend, grad_out, support=float(c["dmax"]))
    out, gg, gf = out.cpu(), gg.cpu(), gf.cpu()
    assert out.shape == (1, c["colors"].shape[1], h, w)
    assert (out[0].permute(1, 2, 0) - c["out"]).abs().max().item() <= 1e-5
    assert_close_scaled(gg[0, :, :3], c["grad_sigmas"], 1e-5, "grad sigmas")
    assert_close_scaled(gg[0, :, 3:], c["grad_coords"], 1e-5, "grad coords")
    assert_close_scaled(gf[0], c["grad_colors"], 1e-5, "grad colors")


# --------------------------------------------------------------------------- random vs reference
@pytest.mark.parametrize(
    "B,N,C,h,w,support",
    [(2, 12, 5, 13, 17, 3.0), (1, 30, 3, 24, 9, 1.0), (3, 7, 16, 16, 16, math.inf), (1, 5, 2, 2, 3, 3.0)],
)
def test_culled_matches_dense_float64(B, N, C, h, w, support):
    geometry, features = random_tokens(B, N, C, seed=B * 100 + N, dtype=torch.float64)
    grad_out = torch.randn(B, C, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = run(geometry, features, (h, w), "reference", grad_out, support)
    got = run(geometry, features, (h, w), "torch", grad_out, support)
    assert got[0].dtype == torch.float64
    for name, a, b in zip(("out", "grad geometry", "grad features"), got, ref):
        assert_close_scaled(a, b, 1e-10, name)


def test_culled_matches_dense_float32():
    geometry, features = random_tokens(4, 40, 8, seed=3)
    grad_out = torch.randn(4, 8, 32, 24, generator=torch.Generator().manual_seed(2))
    ref = run(geometry, features, (32, 24), "reference", grad_out)
    got = run(geometry, features, (32, 24), "torch", grad_out)
    for name, a, b in zip(("out", "grad geometry", "grad features"), got, ref):
        assert_close_scaled(a, b, 1e-5, name)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16), B=st.integers(1, 2), N=st.integers(1, 9), C=st.integers(1, 4),
    h=st.integers(2, 12), w=st.integers(2, 12), support=st.sampled_from([0.5, 2.0, 3.0, 100.0]),
)
def test_culled_matches_dense_property(seed, B, N, C, h, w, support):
    geometry, features = random_tokens(B, N, C, seed, spread=1.5, dtype=torch.float64)
    grad_out = torch.randn(B, C, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = run(geometry, features, (h, w), "reference", grad_out, support)
    got = run(geometry, features, (h, w), "torch", grad_out, support)
    for name, a, b in zip(("out", "grad geometry", "grad features"), got, ref):
        assert_close_scaled(a, b, 1e-10, name)


def test_culled_gradcheck():
    geometry, features = random_tokens(1, 4, 2, seed=5, dtype=torch.float64)
    geometry.requires_grad_()
    features.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda g, f: render(g, f, (9, 7), backend="torch"), (geometry, features), eps=1e-6, atol=1e-6
    )


def test_box_edge_pixel_is_kept():
    # mu_x = -1, support * sigma_x = 2 * 0.25 = 0.5 = x_1 + 1 exactly (w = 5): pixel 1 lies on the
    # box edge and is kept (the comparison is <=); pixel 2 is outside.
    geometry = torch.tensor([[[0.25, 1.0, 0.0, -1.0, 0.0]]])
    features = torch.ones(1, 1, 1)
    ref = render_dense(geometry, features, (3, 5), 2.0)
    for backend in ("torch", "triton") if TRITON_OK else ("torch",):
        out = render(geometry.to(DEV), features.to(DEV), (3, 5), support=2.0, backend=backend).cpu()
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
        assert out[0, 0, 1, 1] > 0.01 and out[0, 0, 1, 2] == 0


def test_tokens_outside_map_give_zero():
    geometry = torch.tensor([[[0.05, 0.05, 0.3, 3.0, 0.0], [0.05, 0.05, -0.3, 0.0, -2.0]]], requires_grad=True)
    features = torch.randn(1, 2, 3, requires_grad=True)
    out = render(geometry, features, (8, 8), backend="torch")
    assert torch.equal(out, torch.zeros(1, 3, 8, 8))
    out.sum().backward()
    assert torch.equal(geometry.grad, torch.zeros_like(geometry))
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_empty_token_set():
    out = render(torch.zeros(2, 0, 5), torch.zeros(2, 0, 4), (6, 5))
    assert torch.equal(out, torch.zeros(2, 4, 6, 5))


@pytest.mark.parametrize("support", [3.0, 0.7])
def test_pixel_bounds_are_exact(support):
    geometry, _ = random_tokens(1, 300, 1, seed=9, spread=1.5)
    h, w = 19, 23
    b = pixel_bounds(geometry, h, w, support)[0]
    sx, sy, _, mx, my = geometry[0].T
    in_x = (pixel_coords(w)[None] - mx[:, None]).abs() <= support * sx[:, None]  # [N,w], as render_dense
    in_y = (pixel_coords(h)[None] - my[:, None]).abs() <= support * sy[:, None]
    empty = 0
    for n in range(300):
        for (first, last), inside in (((b[n, 0], b[n, 1]), in_y[n]), ((b[n, 2], b[n, 3]), in_x[n])):
            idx = inside.nonzero()[:, 0]
            if idx.numel():
                assert (first, last) == (idx.min(), idx.max()) and idx.numel() == last - first + 1
            else:
                empty += 1
                assert last == first - 1
    assert empty > 0


# --------------------------------------------------------------------------- dtypes
def test_half_inputs_compute_in_float32():
    geometry, features = random_tokens(2, 10, 4, seed=11)
    ref = render(geometry.half().float(), features.bfloat16().float(), (12, 12))
    g = geometry.half().requires_grad_()
    f = features.bfloat16().requires_grad_()
    out = render(g, f, (12, 12))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.bfloat16())
    out.float().sum().backward()
    assert g.grad.dtype == torch.float16 and f.grad.dtype == torch.bfloat16
    assert torch.isfinite(g.grad).all() and torch.isfinite(f.grad.float()).all()


def test_float64_geometry_float32_features():
    geometry, features = random_tokens(1, 6, 3, seed=12, dtype=torch.float64)
    out = render(geometry, features.float(), (10, 8))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, render_dense(geometry, features, (10, 8)).float())


# --------------------------------------------------------------------------- Triton kernels
@needs_triton
@pytest.mark.parametrize("B,N,C,h,w", [(2, 9, 3, 11, 13), (1, 6, 70, 8, 6)])
def test_triton_matches_torch(B, N, C, h, w):
    geometry, features = random_tokens(B, N, C, seed=N, device=DEV)
    grad_out = torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(4)).to(DEV)
    ref = run(geometry.cpu(), features.cpu(), (h, w), "torch", grad_out.cpu())
    got = run(geometry, features, (h, w), "triton", grad_out)
    for name, a, b in zip(("out", "grad geometry", "grad features"), got, ref):
        assert_close_scaled(a.cpu(), b, 1e-5, name)


@needs_triton
def test_triton_kernels_small_tiles():
    """Several pixel tiles, pixel chunks and channel blocks per program; out-of-map tokens."""
    from gpstoken.kernels.splat_backward import splat_backward
    from gpstoken.kernels.splat_forward import splat_forward

    B, N, C, h, w = 2, 8, 5, 10, 7
    geometry, features = random_tokens(B, N, C, seed=21, spread=1.6, device=DEV)
    grad_out = torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(5)).to(DEV)
    ref = run(geometry.cpu(), features.cpu(), (h, w), "torch", grad_out.cpu())
    xs, ys = pixel_coords(w, DEV), pixel_coords(h, DEV)
    out = splat_forward(geometry, features, xs, ys, 3.0, block_h=4, block_w=4, block_c=2)
    gg, gf = splat_backward(geometry, features, xs, ys, 3.0, grad_out, block_p=16, block_c=2)
    for name, a, b in zip(("out", "grad geometry", "grad features"), (out, gg, gf), ref):
        assert_close_scaled(a.cpu(), b, 1e-5, name)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    geometry, features = random_tokens(1, 2, 1, seed=0)
    with pytest.raises(ValueError, match="CUDA"):
        render(geometry, features, (4, 4), backend="triton")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "field,value,message",
    [
        (0, 0.0, r"\(b=1, n=2\) has sigma_x=0.0, which must be > 0"),
        (1, -0.1, r"\(b=1, n=2\) has sigma_y=-0.1.*must be > 0"),
        (2, 1.0, r"\(b=1, n=2\) has rho=1.0.*\|rho\| < 1"),
        (2, -1.5, r"\(b=1, n=2\) has rho=-1.5"),
        (3, math.nan, r"\(b=1, n=2\) has mu_x=nan, which is not finite"),
        (4, math.inf, r"\(b=1, n=2\) has mu_y=inf"),
        (0, math.inf, r"sigma_x=inf, which is not finite"),
    ],
)
def test_invalid_geometry_is_named(field, value, message):
    geometry, features = random_tokens(2, 4, 3, seed=1)
    geometry[1, 2, field] = value
    geometry[1, 3, 0] = -1.0
    with pytest.raises(ValueError, match=message + r".*2 invalid token"):
        render(geometry, features, (8, 8))


def test_invalid_features_are_named():
    geometry, features = random_tokens(1, 3, 4, seed=1)
    features[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match=r"\(b=0, n=1\) has non-finite feature 2"):
        render(geometry, features, (8, 8))


@pytest.mark.parametrize(
    "geometry,features,size,kwargs,message",
    [
        (torch.rand(4, 5), torch.rand(4, 3), (8, 8), {}, "geometry must be"),
        (torch.rand(1, 4, 4), torch.rand(1, 4, 3), (8, 8), {}, "geometry must be"),
        (torch.rand(1, 4, 5), torch.rand(1, 3, 3), (8, 8), {}, "features must be"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3).long(), (8, 8), {}, "floating point"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (1, 8), {}, "at least 2x2"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (8,), {}, "pair of ints"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (8.5, 8), {}, "pair of ints"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (8, 8), {"support": 0.0}, "support"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (8, 8), {"support": math.nan}, "support"),
        (torch.rand(1, 4, 5), torch.rand(1, 4, 3), (8, 8), {"backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments(geometry, features, size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(geometry, features, size, **kwargs)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_backend_on_cuda():
    """float32 CUDA inputs go to Triton, float64 ones to the culled torch path (sparse ops on CUDA)."""
    for dtype in (torch.float32, torch.float64):
        geometry, features = random_tokens(2, 20, 6, seed=31, dtype=dtype)
        grad_out = torch.randn(2, 6, 16, 12, dtype=dtype, generator=torch.Generator().manual_seed(6))
        ref = run(geometry, features, (16, 12), "reference", grad_out)
        got = run(geometry.cuda(), features.cuda(), (16, 12), "auto", grad_out.cuda())
        for name, a, b in zip(("out", "grad geometry", "grad features"), got, ref):
            assert a.dtype == dtype
            assert_close_scaled(a.cpu(), b, 1e-5 if dtype == torch.float32 else 1e-10, name)


def test_render_after_inference_mode_still_supports_autograd():
    """Pixel-centre caching must not leak inference tensors into later autograd (regression)."""
    from gpstoken.render import render

    geo = torch.tensor([[[0.2, 0.3, 0.1, 0.0, 0.1]]])
    feat = torch.ones(1, 1, 2)
    with torch.inference_mode():
        render(geo, feat, (13, 11), backend="triton")
        render(geo, feat, (13, 11), backend="torch")
    for backend in ("triton", "torch"):
        g, f = geo.clone().requires_grad_(), feat.clone().requires_grad_()
        render(g, f, (13, 11), backend=backend).sum().backward()
        assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0
