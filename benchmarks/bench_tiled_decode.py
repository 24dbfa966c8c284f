"""Time and peak memory of the merged-map decoder: all at once vs tile by tile (exact).

The decoder of the default model (taken from the registry, whatever it is) decodes the rendered
map of a ``g x g``-patch image (random tokens-like input) once all at once and once with
:func:`gpstoken.models.tiled.decode_tiled`; each case runs in its own subprocess so its peak
RSS (``ru_maxrss``) is its own. Prints wall and CPU seconds, the tiled/untiled CPU-time ratio, peak
RSS and the largest difference between the two outputs (and the output's largest value).

    python benchmarks/bench_tiled_decode.py --grids 3 4 [--tile 1] [--threads 2] [--model default]
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
import torch
import gpstoken
from gpstoken.models.tiled import decode_tiled
g, tile, threads, model, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.set_num_threads(threads)
tok = gpstoken.load_tokenizer(model, device="cpu")
dec, cfg = tok.model.decoder, tok.config
torch.manual_seed(0)
rs = cfg.gps_rs
z = torch.randn(1, cfg.decoder.z_channels, rs[0] * g, rs[1] * g) + torch.linspace(-1, 1, rs[1] * g)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
with torch.inference_mode():
    y = dec(z, (g, g)) if tile == 0 else decode_tiled(dec, z, (g, g), tile)
dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.save(y, out)
print(json.dumps({"seconds": dt, "cpu": cpu, "peak_kb": peak, "base_kb": base}))
"""


def run(g: int, tile: int, threads: int, model: str, out: Path) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-c", CHILD, str(g), str(tile), str(threads), model, str(out)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["killed"])[-1][:80]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[3, 4], help="patches per side (3: 768x768)")
    ap.add_argument("--tile", type=int, default=1, help="patches per tile side of the tiled decode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default", help="registry name of the tokenizer")
    args = ap.parse_args()
    print(f"decoder of {args.model!r}, CPU, {args.threads} threads, tile {args.tile}, one process per case")
    print("seconds: wall clock; cpu: CPU seconds of the process (user + system), steadier on a shared machine")
    print(f"{'image':>10} {'untiled s':>9} {'tiled s':>8} {'untiled cpu':>11} {'tiled cpu':>9} {'cpu ratio':>9} "
          f"{'untiled GB':>10} {'tiled GB':>9} {'max |diff|':>10} {'max |out|':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for g in args.grids:
            a, b = Path(tmp, "a.pt"), Path(tmp, "b.pt")
            ru, rt = run(g, 0, args.threads, args.model, a), run(g, args.tile, args.threads, args.model, b)
            name = f"{256 * g}x{256 * g}"
            if "error" in ru or "error" in rt:
                print(f"{name:>10} {ru.get('error', '')} {rt.get('error', '')}")
                continue
            want = torch.load(a)
            diff = (want - torch.load(b)).abs().max().item()
            print(f"{name:>10} {ru['seconds']:>9.1f} {rt['seconds']:>8.1f} {ru['cpu']:>11.1f} {rt['cpu']:>9.1f} "
                  f"{rt['cpu'] / ru['cpu']:>9.2f} {ru['peak_kb'] / 2**20:>10.2f} {rt['peak_kb'] / 2**20:>9.2f} "
                  f"{diff:>10.2e} {want.abs().max().item():>9.2f}", flush=True)


if __name__ == "__main__":
    main()
