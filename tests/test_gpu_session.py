"""The prepared GPU session (examples/gpu/session*.py) and its data pack (examples/gpu/prepare.py):
the budget split, the bookkeeping that keeps finished phases' results, and the held-out crops
of the pack matching the evaluation protocol. The GPU run itself is not tested here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "gpu"))  # the session's modules import each other by name

import prepare  # noqa: E402
import session_phases  # noqa: E402
import session_runner as runner  # noqa: E402


def _split(budget_s: float) -> dict[str, float]:
    names, boxes, left = list(runner.SHARES), {}, budget_s
    for i, name in enumerate(names):
        boxes[name] = runner.phase_box(left, name, names[i + 1:])
        left -= boxes[name]
    return boxes


def test_budget_split_fits_the_budget_gives_training_most_and_respects_floors():
    for minutes in (5.5, 9, 20):
        boxes = _split(60 * minutes)
        assert sum(boxes.values()) <= 60 * minutes - runner.RESERVE_S + 1e-6
        assert all(boxes[p] >= runner.FLOORS[p] - 1e-6 for p in boxes), boxes
        assert max(boxes, key=boxes.get) == "train"
    assert _split(540)["train"] > 0.45 * 540  # and more when the checks before it finish early
    with pytest.raises(ValueError, match="unknown name"):
        runner.phase_box(100, "train", ["nope"])


def test_time_a_phase_leaves_unused_goes_to_the_later_phases():
    names = list(runner.SHARES)
    full = runner.phase_box(540 - 30, "tests", names[2:])  # setup used 30 s
    early = runner.phase_box(540 - 5, "tests", names[2:])  # setup used 5 s
    assert early > full
    assert runner.phase_box(400, "texture", []) == 400 - runner.RESERVE_S  # the last phase takes the rest


def test_schedule_length_from_the_measured_rate():
    metrics = [{"step": 10, "minutes": 0.5, "loss": 1}, {"step": 20, "minutes": 0.6, "loss": 1},
               {"step": 20, "minutes": 0.65, "eval_psnr": 23.0}, {"step": 80, "minutes": 1.1, "loss": 1}]
    rate = session_phases.training_rate(metrics)  # the first record (start-up) and the eval record left out
    assert rate == pytest.approx(60 / 30)
    assert session_phases.training_rate(metrics[:2]) is None
    assert abs(session_phases.steps_for(rate, 100, 80) - (80 + 2 * 100 * 0.95)) <= 1
    assert session_phases.steps_for(rate, 0, 80) == 81


def test_a_failing_or_overrunning_phase_is_recorded_and_earlier_results_survive(tmp_path):
    s = runner.Session(tmp_path / "out", tmp_path / "work", 600.0, {})
    artefact = tmp_path / "work" / "a.jsonl"

    def good(box):
        artefact.write_text('{"step": 1}\n')
        assert s.keep(artefact, "tokenizer_metrics.jsonl")
        return {"figure": 1.5}

    def failing(box):
        raise RuntimeError("it broke")

    def overrunning(box):
        s.sh([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1.0)

    seen = []

    def last(box):
        seen.append(json.loads((tmp_path / "out" / "summary.json").read_text())["phases"])

    summary = s.run([("setup", good), ("tests", failing), ("half", overrunning), ("texture", last)])
    phases = summary["phases"]
    assert phases["setup"]["status"] == "ok" and phases["setup"]["figure"] == 1.5
    assert phases["tests"] == {**phases["tests"], "status": "failed", "error": "RuntimeError: it broke"}
    assert phases["half"]["status"] == "timeout" and "killed after 1 s" in phases["half"]["error"]
    assert phases["half"]["seconds"] < 30
    assert phases["texture"]["status"] == "ok"
    assert set(seen[0]) == {"setup", "tests", "half"}  # the summary on disk is current after each phase
    out = tmp_path / "out"
    assert (out / "tokenizer_metrics.jsonl").read_text() == '{"step": 1}\n'
    assert json.loads((out / "summary.json").read_text())["files"] == ["summary.json", "session.log",
                                                                        "tokenizer_metrics.jsonl"]
    log = (out / "session.log").read_text()
    assert "started" in log and "it broke" in log
    assert sorted(p.name for p in out.iterdir()) == ["session.log", "summary.json", "tokenizer_metrics.jsonl"]
    with pytest.raises(ValueError, match="not one of the session's files"):
        s.keep(artefact, "other.txt")


def test_held_out_verdict_and_bench_table_parsing():
    rows = [{"checkpoint": c, "tokens": n, "psnr": p, "ssim": q} for c, n, p, q in [
        ("bicubic", 64, 21.0, 0.50), ("old", 64, 22.0, 0.53), ("new", 64, 22.5, 0.55),
        ("bicubic", 128, 22.0, 0.53), ("old", 128, 23.0, 0.59), ("new", 128, 23.4, 0.58)]]
    v = session_phases.compare(rows, "old", "new")
    assert v["psnr_gain"] == {64: 0.5, 128: 0.4} and v["margin"] == {64: 1.5, 128: 1.4}
    assert v["better_everywhere"] is False  # SSIM fell at 128 tokens
    rows[-1]["ssim"] = 0.60
    assert session_phases.compare(rows, "old", "new")["better_everywhere"] is True
    table = ("| model | dtype | stage | batch | img/s | peak MiB | CPU ms/img |\n|---|---|---|---:|---:|---:|---:|\n"
             "| m128 | bfloat16 | reconstruct | 64 | 412 | 2210 | 3 |\n"
             "| default | float32 | reconstruct | 1 | 55.2 | 90 | 7 |")
    assert session_phases.bench_rows(table) == [
        {"model": "m128", "dtype": "bfloat16", "stage": "reconstruct", "batch": 64, "img/s": 412.0, "peak_mib": 2210.0},
        {"model": "default", "dtype": "float32", "stage": "reconstruct", "batch": 1, "img/s": 55.2, "peak_mib": 90.0}]


def test_pack_held_out_crops_are_what_the_protocol_reads(tmp_path):
    pytest.importorskip("skimage")
    from gpstoken.train.data import DataConfig, EvalDataset, folder_images, offline_images

    names = ("skimage:coffee", "skimage:rocket")
    rows = prepare.write_heldout(tmp_path / "heldout", names)
    assert [r["source"] for r in rows] == list(names)
    cfg = DataConfig(source="offline", eval_crops_per_image=1)
    packed = EvalDataset(folder_images(tmp_path / "heldout")[0], cfg, 64)
    originals = EvalDataset([e for e in offline_images("heldout") if e.name in names], cfg, 64)
    for i in range(2):
        assert torch.equal(packed[i]["image"], originals[i]["image"])
        assert torch.equal(packed[i]["g_init"], originals[i]["g_init"])
    assert prepare.file_stem("mvtb:campus/holdout/P1070492.png") == "mvtb_campus_holdout_P1070492"


def test_gpu_config_continues_the_shipped_architecture():
    from gpstoken.checkpoint import read_metadata
    from gpstoken.models.configs import TokenizerConfig
    from gpstoken.train.tokenizer_trainer import TokenizerTrainConfig

    cfg = TokenizerTrainConfig.from_json(REPO / session_phases.TOKENIZER_CONFIG)
    light = TokenizerTrainConfig.from_json(REPO / "examples/configs/tiny_tokenizer_light.json")
    assert cfg.tokenizer_config() == light.tokenizer_config()
    assert cfg.init_from == session_phases.SHIPPED_TOKENIZER and cfg.lr_schedule == "cosine"
    shipped = read_metadata(REPO / session_phases.SHIPPED_TOKENIZER)["config"]  # init_from loads it strictly
    assert TokenizerConfig.from_dict(json.loads(shipped)) == cfg.tokenizer_config()
