"""Partition speed: the literal reference (tests/reference_partition.py) vs gpstoken.partition.

Both are run side by side in one process on the same inputs (scikit-image photos, tiled to
the requested size). The fast path partitions all patches of an image together; the
reference runs patch by patch. Usage::

    python benchmarks/bench_partition.py [--threads N] [--repeat R] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_partition import grey_of as ref_grey_of  # noqa: E402
from reference_partition import reference_partition  # noqa: E402

from gpstoken.images import fold_patches, pad_to_patches  # noqa: E402
from gpstoken.partition import partition  # noqa: E402

CASES = [  # (label, side, tokens per 256 patch)
    ("256 / 16", 256, 16),
    ("256 / 128", 256, 128),
    ("256 / 256", 256, 256),
    ("512 / 4x64", 512, 64),
    ("1024 / 16x128 = 2048", 1024, 128),
]


def _photo(side: int) -> torch.Tensor:
    """A [1,3,side,side] image in [-1,1] from scikit-image's astronaut (resized by tiling crops)."""
    from skimage import data

    a = data.astronaut().astype(np.float64) / 127.5 - 1.0  # 512x512x3
    reps = -(-side // 512)
    a = np.tile(a, (reps, reps, 1))[:side, :side]
    return torch.from_numpy(a).permute(2, 0, 1).float()[None]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, device {args.device}, best of {args.repeat}")
    print(f"{'case':<24}{'reference ms':>14}{'fast ms':>10}{'ratio':>8}")
    for label, side, n in CASES:
        img = _photo(side)
        patches = fold_patches(*pad_to_patches(img))
        greys = [ref_grey_of(p) for p in patches]
        dev_img = img.to(args.device)
        partition(dev_img, n)  # warm-up (caches, kernel compile)
        fast = _best(lambda: partition(dev_img, n), args.repeat)
        ref = _best(lambda: [reference_partition(g, n) for g in greys], max(1, args.repeat - 2))
        print(f"{label:<24}{ref:>14.1f}{fast:>10.1f}{ref / fast:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
