"""`gpstoken tokenize` and `TokenDataset`: values equal the API's encode, bad images are listed
and skipped, a crashed / killed run resumes to the same bytes, two processes write the same
shards as one. Embedded default model, the example photos, 32 tokens per patch."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpstoken
from gpstoken import shards
from gpstoken.images import center_crop, to_tensor
from gpstoken.metrics import psnr
from gpstoken.pretokenize import tokenize

REPO = Path(__file__).resolve().parents[1]
N = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The three example photos (one in a sub-folder), an undecodable file and a 20x40 image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i, p in enumerate(sorted((REPO / "examples" / "data").glob("*.png"))):
        shutil.copy(p, root / ("sub" if i == 1 else ".") / p.name)
    (root / "broken.png").write_bytes(b"not a png at all")
    Image.new("RGB", (40, 20), (10, 20, 30)).save(root / "tiny.png")
    return root


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.safetensors"))}


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gpstoken.cli", *args], env=e, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    """An uninterrupted one-process run: 5 source images, shards of 2, batches of 2, float32."""
    out = tmp_path_factory.mktemp("ref")
    manifest = tokenize(photos, out, N, shard_size=2, batch_size=2, num_workers=0, dtype="float32", progress=False)
    assert manifest is not None
    return out


def test_tokens_match_encode_and_bad_images_are_listed(photos, reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["source_images"] == 5 and manifest["images"] == 3 and manifest["n_tokens"] == N
    assert [s["images"] for s in manifest["shards"]] == [1, 2, 0]  # broken / tiny are left out of their shards
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"broken.png", "tiny.png"}
    assert "cannot decode" in reasons["broken.png"] and "too small: 40x20" in reasons["tiny.png"]
    assert manifest["model"] == "gpstoken-tiny" and len(manifest["model_sha256"]) == 64

    ds = gpstoken.TokenDataset(reference)
    assert len(ds) == 3 and ds.image_size == (256, 256)
    assert [ds[i]["id"] for i in range(3)] == ["astronaut.png", "coffee.png", "sub/chelsea.png"]
    item = ds[2]
    assert item["geometry"].shape == (N, 5) and item["features"].shape == (N, 16)
    src = Image.open(photos / "sub" / "chelsea.png")
    assert item["source_size"].tolist() == [src.height, src.width]
    expected = gpstoken.encode(center_crop(src, 256), N, device="cpu")
    torch.testing.assert_close(item["geometry"], expected.geometry[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(item["features"], expected.features[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(item["layout_regions"], expected.layout.regions[0])
    rec = gpstoken.decode(ds.tokens(2))  # decodes back to a 256 image
    assert rec.size == (256, 256)


def test_crash_then_resume_gives_identical_shards(photos, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / shards.shard_name(1)).mkdir()  # the second shard cannot be written: the run crashes there
    with pytest.raises(OSError):
        tokenize(photos, out, N, shard_size=2, batch_size=2, num_workers=0, dtype="float32", progress=False)
    assert not (out / "manifest.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp file left
    first = (out / shards.shard_name(0)).stat()
    (out / shards.shard_name(1)).rmdir()
    with pytest.raises(FileNotFoundError, match="not finished"):
        gpstoken.TokenDataset(out)
    assert tokenize(photos, out, N, shard_size=2, batch_size=2, num_workers=0, dtype="float32",
                    progress=False) is not None
    assert (out / shards.shard_name(0)).stat().st_mtime_ns == first.st_mtime_ns  # finished shard skipped
    assert _bytes(out) == _bytes(reference)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())


def test_killed_cli_run_resumes_and_two_processes_match_one(photos, reference, tmp_path):
    killed = tmp_path / "killed"
    proc = _cli("tokenize", str(photos), str(killed), "--tokens", str(N), "--shard-size", "2", "--batch-size", "2",
                "--device", "cpu", "--dtype", "float32")
    deadline = time.time() + 240
    while not (killed / shards.shard_name(0)).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (killed / ".shard-00002.safetensors.half.tmp").write_bytes(b"\0" * 100)  # what a kill mid-write leaves
    (killed / shards.shard_name(2)).write_bytes(b"\0" * 100)  # or a truncated file under the final name
    two = tmp_path / "two"
    procs = [_cli("tokenize", str(photos), str(two), "--tokens", str(N), "--shard-size", "2", "--batch-size", "2",
                  "--device", "cpu", "--workers", "0", "--dtype", "float32",
                  env={"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
             for r in range(2)]
    resumed = _cli("tokenize", str(photos), str(killed), "--tokens", str(N), "--shard-size", "2", "--batch-size", "2",
                   "--device", "cpu", "--dtype", "float32")
    for p in [*procs, resumed]:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    assert _bytes(killed) == _bytes(reference)
    assert _bytes(two) == _bytes(reference)
    for out in (killed, two):
        assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())


def test_list_file_source_and_errors(photos, reference, tmp_path, capsys):
    from gpstoken.cli import main

    lst = tmp_path / "images.txt"
    lst.write_text(f"# two photos\n{photos / 'astronaut.png'}\n\n{photos / 'coffee.png'}\n")
    out = tmp_path / "lst"
    assert main(["tokenize", str(lst), str(out), "--tokens", str(N), "--workers", "0", "--device", "cpu",
                 "--dtype", "float32"]) == 0
    ds = gpstoken.TokenDataset(out)
    ref = gpstoken.TokenDataset(reference)
    assert len(ds) == 2 and ds[1]["id"] == str(photos / "coffee.png")
    assert torch.equal(ds[1]["features"], ref[1]["features"])  # same image, same batch of 1 -> same tokens

    def err(*args: str) -> str:
        assert main(["tokenize", *args]) == 1
        return capsys.readouterr().err

    assert "--tokens: must be an int >= 1, got 0" in err(str(lst), str(tmp_path / "x"), "--tokens", "0")
    assert "at most" in err(str(lst), str(tmp_path / "x"), "--tokens", "5000")
    assert "--workers: must be an int >= 0, got -1" in err(str(lst), str(tmp_path / "x"), "--tokens", "8",
                                                                "--workers", "-1")
    assert "does not exist" in err(str(tmp_path / "missing"), str(tmp_path / "x"), "--tokens", "8")
    assert "no images" in err(str(tmp_path / "lst"), str(tmp_path / "x"), "--tokens", "8")
    assert "different run" in err(str(lst), str(out), "--tokens", "16", "--workers", "0", "--device", "cpu")
    with pytest.raises(FileNotFoundError, match="gpstoken tokenize"):
        gpstoken.TokenDataset(tmp_path)
    with pytest.raises(IndexError):
        ds[2]
    assert np.isfinite(ds[-1]["geometry"].numpy()).all()


def _datasets():
    """The optional ``datasets`` package: skipped when absent, except in CI (which installs it)."""
    try:
        import datasets
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("datasets is not installed; CI installs the `datasets` extra to test the dataset source")
        pytest.skip("the optional `datasets` package is not installed (pip install gpstoken[datasets])")
    return datasets


def test_saved_datasets_dataset_source(photos, reference, tmp_path, capsys):
    """A `datasets` dataset written by save_to_disk (image column + a text column), read in a
    DataLoader worker: the same tokens as the folder run, ids `<split>/<row>`."""
    from gpstoken.cli import main

    datasets = _datasets()
    names = ["coffee.png", "astronaut.png"]
    features = datasets.Features({"caption": datasets.Value("string"), "picture": datasets.Image()})
    ds = datasets.Dataset.from_dict({"caption": names, "picture": [Image.open(photos / n) for n in names]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    assert main(["tokenize", str(tmp_path / "ds"), str(out), "--tokens", str(N), "--workers", "1",
                 "--device", "cpu", "--dtype", "float32"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 2 and manifest["source"] == f"dataset {tmp_path / 'ds'} [train]"
    got, ref = gpstoken.TokenDataset(out), gpstoken.TokenDataset(reference)
    assert [got[i]["id"] for i in range(2)] == ["train/0", "train/1"]
    for i, j in ((0, 1), (1, 0)):  # reference order: astronaut.png, coffee.png, sub/chelsea.png
        torch.testing.assert_close(got[i]["features"], ref[j]["features"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[i]["layout_geometry"], ref[j]["layout_geometry"])

    def err(*args: str) -> str:
        assert main(["tokenize", *args, "--tokens", str(N)]) == 1
        return capsys.readouterr().err

    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    assert "has splits ['validation'], not 'train'" in err(str(tmp_path / "dd"), str(tmp_path / "x"))
    assert "--image-column: 'caption' is not an Image column" in err(str(tmp_path / "ds"), str(tmp_path / "x"),
                                                                     "--image-column", "caption")
    datasets.Dataset.from_dict({"caption": names}).save_to_disk(str(tmp_path / "text"))
    assert "has no Image column" in err(str(tmp_path / "text"), str(tmp_path / "x"))


def test_bfloat16_encoder_on_cpu(photos, reference, tmp_path):
    """`--dtype bfloat16` on the CPU: tokens close to the float32 run (bfloat16 precision), the
    manifest says so, a float32 rerun into the same folder is refused with the dtype to pass;
    the default (auto) is bfloat16 exactly where the CPU has native bfloat16; on a CPU without
    it an explicit bfloat16 is a clear error."""
    from gpstoken.runtime import native_cpu_bfloat16

    lst = tmp_path / "one.txt"
    lst.write_text(f"{photos / 'coffee.png'}\n")
    with pytest.raises(ValueError, match="--dtype: expected auto, float32 or bfloat16"):
        tokenize(lst, tmp_path / "x", N, dtype="float16", device="cpu")
    with pytest.raises(ValueError, match="float16 inference needs a CUDA device"):
        gpstoken.load_tokenizer("default", device="cpu", dtype="float16")
    auto = tokenize(lst, tmp_path / "auto", N, num_workers=0, device="cpu", progress=False)
    assert auto["encode_dtype"] == ("bfloat16" if native_cpu_bfloat16() else "float32")
    if not native_cpu_bfloat16():
        with pytest.raises(ValueError, match="needs native bfloat16 instructions"):
            tokenize(lst, tmp_path / "bf", N, dtype="bfloat16", device="cpu")
        return
    manifest = tokenize(lst, tmp_path / "bf", N, dtype="bfloat16", num_workers=0, device="cpu", progress=False)
    assert manifest["encode_dtype"] == "bfloat16"
    bf, fp = gpstoken.TokenDataset(tmp_path / "bf"), gpstoken.TokenDataset(reference)
    got, ref = bf[0], fp[1]
    assert got["features"].dtype == torch.float32
    # bfloat16 rounding, carried through the default model's 4 test-time fitting steps: the
    # tokens differ (a Gaussian's centre by up to a few tenths of a cell), their images do not
    for key, tol in (("geometry", 0.05), ("features", 0.3)):
        err = (got[key] - ref[key]).abs().max() / ref[key].abs().max()
        assert 0 < err < tol, (key, err)
    tok = gpstoken.load_tokenizer("default", device="cpu")
    image = to_tensor(center_crop(Image.open(photos / "coffee.png"), 256))[0]
    psnr_bf, psnr_fp = (psnr(tok.decode_tensor(t.tokens(i)), image).item()
                        for t, i in ((bf, 0), (fp, 1)))
    assert abs(psnr_bf - psnr_fp) < 0.05, (psnr_bf, psnr_fp)
    assert _bytes(tmp_path / "auto") == _bytes(tmp_path / "bf")
    with pytest.raises(ValueError, match="encoded in bfloat16, this run encodes in float32 .* pass --dtype bfloat16"):
        tokenize(lst, tmp_path / "bf", N, dtype="float32", num_workers=0, device="cpu", progress=False)


def test_resuming_with_other_fitting_steps_names_the_flag(photos, tmp_path):
    """A shard records its test-time fitting steps; a rerun with other steps is refused with the
    --fit-steps that resumes it (the default model fits 4 steps by default)."""
    lst = tmp_path / "one.txt"
    lst.write_text(f"{photos / 'coffee.png'}\n")
    tokenize(lst, tmp_path / "out", N, fit_steps=0, num_workers=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"shard-00000.safetensors was encoded with 0 test-time fitting steps, this "
                                         r"run with 4 \(--fit-steps default\); to resume it pass --fit-steps 0, or"):
        tokenize(lst, tmp_path / "out", N, num_workers=0, device="cpu", progress=False)


def test_process_layout_shares_the_cores(monkeypatch):
    """CPU runs split the usable cores among the processes of a machine (encoding workers)."""
    from gpstoken.image_dataset import Processes, usable_cores

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert Processes.from_env() == Processes(0, 1, 0, 1) and Processes.from_env().cores() == usable_cores()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert Processes.from_env().local_world == 4  # no LOCAL_WORLD_SIZE: all on this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    procs = Processes.from_env()
    assert procs.local_world == 2 and procs.cores() == max(1, usable_cores() // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE=0 must be >= 1"):
        Processes.from_env()


def test_a_missing_source_folder_is_named_as_such(tmp_path, monkeypatch):
    """A mistyped folder is not reported as an unreachable Hub dataset only."""
    _datasets()
    from gpstoken.sources import open_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SRC: no folder or file 'photoz' exists here, .*check the path"):
        open_source("photoz")
