"""Partition speed: the literal reference (tests/reference_partition.py) vs gpstoken.partition.

All run side by side in one process on the same inputs (scikit-image photos, tiled to the
requested size): the reference patch by patch, gpstoken's pure-torch path and its native C
path (``gpstoken._cpartition``, when built) on all patches of an image together. Every
gpstoken result is checked equal to the reference's cells. Usage::

    python benchmarks/bench_partition.py [--threads N] [--repeat R] [--device cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _timing import best_of  # noqa: E402

from gpstoken.geometry import cells_to_arrays, split_patches  # noqa: E402
from gpstoken.images import pad_to_patches  # noqa: E402
from gpstoken.partition import native as native_path  # noqa: E402
from gpstoken.partition import native_available, partition  # noqa: E402

from reference_partition import grey_of as ref_grey_of  # noqa: E402
from reference_partition import reference_partition  # noqa: E402

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


@contextlib.contextmanager
def _torch_path():
    """Temporarily hide the native module so gpstoken runs its pure-torch path."""
    native, native_path._native = native_path._native, None
    try:
        yield
    finally:
        native_path._native = native


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = native_available() and args.device == "cpu"
    print(f"torch {torch.__version__}, threads {args.threads}, device {args.device}, best of {args.repeat}, "
          f"native {'built' if native_available() else 'not built'}")
    head = f"{'case':<24}{'reference ms':>14}{'torch ms':>10}{'ratio':>8}"
    print(head + (f"{'native ms':>11}{'ratio':>8}" if native else ""))
    for label, side, n in CASES:
        img = _photo(side)
        patches = split_patches(*pad_to_patches(img))
        greys = [ref_grey_of(p) for p in patches]
        dev_img = img.to(args.device)
        ref = best_of(lambda: [reference_partition(g, n) for g in greys], max(1, args.repeat - 2)) * 1e3
        want = np.concatenate([cells_to_arrays(reference_partition(g, n)[0])[1] for g in greys])
        runs = []
        with _torch_path() if args.device == "cpu" else contextlib.nullcontext():
            runs.append(_timed(dev_img, n, want, args.repeat))
        if native:
            runs.append(_timed(dev_img, n, want, args.repeat))
        print(f"{label:<24}{ref:>14.1f}" + "".join(f"{t:>10.1f}{ref / t:>7.1f}x" for t in runs), flush=True)


def _timed(img: torch.Tensor, n: int, want: np.ndarray, repeat: int) -> float:
    """Best time of ``partition(img, n)`` in ms, after checking its cells equal the reference's."""
    got = partition(img, n).regions[0].numpy()  # also the warm-up (caches, kernel compile)
    if not np.array_equal(got, want):
        raise AssertionError("gpstoken.partition differs from the reference")
    return best_of(lambda: partition(img, n), repeat) * 1e3


if __name__ == "__main__":
    main()
