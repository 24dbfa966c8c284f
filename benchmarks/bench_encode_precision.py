"""What bfloat16 encoding costs in quality: ``gpstoken tokenize`` in float32 against bfloat16.

    python benchmarks/bench_encode_precision.py [--model default] [--tokens 64 128 256] [--json out.json]

The held-out offline photos (``gpstoken.train.photos.OFFLINE_HELDOUT``, those installed) are
written as PNGs to a temporary folder and tokenized twice per token count, ``--dtype float32``
and ``--dtype bfloat16`` (same layouts: the partition does not depend on the dtype). Both token
sets are decoded by the same float32 tokenizer, and each reconstruction's PSNR against the
256x256 input (the standard crop) is printed per photo, with the change bfloat16 makes. Token
differences: the Gaussians' centres and sigmas in pixels (``gpstoken.layout.image_pixels``),
rho as is, and the features relative to their RMS. bfloat16 needs CUDA or a CPU with native
bfloat16 (``gpstoken.runtime.native_cpu_bfloat16``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gpstoken  # noqa: E402
from gpstoken.image_dataset import PreparedImages  # noqa: E402
from gpstoken.layout import image_pixels  # noqa: E402
from gpstoken.metrics import psnr  # noqa: E402
from gpstoken.pretokenize import tokenize  # noqa: E402
from gpstoken.sources import open_source  # noqa: E402
from gpstoken.train.photos import offline_images  # noqa: E402

DTYPES = ("float32", "bfloat16")


def token_differences(a: gpstoken.GPSTokens, b: gpstoken.GPSTokens) -> dict[str, float]:
    """Largest differences of tokens ``b`` from ``a`` (one image): centre and sigma in pixels,
    rho, and features relative to the RMS of ``a``'s features (max and mean)."""
    grid = a.layout.grid
    _, ga = image_pixels(a.geometry[0], a.layout.regions[0], grid)
    _, gb = image_pixels(b.geometry[0], b.layout.regions[0], grid)
    d = np.abs(ga - gb)
    rms = a.features.double().pow(2).mean().sqrt()
    df = (a.features.double() - b.features.double()).abs() / rms
    return {"centre_px": float(d[:, :2].max()), "sigma_px": float(d[:, 2:4].max()), "rho": float(d[:, 4].max()),
            "features_rel_max": float(df.max()), "features_rel_mean": float(df.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args()
    entries = offline_images("heldout")
    if not entries:
        raise SystemExit("no held-out photos installed (pip install scikit-image mvtb-data)")
    decoder = gpstoken.load_tokenizer(a.model, device=a.device, dtype="float32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        src.mkdir()
        names = []
        for i, e in enumerate(entries):
            names.append(e.name)
            Image.fromarray(e.load()).save(src / f"{i:02d}.png")
        inputs = PreparedImages(open_source(src), 256, [])
        print(f"{len(entries)} held-out photos: {', '.join(names)}; model {a.model}, device {a.device}\n")
        print("| tokens | photo | PSNR float32 (dB) | PSNR bfloat16 (dB) | change (dB) | centre px | sigma px | "
              "rho | features rel. max | features rel. mean |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in a.tokens:
            sets = {}
            for dtype in DTYPES:
                out = Path(tmp) / f"{n}-{dtype}"
                tokenize(src, out, n, model=a.model, device=a.device, dtype=dtype, progress=False)
                sets[dtype] = gpstoken.TokenDataset(out)
            changes = []
            for i in range(len(sets["float32"])):
                index = sets["float32"][i]["index"]
                name, image = names[index], inputs[index]["image"][None].to(a.device)
                tokens = {d: sets[d].tokens(i) for d in DTYPES}
                scores = {d: psnr(decoder.decode_tensor(tokens[d]), image).item() for d in DTYPES}
                diff = token_differences(tokens["float32"], tokens["bfloat16"])
                change = scores["bfloat16"] - scores["float32"]
                changes.append(change)
                rows.append({"tokens": n, "photo": name, "psnr_float32": scores["float32"],
                             "psnr_bfloat16": scores["bfloat16"], "change": change, **diff})
                print(f"| {n} | {name} | {scores['float32']:.3f} | {scores['bfloat16']:.3f} | {change:+.4f} | "
                      f"{diff['centre_px']:.3f} | {diff['sigma_px']:.3f} | {diff['rho']:.4f} | "
                      f"{diff['features_rel_max']:.4f} | {diff['features_rel_mean']:.5f} |", flush=True)
            print(f"| {n} | **mean** | | | {np.mean(changes):+.4f} (worst {min(changes):+.4f}) | | | | | |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "photos": names, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
