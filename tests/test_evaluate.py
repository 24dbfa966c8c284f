"""`gpstoken eval`: metric values equal direct computations on the API's reconstructions, rFID
equals the Frechet distance of the same features, unavailable metrics say why, outputs
(JSON, markdown, PNG) are written, two processes give the one-process numbers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import gpstoken
from gpstoken.evaluate import evaluate, markdown_table
from gpstoken.images import center_crop, to_tensor
from gpstoken.metrics import FeatureMoments, frechet_distance, psnr, ssim, stlpips_available

REPO = Path(__file__).resolve().parents[1]
COUNTS = [16, 32]


def _pool_features(images: torch.Tensor) -> torch.Tensor:
    """A small stand-in feature extractor: 4x4 average colours (48-d)."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_photos")
    for name in ("astronaut.png", "coffee.png"):
        shutil.copy(REPO / "examples" / "data" / name, root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    results = evaluate(photos, ["default"], COUNTS, out=out, batch_size=1, num_workers=0, device="cpu",
                       dtype="float32", fid_features=_pool_features, progress=False)
    return out, results


def test_metrics_equal_direct_computation(photos, one_process):
    out, results = one_process
    assert results["images"] == 2 and [s["id"] for s in results["skipped"]] == ["broken.jpg"]
    images = torch.cat([to_tensor(center_crop(Image.open(photos / n), 256))[0]
                        for n in ("astronaut.png", "coffee.png")])
    real = FeatureMoments(48)
    real.update(_pool_features(((images + 1) * 127.5).round().to(torch.uint8)))
    for row, n in zip(results["results"], COUNTS):
        assert row["model"] == "gpstoken-tiny" and row["tokens"] == n
        rec = gpstoken.decode(gpstoken.encode(images, n, device="cpu"), device="cpu")
        assert row["psnr"] == pytest.approx(psnr(rec, images).mean().item(), abs=1e-3)
        assert row["ssim"] == pytest.approx(ssim(rec, images).mean().item(), abs=1e-4)
        fake = FeatureMoments(48)
        fake.update(_pool_features(((rec + 1) * 127.5).round().to(torch.uint8)))
        assert row["rfid"] == pytest.approx(frechet_distance(*real.mean_cov(), *fake.mean_cov()), rel=1e-3, abs=1e-6)
    assert results["results"][1]["psnr"] > results["results"][0]["psnr"]  # more tokens, better reconstruction
    saved = json.loads((out / "eval.json").read_text())
    assert saved["results"] == results["results"]
    table = (out / "eval.md").read_text()
    assert "| gpstoken-tiny | 32 |" in table and "PSNR (dB)" in table
    if not stlpips_available():
        assert results["results"][0]["st_lpips"] is None and "stlpips-pytorch" in results["unavailable"]["st_lpips"]
        assert "n/a (install stlpips-pytorch)" in table
    pytest.importorskip("matplotlib")
    assert Image.open(out / "eval.png").size[0] > 400


def test_missing_fid_backend_is_reported_not_fatal(photos, tmp_path):
    from gpstoken.inception import load_inception

    features, reason = load_inception(None)
    if features is not None:
        pytest.skip(f"an Inception backend is available here ({reason})")
    assert "pip install torch-fidelity" in reason or "--fid-weights" in reason
    features, reason = load_inception(str(tmp_path / "missing.pth"))
    assert features is None and ("torch-fidelity" in reason or "missing.pth" in reason)


def test_cli_two_processes_match_one_and_errors(photos, one_process, tmp_path, capsys):
    from gpstoken.cli import main

    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "gpstoken.cli", "eval", str(photos), "--tokens", *map(str, COUNTS), "-o", str(out),
            "--batch-size", "1", "--workers", "0", "--device", "cpu", "--dtype", "float32"]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outputs]
    assert sum("| gpstoken-tiny | 32 |" in o for o, _ in outputs) >= 1  # the merging process prints the table
    two = json.loads((out / "eval.json").read_text())
    for a, b in zip(two["results"], one_process[1]["results"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-6) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-8)
    assert two["results"][0]["rfid"] is None and "rfid" in two["unavailable"]
    assert [s["id"] for s in two["skipped"]] == ["broken.jpg"]
    assert sorted(q.name for q in out.iterdir()) == ["eval.json", "eval.md", "eval.png"][:2 + (two.get("plot") is None)]

    def err(*a: str) -> str:
        assert main(["eval", *a]) == 1
        return capsys.readouterr().err

    assert "--tokens" in err(str(photos), "--tokens", "0", "-o", str(tmp_path / "x"))
    assert "--size" in err(str(photos), "--size", "8", "-o", str(tmp_path / "x"))
    assert "does not exist" in err(str(tmp_path / "nope"), "-o", str(tmp_path / "x"))
    missing = str(tmp_path / "nope.safetensors")
    assert "no such checkpoint" in err(str(photos), "--model", missing, "-o", str(tmp_path / "x"))
    assert "--model: default given more than once" in err(str(photos), "--model", "default", "default", "-o",
                                                           str(tmp_path / "x"))


def test_worker_pipeline_gives_the_in_process_numbers(photos, one_process, tmp_path):
    """On the CPU the DataLoader workers encode and decode (as tokenize's workers encode): the
    metrics are identical to the run that does everything in this process."""
    results = evaluate(photos, ["default"], COUNTS, out=tmp_path, batch_size=1, num_workers=2, device="cpu",
                       dtype="float32", fid_features=_pool_features, progress=False)
    assert results["results"] == one_process[1]["results"]
    assert [s["id"] for s in results["skipped"]] == ["broken.jpg"]
    with pytest.raises(ValueError, match="--workers: must be an int >= 0, got -1"):
        evaluate(photos, ["default"], COUNTS, out=tmp_path, num_workers=-1, device="cpu")


def test_default_dtype_is_the_fast_one_and_keeps_the_numbers(photos, one_process, tmp_path):
    """``--dtype auto`` (the default) evaluates in bfloat16 on a CPU with native bfloat16, as
    tokenize encodes, and records it; the PSNR stays within 0.1 dB of float32's."""
    from gpstoken.pipeline.devices import fast_dtype

    results = evaluate(photos, ["default"], COUNTS, out=tmp_path, batch_size=2, num_workers=0, device="cpu",
                       fid_features=_pool_features, progress=False)
    assert results["encode_dtype"] == fast_dtype(torch.device("cpu"))
    assert one_process[1]["encode_dtype"] == "float32"
    assert ("Encoded and decoded in bfloat16" in markdown_table(results)) == (results["encode_dtype"] == "bfloat16")
    assert "Encoded and decoded" not in markdown_table(one_process[1])
    for fast, exact in zip(results["results"], one_process[1]["results"]):
        assert fast["psnr"] == pytest.approx(exact["psnr"], abs=0.1)
    with pytest.raises(ValueError, match="--dtype: expected auto, float32 or bfloat16, got 'float16'"):
        evaluate(photos, ["default"], COUNTS, out=tmp_path, dtype="float16", device="cpu")
