"""Reconstruction quality of tokenizer checkpoints on the held-out offline photos.

For each checkpoint and token count, every held-out crop (256x256, `EvalDataset`: the centre
crop plus fixed random crops of the photos in `gpstoken.train.data.OFFLINE_HELDOUT`) is
encoded with the layout its training used (`adaptive` entropy partition or `uniform` grid)
and decoded; PSNR / SSIM (computed here) and ST-LPIPS (if `stlpips-pytorch` is installed)
are averaged. Prints a markdown table.

    python examples/evaluate_tokenizer.py gpstoken/weights/gpstoken_tiny.safetensors:adaptive \
        runs/uniform/export/tokenizer.safetensors:uniform --tokens 64 128 256
"""
from __future__ import annotations

import argparse

import torch

import gpstoken
from gpstoken.layout import Layout
from gpstoken.train.data import DataConfig, EvalDataset, heldout_images
from gpstoken.metrics import STLPIPS, psnr, ssim, stlpips_available


def evaluate(checkpoint: str, init: str, n_tokens: int, crops: int, lpips) -> dict[str, float]:
    tok = gpstoken.load_tokenizer(checkpoint, device="cpu")
    cfg = DataConfig(source="offline", init=init, eval_crops_per_image=crops)
    data = EvalDataset(heldout_images(cfg), cfg, n_tokens)
    scores = {"psnr": [], "ssim": [], "st-lpips": []}
    for i in range(len(data)):
        item = data[i]
        image = item["image"][None]
        layout = Layout(item["g_init"][None], item["regions"][None], (256, 256), (1, 1))
        rec = tok.decode_tensor(tok.encode_tensor(image, layout))
        scores["psnr"].append(psnr(rec, image).item())
        scores["ssim"].append(ssim(rec, image).item())
        if lpips is not None:
            with torch.no_grad():
                scores["st-lpips"].append(lpips(rec, image).mean().item())
    return {k: sum(v) / len(v) for k, v in scores.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="PATH:INIT with INIT adaptive or uniform")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--crops", type=int, default=8, help="crops per held-out photo")
    a = p.parse_args()
    torch.manual_seed(0)
    lpips = STLPIPS().eval() if stlpips_available() else None
    print("| checkpoint | init | tokens | PSNR (dB) | SSIM | ST-LPIPS |")
    print("|---|---|---|---|---|---|")
    for spec in a.checkpoints:
        path, _, init = spec.rpartition(":")
        if init not in ("adaptive", "uniform"):
            raise SystemExit(f"{spec}: expected PATH:adaptive or PATH:uniform")
        for n in a.tokens:
            s = evaluate(path, init, n, a.crops, lpips)
            lp = f"{s['st-lpips']:.4f}" if "st-lpips" in s else "n/a"
            print(f"| {path} | {init} | {n} | {s['psnr']:.2f} | {s['ssim']:.4f} | {lp} |", flush=True)


if __name__ == "__main__":
    main()
