"""``gpstoken eval``: reconstruction quality of tokenizers against the token count, by the
standard protocol.

Every image of the source is resized (shorter side to ``size``, bicubic) and centre-cropped
(:func:`gpstoken.images.center_crop`), partitioned for each token count, encoded and decoded
by each model. Per (model, token count): mean PSNR and SSIM (:mod:`gpstoken.metrics`), mean
ST-LPIPS (optional ``stlpips-pytorch``) and rFID, the Frechet distance between the standard
Inception features of the inputs and of the reconstructions (both quantised to 8 bits;
:mod:`gpstoken.inception`). A metric that cannot be computed here is reported as
unavailable with the reason, never an error.

Outputs in ``out``: ``eval.json`` (each model recorded by its portable id and SHA-256,
:func:`gpstoken.hub.portable_id`), ``eval.md`` (the markdown table, also printed) and
``eval.png`` (each metric against the token count, one line per model; needs matplotlib).
The tokenizers' work runs where ``gpstoken tokenize``'s does
(:func:`gpstoken.image_dataset.job_batches`): on the CPU each DataLoader worker encodes and
decodes its batches with one torch thread and the main process computes the metrics; on CUDA the
main process runs the models. Multi-process like ``gpstoken tokenize``: process ``RANK`` of
``WORLD_SIZE`` takes every ``WORLD_SIZE``-th batch, writes its sums to ``out/parts/`` and the
last one to finish merges them and removes ``out/parts/`` (eval does not resume: a failed run
is simply rerun).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import shards
from .hub import portable_id
from .image_dataset import PreparedImages, Processes, job_batches
from .images import MIN_SIDE, to_uint8
from .inception import load_inception
from .io import atomic_path, output_folder, write_safetensors, write_text
from .metrics import STLPIPS, STLPIPS_INSTALL, FeatureMoments, frechet_distance, psnr, ssim, stlpips_available
from .pipeline import Tokenizer, load_tokenizer, pick_device
from .pipeline.devices import run_dtype
from .pretokenize import PREPROCESSING, check_token_count, encode_batch, fit_steps_of
from .sources import open_source
from .validate import integer

METRICS = (("psnr", "PSNR (dB)", "higher"), ("ssim", "SSIM", "higher"), ("st_lpips", "ST-LPIPS", "lower"),
           ("rfid", "rFID", "lower"))
_SUMS = ("psnr", "ssim", "st_lpips")
#: sub-folder of ``out`` where the processes of a multi-process run leave their sums for the merge
PARTS = "parts"


class _Sums:
    """Per (model, token count) metric sums and Inception moments of one process."""

    def __init__(self, keys: list[tuple[int, int]], dim: Optional[int]) -> None:
        self.keys = keys
        self.count = 0
        self.sums = {k: {m: 0.0 for m in _SUMS} for k in keys}
        self.real = FeatureMoments(dim) if dim else None
        self.fake = {k: FeatureMoments(dim) for k in keys} if dim else {}
        self.skipped: list[dict[str, Any]] = []

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"count": torch.tensor(self.count, dtype=torch.int64)}
        for j, k in enumerate(self.keys):
            for m in _SUMS:
                t[f"{j}.{m}"] = torch.tensor(self.sums[k][m], dtype=torch.float64)
            for name, v in (self.fake[k].state_dict().items() if self.fake else ()):
                t[f"{j}.fake.{name}"] = v
        for name, v in (self.real.state_dict().items() if self.real else ()):
            t[f"real.{name}"] = v
        return t

    def merge(self, t: dict[str, torch.Tensor], skipped: list[dict[str, Any]]) -> None:
        self.count += int(t["count"])
        for j, k in enumerate(self.keys):
            for m in _SUMS:
                self.sums[k][m] += float(t[f"{j}.{m}"])
            if self.fake:
                self.fake[k].merge(FeatureMoments.from_state_dict(
                    {n: t[f"{j}.fake.{n}"] for n in ("n", "sum", "outer")}))
        if self.real:
            self.real.merge(FeatureMoments.from_state_dict({n: t[f"real.{n}"] for n in ("n", "sum", "outer")}))
        self.skipped += skipped


def evaluate(src: str | os.PathLike, models: Sequence[str], token_counts: Sequence[int], *,
             out: str | os.PathLike = "eval", size: int = 256, batch_size: int = 16, fid_weights: Optional[str] = None,
             fid_features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, num_workers: Optional[int] = None,
             split: str = "train", image_column: Optional[str] = None, device: Optional[str] = None,
             dtype: Optional[str] = None, fit_steps: Optional[int] = None,
             progress: bool = True) -> Optional[dict[str, Any]]:
    """Evaluate ``models`` at each of ``token_counts`` on the images of ``src`` (see the
    module doc). Returns the results dict (also written to ``out/eval.json``) from the
    process that merged them, else None.

    fid_features: a feature extractor ``uint8 [B,3,H,W] -> float [B,D]`` used for rFID
    instead of the standard Inception (numbers then are not comparable to published FIDs).
    num_workers: DataLoader worker processes, as ``gpstoken tokenize``'s (on the CPU one per
    usable core by default, each encoding and decoding its batches; 0: everything here).
    dtype: the encode's dtype, as ``gpstoken tokenize``'s (``"auto"`` / None: bfloat16 on CUDA and
    on a CPU with native bfloat16, else float32); the decode runs in it too. Recorded in the
    results (``encode_dtype``). fit_steps: test-time fitting steps for every model (default:
    each model's own), recorded per model in the results (``fit_steps``).
    """
    if isinstance(models, str) or not models:
        raise ValueError(f"--model: expected one or more model names, got {models!r}")
    repeated = sorted(m for m, k in Counter(map(str, models)).items() if k > 1)
    if repeated:
        raise ValueError(f"--model: {', '.join(repeated)} given more than once; give each model once")
    if isinstance(token_counts, int) or not token_counts:
        raise ValueError(f"--tokens: expected one or more token counts, got {token_counts!r}")
    counts = sorted({check_token_count(n) for n in token_counts})
    if fit_steps is not None:
        fit_steps = integer(fit_steps, "--fit-steps", low=0)
    size = integer(size, "--size", low=MIN_SIDE)
    batch_size = integer(batch_size, "--batch-size", low=1)
    if num_workers is not None:
        num_workers = integer(num_workers, "--workers", low=0)
    output_folder(out, "--out")
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise FileNotFoundError(f"--fid-weights: no such file {fid_weights}; give torch-fidelity's Inception weights "
                                "(weights-inception-2015-12-05-6726825d.pth), or leave it out")
    procs = Processes.from_env()
    source = open_source(src, split=split, image_column=image_column)
    dev = pick_device(device) if device is not None else procs.device()
    dtype = run_dtype(dtype, dev)
    toks = [load_tokenizer(m, device=dev, dtype=dtype) for m in models]
    fits = fit_steps_of(toks, fit_steps)
    if fid_features is not None:
        features, fid_note = fid_features, "custom feature extractor (not comparable to published FID)"
    else:
        features, fid_note = load_inception(fid_weights, dev)
    lpips = STLPIPS().to(dev) if stlpips_available() else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [(j, n) for j in range(len(toks)) for n in counts]
    all_batches = [list(range(b, min(len(source), b + batch_size))) for b in range(0, len(source), batch_size)]
    batches = all_batches[procs.rank::procs.world]
    header = {"source": source.description, "source_images": len(source), "image_size": [size, size],
              "preprocessing": PREPROCESSING.format(size=size), "encode_dtype": dtype,
              "models": [portable_id(t)[0] for t in toks], "model_sha256": [portable_id(t)[1] for t in toks],
              "tokens": counts, "fit_steps": fits}
    sums = _run(toks, fits, keys, counts, source, size, batches, features, lpips, num_workers,
                progress and procs.rank == 0)
    parts: list[Path] = []
    if procs.world > 1:
        run = json.dumps({**header, "batch_size": batch_size, "features": fid_note}, sort_keys=True)
        merged, parts = _merge_parts(out / PARTS, sums, procs, run)
        if merged is None:
            print(f"eval: process {procs.rank} done; the last process to finish writes {out / 'eval.json'}")
            return None
        sums = merged
    results = _results(sums, header, fid_note if features is not None else None,
                       fid_note if features is None else None, lpips is not None)
    write_outputs(results, out)
    _remove_parts(out / PARTS, parts)
    return results


def _merge_parts(folder: Path, sums: _Sums, procs: Processes, run: str) -> tuple[Optional[_Sums], list[Path]]:
    """Write this process's sums to ``folder`` and merge every process's sums when all are
    there: (merged sums, the part files), or (None, []) while some process is not done (or
    another process is already merging and removed the parts)."""
    folder.mkdir(exist_ok=True)
    write_safetensors(sums.tensors(), folder / f"rank{procs.rank}of{procs.world}.safetensors",
                      {"skipped": json.dumps(sums.skipped), "run": run})
    merged = _Sums(sums.keys, sums.real.sum.numel() if sums.real else None)
    paths = [folder / f"rank{r}of{procs.world}.safetensors" for r in range(procs.world)]
    for path in paths:
        meta = shards.shard_metadata(path)
        if meta is None or meta.get("run") != run:  # not written yet (or left by another run)
            return None, []
        try:
            tensors = load_file(str(path))
        except (FileNotFoundError, SafetensorError):  # removed by a process that merged at the same time
            return None, []
        merged.merge(tensors, json.loads(meta["skipped"]))
    return merged, paths


def _remove_parts(folder: Path, parts: list[Path]) -> None:
    """Remove the merged part files, and ``folder`` once empty (a process that merged at the
    same moment may have removed them already)."""
    for path in parts:
        path.unlink(missing_ok=True)
    if parts:
        try:
            folder.rmdir()
        except OSError:  # not empty (files of another run) or already gone
            pass


def _reconstruct_job(toks: list[Tokenizer], fits: list[int], keys: list[tuple[int, int]], images: torch.Tensor,
                     layouts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """eval's job (:func:`gpstoken.image_dataset.job_batches`): the batch on the models' device
    and its reconstruction by model ``j`` (with ``fits[j]`` fitting steps) at ``n`` tokens for
    each key ``(j, n)``."""
    x = images.to(toks[0].device, non_blocking=True)
    return {"image": x, "recs": [toks[j].decode_tensor(encode_batch(toks[j], x, layouts[n], fits[j]))
                                 for j, n in keys]}


def _run(toks, fits, keys, counts, source, size, batches, features, lpips, num_workers, progress) -> _Sums:
    from tqdm.auto import tqdm

    dim = features(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape[1] if features is not None else None
    sums = _Sums(keys, dim)
    data = job_batches(PreparedImages(source, size, counts), batches, partial(_reconstruct_job, toks, fits, keys),
                       in_workers=toks[0].device.type == "cpu", num_workers=num_workers)
    bar = tqdm(total=sum(map(len, batches)), unit="img", desc="eval", disable=not progress, dynamic_ncols=True)
    pending_skips: list[dict[str, Any]] = []
    try:
        for b, batch in enumerate(data):
            pending_skips += [{"index": i, "id": source.ids[i], "reason": r} for i, r in batch["skipped"]]
            if batch["out"] is not None:
                x = batch["out"]["image"]
                real = features(to_uint8(x)) if features is not None else None
                if real is not None:
                    sums.real.update(real)
                sums.count += len(x)
                for (j, n), rec in zip(keys, batch["out"]["recs"]):
                    s = sums.sums[(j, n)]
                    s["psnr"] += psnr(rec, x).double().sum().item()
                    s["ssim"] += ssim(rec, x).double().sum().item()
                    if lpips is not None:
                        with torch.inference_mode():
                            s["st_lpips"] += lpips(rec, x).double().sum().item()
                    if real is not None:
                        sums.fake[(j, n)].update(features(to_uint8(rec)))
            bar.update(len(batches[b]))
    finally:
        bar.close()
        data.close()
    sums.skipped += pending_skips
    return sums


def _results(sums: _Sums, header: dict[str, Any], fid_backend: Optional[str], fid_missing: Optional[str],
             have_lpips: bool) -> dict[str, Any]:
    n = sums.count
    unavailable = {}
    if not have_lpips:
        unavailable["st_lpips"] = f"stlpips-pytorch is not installed: {STLPIPS_INSTALL}"
    if fid_missing is not None:
        unavailable["rfid"] = fid_missing
    elif sums.real is None or n < 2:
        unavailable["rfid"] = f"needs at least 2 images, got {n}"
    rows = []
    for (j, k), s in sums.sums.items():
        row: dict[str, Any] = {"model": header["models"][j], "tokens": k}
        for m in _SUMS:
            row[m] = s[m] / n if n and m not in unavailable else None
        if "rfid" not in unavailable:
            row["rfid"] = frechet_distance(*sums.real.mean_cov(), *sums.fake[(j, k)].mean_cov())
        else:
            row["rfid"] = None
        rows.append(row)
    skipped = sorted(sums.skipped, key=lambda s: s["index"])
    return {**header, "images": n, "skipped": skipped, "fid_features": fid_backend, "unavailable": unavailable,
            "results": rows}


_SHORT = {"st_lpips": "n/a (install stlpips-pytorch)", "rfid": "n/a (see below)"}


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a markdown table (unavailable metrics say why below it)."""
    heads = " | ".join(f"{label} {'↑' if d == 'higher' else '↓'}" for _, label, d in METRICS)
    lines = ["| model | tokens | " + heads + " |", "|---|---:|" + "---:|" * len(METRICS)]
    for r in results["results"]:
        cells = []
        for m, _, _ in METRICS:
            v = r[m]
            cells.append(_SHORT.get(m, "n/a") if v is None
                         else f"{v:.4f}" if m == "ssim" or m == "st_lpips" else f"{v:.2f}")
        lines.append(f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " |")
    notes = [f"\n{results['images']} images of {results['source']} ({results['preprocessing']})."]
    if results.get("encode_dtype", "float32") != "float32":
        notes.append(f"Encoded and decoded in {results['encode_dtype']} (--dtype float32 for float32).")
    if any(results.get("fit_steps", ())):
        notes.append("Test-time fitting steps after the encoder: " + ", ".join(
            f"{m} {k}" for m, k in zip(results["models"], results["fit_steps"])) + ".")
    if results.get("fid_features"):
        notes.append(f"rFID features: {results['fid_features']}.")
    for m, reason in results["unavailable"].items():
        notes.append(f"{dict((k, label) for k, label, _ in METRICS)[m]} n/a: {reason}.")
    if results["skipped"]:
        notes.append(f"{len(results['skipped'])} images skipped (listed in eval.json).")
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def plot(results: dict[str, Any], path: Path) -> Optional[str]:
    """Each available metric against the token count, one line per model, as a PNG. Returns
    None, or why no plot was made (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install gpstoken[eval])"
    metrics = [(m, label, d) for m, label, d in METRICS if m not in results["unavailable"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, (m, label, d) in zip(axes[0], metrics):
        for model in results["models"]:
            rows = [r for r in results["results"] if r["model"] == model]
            ax.plot([r["tokens"] for r in rows], [r[m] for r in rows], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["tokens"], [str(t) for t in results["tokens"]])
        ax.set_xlabel("tokens per 256x256 patch")
        ax.set_title(f"{label} ({d} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return None


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``eval.json``, ``eval.md`` and ``eval.png`` in ``out`` (the PNG when matplotlib is
    installed; ``results["plot"]`` says why not otherwise)."""
    why = plot(results, out / "eval.png")
    if why:
        results["plot"] = f"not made: {why}"
    write_text(out / "eval.json", json.dumps(results, indent=1) + "\n")
    write_text(out / "eval.md", markdown_table(results))
