"""Peak memory and time of ``gpstoken.reconstruct`` vs image size (a registry model, CPU).

Each case runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own. Prints a
table: image size, patches, seconds and CPU seconds (user + system: steadier on a shared
machine), each also per patch, peak RSS; and, when ``--untiled`` is
given, the same cases with tiling disabled (the old all-at-once path) for comparison.

    python benchmarks/bench_memory.py --sizes 512 1024 2048 4096 [--untiled] [--threads 2] [--model default]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
import gpstoken, gpstoken.pipeline.tokenizer as pipeline
size, threads, untiled, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[5]
torch.set_num_threads(threads)
if untiled:
    pipeline.UNTILED_PATCHES = pipeline.ENCODE_CHUNK = 10**9
photo = Image.open(sys.argv[4]).convert("RGB")
img = photo.resize((size, size), Image.BICUBIC)          # a photo at this size
tok = gpstoken.load_tokenizer(model, device="cpu")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
out = gpstoken.reconstruct(img, model=tok)
dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
assert out.size == img.size
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "cpu": cpu, "peak_kb": peak, "base_kb": base, "model": tok.name}))
"""


def run(size: int, threads: int, untiled: bool, photo: str, timeout: float, model: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(size), str(threads), "1" if untiled else "0", photo,
                            model],
                           capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["killed"])[-1][:60]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--untiled", action="store_true", help="also run the all-at-once path (no chunks/tiles)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--model", default="default", help="registry name of the tokenizer")
    args = ap.parse_args()
    photo = str(Path(__file__).resolve().parents[1] / "examples" / "data" / "astronaut.png")
    modes = [False, True] if args.untiled else [False]
    print(f"reconstruct, model {args.model!r}, CPU, {args.threads} threads, one process per case")
    print(f"{'size':>10} {'patches':>7} {'path':>8} {'seconds':>9} {'s/patch':>8} {'cpu s':>8} {'cpu s/patch':>11} "
          f"{'peak RSS GB':>12} {'model loaded GB':>16} model")
    for size in args.sizes:
        patches = (-(-size // 256)) ** 2
        for untiled in modes:
            r = run(size, args.threads, untiled, photo, args.timeout, args.model)
            name = "untiled" if untiled else "tiled"
            if "error" in r:
                print(f"{size:>5}x{size:<4} {patches:>7} {name:>8} {r['error']}")
                continue
            print(f"{size:>5}x{size:<4} {patches:>7} {name:>8} {r['seconds']:>9.1f} {r['seconds'] / patches:>8.2f} "
                  f"{r['cpu']:>8.1f} {r['cpu'] / patches:>11.2f} "
                  f"{r['peak_kb'] / 2**20:>12.2f} {r['base_kb'] / 2**20:>16.2f} {r['model']}", flush=True)


if __name__ == "__main__":
    main()
