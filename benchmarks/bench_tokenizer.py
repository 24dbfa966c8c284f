"""End-to-end encode+decode: GPSTokenizer vs the straightforward reference (same weights).

    python benchmarks/bench_tokenizer.py [--arch gpstoken-m128] [--batch 1 4] [--reps 2] [--threads 2]

Random-initialised weights (seeded; the geometry head gets small random weights so the
Gaussians move), random 256x256 images and a fixed layout of N cells whose sizes vary
(rows of 16x16, 16x32 and 32x32 cells), so RoIAlign sees boxes of several sizes.
Prints one table: best-of-reps seconds of both, the speed-up, and the max abs difference.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpstoken.models.configs import TOKENIZER_ARCHS  # noqa: E402
from gpstoken.models.tokenizer import GPSTokenizer  # noqa: E402

from reference_tokenizer import ReferenceTokenizer  # noqa: E402


def layout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g_init [n,5] and regions [n,4] (docs/algorithms.md section 1 formulas) of n cells tiling 256x256."""
    cells: list[tuple[int, int, int, int]] = []
    y = 0
    sizes = [(32, 32), (16, 32), (16, 16)]
    while len(cells) < n:
        h, w = sizes[(y // 32) % 3]
        for x in range(0, 256, w):
            cells.append((x, y, x + w - 1, y + h - 1))
        y = (y + h) % 256
    cells = cells[:n]
    t = torch.tensor(cells, dtype=torch.float64)
    x0, y0, x1, y1 = t.unbind(1)
    g = torch.stack(
        [(x1 - x0) / 256 * 2 / 3, (y1 - y0) / 256 * 2 / 3, torch.zeros_like(x0),
         ((x0 + x1) / 2 / 255 - 0.5) * 2, ((y0 + y1) / 2 / 255 - 0.5) * 2], 1)
    return g.float(), ((t / 255 - 0.5) * 2).float()


def best_time(fn, reps: int) -> tuple[float, torch.Tensor]:
    out = fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpstoken-m128")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TOKENIZER_ARCHS[args.arch]
    torch.manual_seed(0)
    model = GPSTokenizer(cfg).eval()
    torch.nn.init.normal_(model.to_gps[0].weight, std=0.02)
    ref = ReferenceTokenizer(cfg).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    g1, r1 = layout(cfg.gps_num)

    print(f"{args.arch}, 256x256, N={cfg.gps_num}, threads={args.threads}, best of {args.reps}")
    print(f"{'batch':>5} {'reference s':>12} {'gpstoken s':>11} {'speed-up':>9} {'max|diff| recon':>16} "
          f"{'max|diff| tokens':>17}")
    for b in args.batch:
        images = torch.rand(b, 3, 256, 256) * 2 - 1
        g, r = g1.expand(b, -1, -1).clone(), r1.expand(b, -1, -1).clone()
        with torch.inference_mode():
            t_ref, (rec_ref, tok_ref) = best_time(lambda: ref(images, g, r), args.reps)
            t_new, (rec_new, tok_new) = best_time(lambda: model(images, g, r), args.reps)
        d_rec = (rec_ref - rec_new).abs().max().item()
        d_tok = (tok_ref - tok_new).abs().max().item()
        print(f"{b:>5} {t_ref:>12.3f} {t_new:>11.3f} {t_ref / t_new:>8.2f}x {d_rec:>16.2e} {d_tok:>17.2e}")


if __name__ == "__main__":
    main()
