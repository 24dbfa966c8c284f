"""Benchmark loading the official layout bank: the restricted unpickling of ``initg.pickle``
against the cached safetensors bank that later loads read, side by side in one run.

The pickle is synthetic but has the official structure (``dict class id -> list of [N, 5]
float32 arrays``); the official bank is 1000 classes x 50 layouts x 128 tokens (about 128 MB).

Usage: ``python benchmarks/bench_layout_bank.py [--classes 1000] [--layouts 50] [--tokens 128] [--reps 3]``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import best_of

from gpstoken.hub import portable as hub_portable
from gpstoken.layout_bank import load_layout_bank, read_initg_pickle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--layouts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    data = {c: [rng.random((a.tokens, 5), dtype=np.float32) for _ in range(a.layouts)] for c in range(a.classes)}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_HUB_CACHE"] = str(Path(tmp) / "cache")
        src = Path(tmp) / "initg.pickle"
        src.write_bytes(pickle.dumps(data, protocol=4))
        t0 = time.perf_counter()
        load_layout_bank(src)  # first load: unpickle + write the cache
        first = time.perf_counter() - t0
        unpickle = best_of(lambda: read_initg_pickle(src), a.reps)
        # a new process: the pickle's sha256 is computed again (in-process it is memoised)
        cached = best_of(lambda: (hub_portable._sha256.cache_clear(), load_layout_bank(src)), a.reps)
        size = src.stat().st_size / 2**20
    print(f"initg.pickle: {a.classes} classes x {a.layouts} layouts x {a.tokens} tokens ({size:.0f} MB)")
    print("| load | seconds | vs restricted unpickle |")
    print("|---|---|---|")
    print(f"| restricted unpickle (read_initg_pickle) | {unpickle:.3f} | 1.00x |")
    print(f"| first load_layout_bank (unpickle + cache write) | {first:.3f} | {unpickle / first:.2f}x |")
    print(f"| later load_layout_bank (sha256 + cached safetensors) | {cached:.3f} | {unpickle / cached:.2f}x |")


if __name__ == "__main__":
    main()
