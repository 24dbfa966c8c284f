"""Benchmark the render paths: forward + backward, dense reference vs culled torch (vs Triton on CUDA).

Token geometry imitates the entropy partition: a 256x256 patch is cut into N rectangular
cells (random halving of the longer side, cells from 8 to 128 pixels), each giving
the official initial Gaussian (:func:`gpstoken.geometry.geometry_from_cells`) plus a small
random rho.

Usage: ``python benchmarks/bench_render.py [--reps 5] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from gpstoken.geometry import geometry_from_cells
from gpstoken.render import render

# (B, N, h, w, C)
CASES = [(8, 128, 64, 64, 16), (8, 256, 64, 64, 16), (4, 256, 128, 128, 32)]


def partition_geometry(n: int, rng: random.Random) -> list[list[float]]:
    """N cells of a random halving partition -> [N,5] (sigma_x, sigma_y, rho, mu_x, mu_y)."""
    cells = [(x, y, 128, 128) for x in (0, 128) for y in (0, 128)]
    while len(cells) < n:
        i = rng.choice([k for k, c in enumerate(cells) if max(c[2], c[3]) > 8])
        x, y, cw, ch = cells.pop(i)
        if cw >= ch:
            cells += [(x, y, cw // 2, ch), (x + cw // 2, y, cw // 2, ch)]
        else:
            cells += [(x, y, cw, ch // 2), (x, y + ch // 2, cw, ch // 2)]
    geometry, _ = geometry_from_cells(torch.tensor([(x, y, x + cw - 1, y + ch - 1) for x, y, cw, ch in cells]))
    geometry[:, 2] = torch.tensor([rng.uniform(-0.5, 0.5) for _ in cells])
    return geometry.tolist()


def make_inputs(B: int, N: int, C: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    geo = torch.tensor([partition_geometry(N, rng) for _ in range(B)], dtype=torch.float32, device=device)
    feat = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed)).to(device)
    return geo, feat


def fwd_bwd(geo: torch.Tensor, feat: torch.Tensor, size: tuple[int, int], backend: str, grad: torch.Tensor):
    g = geo.detach().requires_grad_()
    f = feat.detach().requires_grad_()
    out = render(g, f, size, backend=backend)
    out.backward(grad)
    return out.detach(), g.grad, f.grad


def differences(ref, got) -> tuple[float, float]:
    """(max |diff| of the output, max over the two gradients of max |diff| / max |ref|)."""
    out = (ref[0] - got[0]).abs().max().item()
    grads = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, b in zip(ref[1:], got[1:]))
    return out, grads


def timed_pair(fn_a, fn_b, reps: int, sync) -> tuple[float, float]:
    """Best-of-``reps`` wall times (ms) of two functions, interleaved so that load from other
    processes affects both alike."""
    fn_a(), fn_b()  # warm-up (and Triton compilation)
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        for k, fn in enumerate((fn_a, fn_b)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0] * 1e3, best[1] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    print(f"render forward+backward, best of {args.reps} (ms); CPU threads {args.threads}"
          + (f"; GPU {torch.cuda.get_device_name()}" if cuda else ""))
    head = (f"{'B':>3} {'N':>4} {'h x w':>9} {'C':>3} | {'dense':>9} {'culled':>9} {'speed-up':>8} "
            f"{'out diff':>8} {'grad rel':>8}")
    if cuda:
        head += f" | {'cuda dense':>10} {'triton':>8} {'speed-up':>8} {'out diff':>8} {'grad rel':>8}"
    print(head)
    print("-" * len(head))
    for B, N, h, w, C in CASES:
        geo, feat = make_inputs(B, N, C, "cpu")
        grad = torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(1))
        ref = fwd_bwd(geo, feat, (h, w), "dense", grad)
        got = fwd_bwd(geo, feat, (h, w), "torch", grad)
        d_out, d_grad = differences(ref, got)
        t_dense, t_cull = timed_pair(
            lambda: fwd_bwd(geo, feat, (h, w), "dense", grad), lambda: fwd_bwd(geo, feat, (h, w), "torch", grad),
            args.reps, lambda: None,
        )
        row = (f"{B:>3} {N:>4} {f'{h}x{w}':>9} {C:>3} | {t_dense:>9.2f} {t_cull:>9.2f} {t_dense / t_cull:>7.1f}x "
               f"{d_out:>8.1e} {d_grad:>8.1e}")
        if cuda:
            gc, fc, gradc = geo.cuda(), feat.cuda(), grad.cuda()
            refc = fwd_bwd(gc, fc, (h, w), "dense", gradc)
            gotc = fwd_bwd(gc, fc, (h, w), "triton", gradc)
            dc_out, dc_grad = differences(refc, gotc)
            sync = torch.cuda.synchronize
            td, tt = timed_pair(
                lambda: fwd_bwd(gc, fc, (h, w), "dense", gradc), lambda: fwd_bwd(gc, fc, (h, w), "triton", gradc),
                args.reps, sync,
            )
            row += f" | {td:>10.3f} {tt:>8.3f} {td / tt:>7.1f}x {dc_out:>8.1e} {dc_grad:>8.1e}"
        print(row)
    print("out diff = max |out - dense|; "
          "grad rel = max over grad geometry / grad features of max|diff| / max|dense grad|.")


if __name__ == "__main__":
    main()
