"""The phases of ``examples/gpu/session.py`` (setup, tests, half, train, eval, bench, texture) and
the figures they read back. ``python examples/gpu/session_phases.py _half DEVICE FOLDER tiny|full``
is the half-precision check's child process."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from session_runner import REPO, PhaseTimeout, Session, read_jsonl

sys.path.insert(0, str(REPO))  # gpstoken from this tree (the device machine has it uninstalled)
SHIPPED_TOKENIZER = "gpstoken/weights/gpstoken_tiny.safetensors"
TOKENIZER_CONFIG = "examples/configs/tiny_tokenizer_light_gpu.json"
TEXTURE_CONFIG = "examples/configs/tiny_texture_retrain.json"
#: seconds a training run needs after its last step (checkpoint, final evaluation, export)
TRAIN_TAIL_S = 15.0


def steps_for(rate_steps_s: float, seconds: float, step_now: int, margin: float = 0.95) -> int:
    """``max_steps`` for a run at ``step_now`` that makes ``rate_steps_s`` steps per second for
    ``seconds`` (with a safety ``margin``): at least one more step."""
    return step_now + max(1, int(rate_steps_s * max(0.0, seconds) * margin))


def training_rate(metrics: list[dict[str, Any]]) -> Optional[float]:
    """Steps per second from a run's ``metrics.jsonl`` records (``step``, ``minutes``), leaving
    out the first record (start-up, compilation, data-loader warm-up); None with too few records."""
    rows = [(r["step"], r["minutes"]) for r in metrics if "minutes" in r and "step" in r and "eval_psnr" not in r]
    if len(rows) < 3:
        return None
    (s0, m0), (s1, m1) = rows[1], rows[-1]
    return (s1 - s0) / ((m1 - m0) * 60.0) if m1 > m0 and s1 > s0 else None


class Phases:
    """The session's phases (see the module docstring); ``tiny``: dry-run sizes."""

    def __init__(self, s: Session, device: str, pack: Path) -> None:
        self.s, self.device, self.pack = s, device, pack
        self.tiny = device == "cpu"
        self.py = sys.executable
        self.workers = 1 if self.tiny else max(1, (os.cpu_count() or 2) - 1)
        self.new_tokenizer = s.work / "tok" / "export" / "tokenizer.safetensors"
        self.ship_tokenizer = False

    def all(self) -> list[tuple[str, Callable[[float], Optional[dict[str, Any]]]]]:
        return [("setup", self.setup), ("tests", self.tests), ("half", self.half), ("train", self.train),
                ("eval", self.eval), ("bench", self.bench), ("texture", self.texture)]

    def _json_of(self, args: list[str], box: float) -> Any:
        """Run Python with ``args`` (a program that prints one JSON line last) in a child process;
        that line, parsed."""
        cap = self.s.work / "child.out"
        rc = self.s.sh([self.py, *args], box, capture=cap)
        lines = cap.read_text(errors="replace").strip().splitlines()
        if rc != 0 or not lines:
            raise RuntimeError(f"exit status {rc}: {lines[-1] if lines else 'no output'}")
        return json.loads(lines[-1])

    # ---------------------------------------------------------------- setup
    def setup(self, box: float) -> dict[str, Any]:
        import torch

        manifest_path = self.pack / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} is missing: run python examples/gpu/prepare.py before the "
                                    f"session and name .devdata/gpu in the device tool's carry")
        manifest = json.loads(manifest_path.read_text())
        info: dict[str, Any] = {
            "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "pack_commit": manifest.get("commit"), "pack_photos": len(manifest.get("train", [])),
        }
        how, placed = "native (already built)", None
        if importlib.util.find_spec("gpstoken._cpartition") is None and manifest.get("native"):
            placed = REPO / "gpstoken" / manifest["native"]
            shutil.copyfile(self.pack / manifest["native"], placed)
            how = "native (the pack's stable-ABI build)"
        check = ("import json, torch, gpstoken; from gpstoken.partition import native\n"
                 "torch.manual_seed(0); x = torch.rand(2, 3, 256, 256) * 2 - 1\n"
                 "a = [gpstoken.partition(x, n).regions for n in (64, 128, 256)]\n"
                 "on = native.native_available(); native._native = None\n"
                 "b = [gpstoken.partition(x, n).regions for n in (64, 128, 256)]\n"
                 "gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
                 "print(json.dumps({'native': on, 'equal': all(bool((p == q).all()) for p, q in zip(a, b)), "
                 "'gpu': gpu}))")
        start = self.s.clock()
        res = self._json_of(["-c", check], 0.6 * box)  # a child: this process keeps no CUDA context
        info["cuda"] = res["gpu"]
        self.s.summary["machine"] = info
        self.s.say(f"machine: python {info['python']}, torch {info['torch']}, {info['cpus']} CPUs, "
                   f"GPU {info['cuda'] or 'none (dry run)'}")
        if not res["native"]:
            how, placed = self._compile_native()
            res = self._json_of(["-c", check], box - (self.s.clock() - start)) if placed else res
        if res["native"] and not res["equal"]:
            if placed is None:
                raise RuntimeError("the installed native partition disagrees with the pure-torch one")
            placed.unlink()
            how = "torch (the native build disagreed with the pure-torch partition and was removed)"
        elif not res["native"]:
            how = "torch (no native build loads here)"
        self.s.say(f"partition: {how}")
        return {"partition": how, **info}

    def _compile_native(self) -> tuple[str, Optional[Path]]:
        """Compile the native partition with this machine's C compiler: (how, the file or None)."""
        spec = importlib.util.spec_from_file_location("gpu_prepare", Path(__file__).with_name("prepare.py"))
        prepare = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(prepare)
        try:
            return "native (compiled on this machine)", prepare.compile_native(REPO / "gpstoken")
        except (ImportError, OSError, subprocess.CalledProcessError) as e:
            self.s.log(f"compiling the native partition failed: {getattr(e, 'stderr', '') or e}")
        return "torch", None

    # ---------------------------------------------------------------- tests
    def tests(self, box: float) -> dict[str, Any]:
        files = (["tests/test_backends.py"] if self.tiny else  # the tests that run CUDA code when it is there
                 ["tests/test_render.py", "tests/test_backends.py",
                  "tests/test_partition.py::test_hist_kernel_matches_torch_twin"])
        cap = self.s.work / "tests.out"
        env = {} if self.tiny else {"GPSTOKEN_TEST_NO_INTERPRET": "1"}
        rc = self.s.sh([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], box, capture=cap, env=env)
        lines = cap.read_text(errors="replace").strip().splitlines()
        result = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ (passed|failed|error)", ln)),
                      "no result line")
        self.s.say(f"tests: {result}")
        if rc != 0:
            failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
            raise RuntimeError(f"pytest exit status {rc}: {result}; {failed[:10]}")
        return {"files": files, "result": result}

    # ---------------------------------------------------------------- half precision
    def half(self, box: float) -> dict[str, Any]:
        res = self._json_of([__file__, "_half", self.device, str(self.pack / "data" / "heldout"),
                             "tiny" if self.tiny else "full"], box)
        for row in res["dtypes"]:
            self.s.say(f"half: {row}")
        self.s.say(f"half: forced non-finite decode: {res['forced_fallback']}; partition on {self.device} equals "
                   f"the CPU one: {res['partition_on_device_equal']}")
        return res

    # ---------------------------------------------------------------- training
    def _train_config(self) -> Path:
        cfg = json.loads((REPO / TOKENIZER_CONFIG).read_text())
        cfg["data"].update(source=str(self.pack / "data" / "train"), eval_source=str(self.pack / "data" / "heldout"),
                           num_workers=self.workers)
        cfg["init_from"] = SHIPPED_TOKENIZER
        if self.tiny:
            cfg.update(batch_size=2, log_every=1, eval_every=4, save_every_minutes=0.5)
        path = self.s.work / "tokenizer_gpu.json"
        path.write_text(json.dumps(cfg, indent=1))
        max_short = json.loads((self.pack / "manifest.json").read_text())["max_short_side"]
        if 256 * cfg["data"]["scale_range"][1] > max_short:
            self.s.say(f"train: note: scale_range {cfg['data']['scale_range']} resizes past the pack's "
                       f"max_short_side {max_short}: those photos are upscaled")
        return path

    def train(self, box: float) -> dict[str, Any]:
        start = self.s.clock()
        config, run = self._train_config(), self.s.work / "tok"
        shutil.rmtree(run, ignore_errors=True)
        base = [self.py, "-m", "gpstoken.train.cli", "tokenizer", "--config", str(config), "--out", str(run)]
        probe_s = min(0.2 * box, 75.0)
        rc = self.s.sh([*base, "--max-minutes", f"{probe_s / 60:.3f}"], box - TRAIN_TAIL_S)
        if rc != 0:
            raise RuntimeError(f"the probe run failed (exit status {rc}); see session.log")
        metrics = read_jsonl(run / "metrics.jsonl")
        rate = training_rate(metrics)
        step = max((r.get("step", 0) for r in metrics), default=0)
        left = box - (self.s.clock() - start)
        details: dict[str, Any] = {"probe_steps": step, "steps_per_s": rate}
        try:
            if rate is None or left < 2 * TRAIN_TAIL_S + 20:
                self.s.say(f"train: no time or rate for a second part (rate {rate}, {left:.0f} s left)")
            else:
                startup = 20.0  # seconds from launch to the first step of a resumed run (workers, model)
                run_s = left - startup - TRAIN_TAIL_S
                max_steps = steps_for(rate, run_s, step)
                details["max_steps"] = max_steps
                self.s.say(f"train: {rate:.2f} steps/s; resuming at step {step} with max_steps {max_steps}")
                rc = self.s.sh([*base, "--resume", "--max-steps", str(max_steps), "--max-minutes",
                                f"{(left - TRAIN_TAIL_S) / 60:.3f}"], left)
                if rc != 0:
                    raise RuntimeError(f"the main run failed (exit status {rc}); the last export is kept")
        finally:  # what the run left is kept, also when it failed or overran its box
            self.s.keep(run / "metrics.jsonl", "tokenizer_metrics.jsonl")
            kept = self.s.keep(self.new_tokenizer, "tokenizer.safetensors")
        if not kept:
            raise RuntimeError("no exported tokenizer")
        metrics = read_jsonl(run / "metrics.jsonl")
        evals = [r for r in metrics if "eval_psnr" in r]
        cfg = json.loads(config.read_text())
        details.update(final_step=max((r.get("step", 0) for r in metrics), default=0), batch_size=cfg["batch_size"],
                       eval_psnr=[(r["step"], round(r["eval_psnr"], 3)) for r in evals])
        self.s.say(f"train: step {details['final_step']}, held-out PSNR (trainer, {cfg['eval_n_tokens']} tokens) "
                   f"{details['eval_psnr'][-3:]}")
        return details

    # ---------------------------------------------------------------- held-out evaluation
    def eval(self, box: float) -> dict[str, Any]:
        if not self.new_tokenizer.is_file():
            raise RuntimeError("no new tokenizer to evaluate (the train phase exported none)")
        from gpstoken.checkpoint import fit_steps, read_metadata

        result = self.s.work / "eval.json"
        table = self.s.work / "heldout.md"
        # both with the shipped model's test-time fitting (a training export carries none)
        fit = fit_steps(read_metadata(REPO / SHIPPED_TOKENIZER), SHIPPED_TOKENIZER)
        rc = self.s.sh([self.py, "examples/evaluate_tokenizer.py", "bicubic", f"{SHIPPED_TOKENIZER}:adaptive",
                        f"{self.new_tokenizer}:adaptive", "--heldout", str(self.pack / "data" / "heldout"),
                        "--fit-steps", str(fit), "--json", str(result),
                        *(["--tokens", "64", "--no-lpips"] if self.tiny else [])],
                       box, capture=table)
        self.s.keep(table, "heldout.md")
        if rc != 0:
            raise RuntimeError(f"evaluate_tokenizer.py exit status {rc}")
        rows = json.loads(result.read_text())["rows"]
        verdict = compare(rows, SHIPPED_TOKENIZER, str(self.new_tokenizer))
        self.ship_tokenizer = verdict["better_everywhere"]
        self.s.summary["heldout"] = verdict
        self.s.say(f"eval: new - shipped PSNR (dB) {verdict['psnr_gain']}, new - bicubic {verdict['margin']}; "
                   f"better at every count: {verdict['better_everywhere']}")
        return verdict

    # ---------------------------------------------------------------- throughput
    def bench(self, box: float) -> dict[str, Any]:
        """Batched rows first (batch 16 / 64, no naive loop: issue 13's M128 figure), then batch 1
        beside the naive per-image loop in what is left; rows are kept as they are printed."""
        start, table, parts = self.s.clock(), self.s.work / "bench.md", []
        runs = ([["--models", "default", "--batch", "1", "--images", "2", "--reps", "1", "--dtype", "float32"]]
                if self.tiny else
                [["--models", "m128", "default", "--batch", "16", "64", "--no-naive", "--reps", "2",
                  "--dtype", "bfloat16", "float16", "float32"],
                 ["--models", "m128", "default", "--batch", "1", "--images", "16", "--reps", "1", "--dtype",
                  "bfloat16", "float16", "float32"]])
        status = "ok"
        for i, args in enumerate(runs):
            cap = self.s.work / f"bench{i}.md"
            try:
                rc = self.s.sh([self.py, "benchmarks/bench_throughput.py", "--stages", "reconstruct", "--device",
                                self.device, *args], box - (self.s.clock() - start), capture=cap)
                status = status if rc == 0 else f"exit status {rc}"
            except PhaseTimeout as e:
                status = f"cut at the time box ({e})"
            finally:
                parts.append(cap.read_text(errors="replace") if cap.is_file() else "")
                table.write_text("\n".join(parts))
                self.s.keep(table, "bench.md")
            if status != "ok":
                break
        rows = bench_rows(table.read_text(errors="replace"))
        m128 = [r for r in rows if r["model"] == "m128"]
        best = max(m128, key=lambda r: r["img/s"], default=None)
        fits = max((r for r in m128 if r["peak_mib"] * 2**20 <= 2.6e9), key=lambda r: r["img/s"], default=None)
        self.s.say(f"bench: {len(rows)} rows; M128 reconstruct best {best}; best within 2.6 GB {fits}")
        if status != "ok":
            raise RuntimeError(f"bench_throughput.py: {status}; {len(rows)} rows kept")
        return {"rows": len(rows), "m128_best": best, "m128_best_within_2_6GB": fits}

    # ---------------------------------------------------------------- texture model
    def texture(self, box: float) -> dict[str, Any]:
        tokenizer = str(self.new_tokenizer) if self.ship_tokenizer else SHIPPED_TOKENIZER
        cfg = json.loads((REPO / TEXTURE_CONFIG).read_text())
        cfg["tokenizer"] = tokenizer
        cfg["data"].update(source=str(self.pack / "data" / "classes"), num_workers=self.workers)
        cfg.update(save_every_minutes=1.0, extract_samples=32 if self.tiny else 4096,
                   extract_batch_size=8 if self.tiny else 64)
        if self.tiny:
            cfg.update(batch_size=8, log_every=1)
        config, run = self.s.work / "texture_gpu.json", self.s.work / "tex"
        config.write_text(json.dumps(cfg, indent=1))
        shutil.rmtree(run, ignore_errors=True)
        self.s.say(f"texture: on the tokens of {tokenizer}")
        try:
            rc = self.s.sh([self.py, "-m", "gpstoken.train.cli", "texture", "--config", str(config), "--out", str(run),
                            "--max-minutes", f"{max(0.1, box - 2 * TRAIN_TAIL_S) / 60:.3f}"], box)
        finally:
            self.s.keep(run / "metrics.jsonl", "texture_metrics.jsonl")
            kept = self.s.keep(run / "export" / "generator.safetensors", "generator.safetensors")
        metrics = read_jsonl(run / "metrics.jsonl")
        losses = [(r["step"], round(r["loss"], 4)) for r in metrics if "loss" in r]
        self.s.say(f"texture: {len(losses)} loss records, last {losses[-3:]}")
        if rc != 0 or not kept:
            raise RuntimeError(f"texture training exit status {rc}, export {'kept' if kept else 'missing'}")
        return {"tokenizer": tokenizer, "steps": losses[-1][0] if losses else 0, "loss": losses[-5:]}


def compare(rows: list[dict[str, Any]], shipped: str, new: str) -> dict[str, Any]:
    """Held-out verdict from ``evaluate_tokenizer.py --json`` rows: per token count the PSNR gain
    of ``new`` over ``shipped`` and over the bicubic thumbnail, and whether ``new`` has a higher
    PSNR and SSIM than ``shipped`` at every count."""
    by = {(r["checkpoint"], r["tokens"]): r for r in rows}
    counts = sorted({r["tokens"] for r in rows})
    gain = {n: round(by[new, n]["psnr"] - by[shipped, n]["psnr"], 3) for n in counts}
    margin = {n: round(by[new, n]["psnr"] - by["bicubic", n]["psnr"], 3) for n in counts}
    better = all(gain[n] > 0 and by[new, n]["ssim"] >= by[shipped, n]["ssim"] for n in counts)
    return {"psnr_gain": gain, "margin": margin, "better_everywhere": better,
            "rows": [{k: r[k] for k in ("checkpoint", "tokens", "psnr", "ssim") if k in r} for r in rows]}


def bench_rows(text: str) -> list[dict[str, Any]]:
    """The rows of ``bench_throughput.py``'s markdown table (model, dtype, stage, batch, img/s, peak MiB)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[3].isdigit():
            try:
                rows.append({"model": cells[0], "dtype": cells[1], "stage": cells[2], "batch": int(cells[3]),
                             "img/s": float(cells[4]), "peak_mib": float(cells[5])})
            except ValueError:
                pass
    return rows


def half_check() -> None:
    """(child process of the ``half`` phase) Reconstruction of the held-out crops at 128 tokens in
    float32 / bfloat16 / float16 with the default tokenizer, half precision with a random-weight
    M128 (not when ``tiny``), and a forced non-finite half-precision decode; prints one JSON line."""
    import tempfile
    import warnings

    import torch
    from PIL import Image

    import gpstoken
    from gpstoken import hub
    from gpstoken.images import to_tensor
    from gpstoken.metrics import psnr
    from gpstoken.models.configs import TOKENIZER_ARCHS
    from gpstoken.models.tokenizer import GPSTokenizer
    from gpstoken.pipeline import Tokenizer
    from gpstoken.runtime import native_cpu_bfloat16

    device, folder, tiny = torch.device(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "tiny"
    cuda = device.type == "cuda"
    images = torch.cat([to_tensor(Image.open(p))[0] for p in sorted(folder.glob("*.png"))])
    layout = gpstoken.partition(images, 128)
    on_device = gpstoken.partition(images.to(device), 128)  # the torch path (+ Triton histogram on CUDA)
    out: dict[str, Any] = {"partition_on_device_equal": bool(torch.equal(on_device.regions.cpu(), layout.regions))}
    dtypes = ["float32", "bfloat16", "float16"] if cuda else ["float32"] + (["bfloat16"] if native_cpu_bfloat16()
                                                                             else [])
    out["dtypes"] = []

    def reconstruct(tok) -> tuple[torch.Tensor, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = tok.decode_tensor(tok.encode_tensor(images.to(device), layout)).cpu()
        return rec, [str(w.message)[:120] for w in caught if issubclass(w.category, RuntimeWarning)]

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        m128 = Path(tmp) / "m128-random.safetensors"
        config = TOKENIZER_ARCHS["gpstoken-m128"]
        hub.save_checkpoint(GPSTokenizer(config).state_dict(), m128, config.to_dict(), "tokenizer")
        for model in ["default"] + ([] if tiny else [str(m128)]):
            ref = None
            for dt in dtypes:
                rec, warned = reconstruct(gpstoken.load_tokenizer(model, device=device, dtype=dt))
                ref = rec if ref is None else ref
                out["dtypes"].append({"model": "default" if model == "default" else "m128-random", "dtype": dt,
                                      "finite": bool(torch.isfinite(rec).all()),
                                      "psnr_db": round(psnr(rec, images).mean().item(), 3),
                                      "max_abs_diff_vs_float32": round((rec - ref).abs().max().item(), 5),
                                      "fallback_warnings": warned})
    half = torch.float16 if cuda else (torch.bfloat16 if native_cpu_bfloat16() else None)
    if half is None:
        out["forced_fallback"] = "skipped: no half precision on this CPU"
    else:
        base = gpstoken.load_tokenizer("default", device=device)
        tok = Tokenizer(base.model, base.name, device, half)
        tokens = base.encode_tensor(images.to(device), layout)
        decode, seen = tok.model.decode, []

        def overflowing(*args, **kw):  # what an fp16 overflow looks like: inf/nan in the output
            autocast = torch.is_autocast_enabled(device.type)
            seen.append(str(torch.get_autocast_dtype(device.type)) if autocast else "float32")
            result = decode(*args, **kw)
            return result * float("nan") if autocast else result

        tok.model.decode = overflowing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = tok.decode_tensor(tokens)
        tok.model.decode = decode
        diff = (rec - base.decode_tensor(tokens)).abs().max().item()
        out["forced_fallback"] = {"decodes": seen, "finite": bool(torch.isfinite(rec).all()),
                                  "warned": any("decoded again in float32" in str(w.message) for w in caught),
                                  "max_abs_diff_vs_float32": round(diff, 6)}
    print(json.dumps(out))


if __name__ == "__main__" and sys.argv[1:2] == ["_half"]:
    half_check()
