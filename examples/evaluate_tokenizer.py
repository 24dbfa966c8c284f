"""Reconstruction quality of tokenizer checkpoints on the held-out offline photos, next to the
bicubic thumbnail of the same size.

For each checkpoint and token count, every held-out crop (256x256, `EvalDataset`: the centre
crop of each photo in `gpstoken.train.data.OFFLINE_HELDOUT`, plus `--crops - 1` fixed random
crops) is encoded with the layout its training used (`adaptive` entropy partition or
`uniform` grid) and decoded; PSNR / SSIM and ST-LPIPS (if `stlpips-pytorch` is installed)
are averaged (`--dtype bfloat16`: encode, fitting included, in bfloat16 as `gpstoken
tokenize` does on such a CPU; the decode stays float32). `bicubic` instead of a checkpoint is
the naive codec that stores as many floats as the tokens (`gpstoken.train.thumbnail`). Prints
a markdown table; `--json` also writes the rows.

    python examples/evaluate_tokenizer.py bicubic gpstoken/weights/gpstoken_tiny.safetensors:adaptive \
        runs/uniform/export/tokenizer.safetensors:uniform --tokens 64 128 256
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import gpstoken
from gpstoken.layout import Layout
from gpstoken.metrics import STLPIPS, psnr, ssim, stlpips_available
from gpstoken.train.data import DataConfig, EvalDataset, ImageEntry, folder_images, heldout_images
from gpstoken.train.thumbnail import bicubic_thumbnail


def evaluate(checkpoint: str, init: str, n_tokens: int, crops: int, lpips,
             photos: list[ImageEntry], fit_steps: int | None = None, dtype: str = "float32") -> dict[str, float]:
    """Mean PSNR / SSIM / ST-LPIPS of one checkpoint (or ``"bicubic"``) at ``n_tokens`` on ``photos``
    (``fit_steps``: test-time fitting steps, None: the checkpoint's own; ``dtype``: of the encode)."""
    cfg = DataConfig(source="offline", init=init, eval_crops_per_image=crops)
    data = EvalDataset(photos, cfg, n_tokens)
    tok = None if checkpoint == "bicubic" else gpstoken.load_tokenizer(checkpoint, device="cpu")
    enc = None if tok is None else gpstoken.load_tokenizer(checkpoint, device="cpu", dtype=dtype)
    scores = {"psnr": [], "ssim": [], "st-lpips": []}
    for i in range(len(data)):
        item = data[i]
        image = item["image"][None]
        if tok is None:  # 21 floats per token, as gps_c = 16 tokens (gpstoken-tiny, S64, M128)
            rec = bicubic_thumbnail(image, n_tokens)
        else:
            layout = Layout(item["g_init"][None], item["regions"][None], (256, 256), (1, 1))
            rec = tok.decode_tensor(enc.encode_tensor(image, layout, fit_steps=fit_steps))
        scores["psnr"].append(psnr(rec, image).item())
        scores["ssim"].append(ssim(rec, image).item())
        if lpips is not None:
            with torch.no_grad():
                scores["st-lpips"].append(lpips(rec, image).mean().item())
    return {k: sum(v) / len(v) for k, v in scores.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="PATH:INIT with INIT adaptive or uniform, or bicubic")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--crops", type=int, default=1, help="crops per held-out photo (1: the centre crop)")
    p.add_argument("--no-lpips", action="store_true", help="skip ST-LPIPS even when it is installed")
    p.add_argument("--fit-steps", type=int, default=None,
                   help="test-time fitting steps for every checkpoint (default: each checkpoint's own; 0: none)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="encode (and fit) in this dtype; the decode is float32")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--heldout", default=None,
                   help="a folder of held-out images to use instead of the offline held-out photos")
    a = p.parse_args()
    torch.manual_seed(0)
    lpips = STLPIPS().eval() if stlpips_available() and not a.no_lpips else None
    try:
        entries = folder_images(a.heldout)[0] if a.heldout else heldout_images(DataConfig(source="offline"))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--heldout: {e}") from None
    photos = [e.name for e in entries]
    print(f"held-out photos ({len(photos)}, {a.crops} crop(s) each): {', '.join(photos)}\n")
    print("| checkpoint | init | tokens | PSNR (dB) | SSIM | ST-LPIPS |")
    print("|---|---|---|---|---|---|")
    rows = []
    for spec in a.checkpoints:
        path, _, init = spec.rpartition(":") if spec != "bicubic" else ("bicubic", "", "adaptive")
        if init not in ("adaptive", "uniform"):
            raise SystemExit(f"{spec}: expected PATH:adaptive, PATH:uniform or bicubic")
        for n in a.tokens:
            s = evaluate(path, init, n, a.crops, lpips, entries, a.fit_steps, a.dtype)
            rows.append({"checkpoint": path, "init": init if path != "bicubic" else None, "tokens": n, **s})
            lp = f"{s['st-lpips']:.4f}" if "st-lpips" in s else "n/a"
            print(f"| {path} | {init if path != 'bicubic' else '-'} | {n} | {s['psnr']:.2f} | {s['ssim']:.4f} | {lp} |",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"photos": photos, "crops": a.crops, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
