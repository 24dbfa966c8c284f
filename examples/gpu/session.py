"""One-command GPU session: spend a lent GPU's few minutes on issue 12's training and issue 13's table.

Run on the device machine from the carried repository (``docs/model_card.md``, "When a GPU is
lent", has the exact device-tool call), after ``python examples/gpu/prepare.py`` built the data
pack ``.devdata/gpu`` here:

    python examples/gpu/session.py --budget-minutes 9          # on the GPU; results in $OUT
    python examples/gpu/session.py --device cpu --budget-minutes 6 --out runs/gpu_dry/out   # dry run

Phases, in this order, each in its own process group with a time box (a phase that overruns is
killed; the next one starts on time). A box is the phase's share of the time left, so time a
phase does not use goes to the later ones:

* ``setup``: the native partition (the pack's stable-ABI build, else one compiled with the
  machine's C compiler, else the pure-torch path), checked against the pure-torch partition;
* ``tests``: the render, backend and histogram-kernel tests, on CUDA with the real Triton kernels;
* ``half``: float16 and bfloat16 reconstruction against float32 on the held-out crops, the
  float32 re-decode of a non-finite half-precision decode (forced), and the partition of CUDA
  images against the CPU one;
* ``train``: the embedded light tokenizer continued from the shipped weights
  (``examples/configs/tiny_tokenizer_light_gpu.json``, photos from the pack); a probe measures
  steps/s, then the run resumes with ``max_steps`` set so that its cosine schedule ends with the box;
* ``eval``: the new and the shipped tokenizer and the bicubic thumbnail on the held-out crops at
  64 / 128 / 256 tokens (``examples/evaluate_tokenizer.py``);
* ``bench``: ``benchmarks/bench_throughput.py``, reconstruct, random-weight M128 and the default,
  bfloat16 / float16 / float32: batch 16 and 64 first, then batch 1 beside the naive loop;
* ``texture``: the generator's texture model retrained on the tokens of the new tokenizer when it
  beat the shipped one at every token count, else of the shipped one
  (``examples/configs/tiny_texture_retrain.json``).

What comes back (at most 8 files in ``--out``): ``summary.json`` (rewritten after every phase:
statuses, times, figures), ``session.log`` (every phase's output), ``tokenizer.safetensors``
and ``tokenizer_metrics.jsonl``, ``heldout.md``, ``bench.md``, ``generator.safetensors`` and
``texture_metrics.jsonl``. A phase's files are copied as soon as it ends, so a later failure
loses nothing. ``--device cpu`` runs every phase with tiny sizes (a dry run of the wiring).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # gpstoken from this tree (the device machine has it uninstalled)
PACK = REPO / ".devdata" / "gpu"
SHIPPED_TOKENIZER = "gpstoken/weights/gpstoken_tiny.safetensors"
TOKENIZER_CONFIG = "examples/configs/tiny_tokenizer_light_gpu.json"
TEXTURE_CONFIG = "examples/configs/tiny_texture_retrain.json"
#: each phase's share of the budget (the order is the run order) ...
SHARES: dict[str, float] = {"setup": 0.04, "tests": 0.08, "half": 0.04, "train": 0.50, "eval": 0.07,
                            "bench": 0.13, "texture": 0.14}
#: ... and the seconds it gets at least (start-up, imports and data loading take this long even on a GPU)
FLOORS: dict[str, float] = {"setup": 30.0, "tests": 30.0, "half": 25.0, "train": 90.0, "eval": 30.0,
                            "bench": 40.0, "texture": 50.0}
#: seconds kept back at the end for the summary
RESERVE_S = 5.0
#: seconds a training run needs after its last step (checkpoint, final evaluation, export)
TRAIN_TAIL_S = 15.0
#: the device tool returns at most 8 files; these are the session's
OUT_FILES = ("summary.json", "session.log", "tokenizer.safetensors", "tokenizer_metrics.jsonl", "heldout.md",
             "bench.md", "generator.safetensors", "texture_metrics.jsonl")
LOG_LIMIT = 15 * 2**20  # the tool returns files of up to 16 MiB


class PhaseTimeout(Exception):
    """A phase's command ran past its time box and was killed."""


def phase_box(remaining_s: float, phase: str, later: list[str]) -> float:
    """Seconds for ``phase`` when ``remaining_s`` are left and the ``later`` phases follow: its
    share of what is left (less :data:`RESERVE_S`) in proportion to the shares still to come, at
    least its floor, but never eating into the floors of the later phases."""
    if phase not in SHARES or any(p not in SHARES for p in later):
        raise ValueError(f"phase: unknown name in {[phase, *later]}; known: {list(SHARES)}")
    usable = remaining_s - RESERVE_S
    box = max(FLOORS[phase], usable * SHARES[phase] / sum(SHARES[p] for p in [phase, *later]))
    return max(0.0, min(box, usable - sum(FLOORS[p] for p in later)))


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return rows


class Session:
    """Runs the phases within the budget, logs their output and keeps ``summary.json`` current."""

    def __init__(self, out: Path, work: Path, budget_s: float, env: dict[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.work, self.env, self.clock = out, work, env, clock
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "session.log"
        self.t0 = clock()
        self.deadline = self.t0 + budget_s
        self.summary: dict[str, Any] = {"budget_s": budget_s, "phases": {}, "files": ["summary.json", "session.log"]}
        self.write_summary()

    # ------------------------------------------------------------------ bookkeeping
    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def say(self, text: str) -> None:
        """A line for the caller (stdout: the tool's output tail) and the log."""
        print(text, flush=True)
        self.log(f"[session {self.clock() - self.t0:6.1f}s] {text}")

    def write_summary(self) -> None:
        tmp = self.out / ".summary.json.partial"
        tmp.write_text(json.dumps(self.summary, indent=1, default=str))
        os.replace(tmp, self.out / "summary.json")

    def keep(self, src: Path, name: str) -> bool:
        """Copy ``src`` to ``out/name`` (one of :data:`OUT_FILES`) now; False when it is missing."""
        if name not in OUT_FILES:
            raise ValueError(f"keep: {name} is not one of the session's files {OUT_FILES}")
        if not src.is_file():
            return False
        tmp = self.out / f".{name}.partial"
        shutil.copyfile(src, tmp)
        os.replace(tmp, self.out / name)
        if name not in self.summary["files"]:
            self.summary["files"].append(name)
        return True

    def remaining(self) -> float:
        return self.deadline - self.clock()

    # ------------------------------------------------------------------ running
    def run(self, phases: list[tuple[str, Callable[[float], Optional[dict[str, Any]]]]]) -> dict[str, Any]:
        """Run ``(name, function(box_seconds) -> details)`` in order; a failing or overrunning
        phase is recorded and the next one starts. Returns the summary."""
        names = [n for n, _ in phases]
        for i, (name, fn) in enumerate(phases):
            box = phase_box(self.remaining(), name, names[i + 1:])
            start = self.clock()
            rec: dict[str, Any] = {"box_s": round(box, 1)}
            self.say(f"phase {name}: start, box {box:.0f} s")
            try:
                if box < 1.0:
                    raise PhaseTimeout("no time left")
                rec.update(fn(box) or {})
                rec["status"] = "ok"
            except PhaseTimeout as e:
                rec.update(status="timeout", error=str(e))
            except Exception as e:  # noqa: BLE001 - a phase's failure must not end the session
                rec.update(status="failed", error=f"{type(e).__name__}: {e}")
                self.log(traceback.format_exc())
            rec["seconds"] = round(self.clock() - start, 1)
            self.summary["phases"][name] = rec
            self.write_summary()
            self.say(f"phase {name}: {rec['status']} in {rec['seconds']:.0f} s"
                     + (f" ({rec['error']})" if "error" in rec else ""))
        self.summary["seconds"] = round(self.clock() - self.t0, 1)
        self._trim_log()
        self.write_summary()
        return self.summary

    def _trim_log(self) -> None:
        if self.log_path.is_file() and self.log_path.stat().st_size > LOG_LIMIT:
            data = self.log_path.read_bytes()[-LOG_LIMIT:]
            self.log_path.write_bytes(b"[... start of the log cut to fit the tool's file limit ...]\n" + data)

    def sh(self, cmd: list[str], timeout_s: float, *, capture: Optional[Path] = None,
           env: Optional[dict[str, str]] = None) -> int:
        """Run ``cmd`` from the repository root in its own process group, output appended to the
        log (and written to ``capture`` when given); kill the group after ``timeout_s`` and raise
        :class:`PhaseTimeout`. Returns the exit status."""
        self.log(f"$ {' '.join(cmd)}  (time box {timeout_s:.0f} s)")
        sink = open(capture, "w") if capture else open(self.log_path, "a")
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **self.env, **(env or {})})
            try:
                rc = proc.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                what = cmd[2] if cmd[1:2] == ["-m"] else Path(cmd[min(1, len(cmd) - 1)]).name
                raise PhaseTimeout(f"{what} killed after {timeout_s:.0f} s") from None
            finally:
                _kill_group(proc)  # on a timeout, and any leftover workers of a finished command
        finally:
            sink.close()
            if capture:
                self.log(capture.read_text(errors="replace"))
        self.log(f"(exit status {rc})")
        return rc


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---------------------------------------------------------------------------- phases


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
        if rate is None or left < 2 * TRAIN_TAIL_S + 20:
            self.s.say(f"train: no time or rate for a second part (rate {rate}, {left:.0f} s left)")
        else:
            startup = 20.0  # seconds from launch to the first step of a resumed run (workers, model)
            run_s = left - startup - TRAIN_TAIL_S
            max_steps = steps_for(rate, run_s, step)
            details["max_steps"] = max_steps
            self.s.say(f"train: {rate:.2f} steps/s; resuming at step {step} with max_steps {max_steps}")
            try:
                rc = self.s.sh([*base, "--resume", "--max-steps", str(max_steps), "--max-minutes",
                                f"{(left - TRAIN_TAIL_S) / 60:.3f}"], left)
            finally:
                self.s.keep(run / "metrics.jsonl", "tokenizer_metrics.jsonl")
                self.s.keep(self.new_tokenizer, "tokenizer.safetensors")
            if rc != 0:
                raise RuntimeError(f"the main run failed (exit status {rc}); the last export is kept")
        self.s.keep(run / "metrics.jsonl", "tokenizer_metrics.jsonl")
        if not self.s.keep(self.new_tokenizer, "tokenizer.safetensors"):
            raise RuntimeError("no exported tokenizer")
        metrics = read_jsonl(run / "metrics.jsonl")
        evals = [r for r in metrics if "eval_psnr" in r]
        details.update(final_step=max((r.get("step", 0) for r in metrics), default=0),
                       batch_size=json.loads(config.read_text())["batch_size"],
                       eval_psnr=[(r["step"], round(r["eval_psnr"], 3)) for r in evals])
        self.s.say(f"train: step {details['final_step']}, held-out PSNR (trainer, "
                   f"{json.loads(config.read_text())['eval_n_tokens']} tokens) {details['eval_psnr'][-3:]}")
        return details

    # ---------------------------------------------------------------- held-out evaluation
    def eval(self, box: float) -> dict[str, Any]:
        if not self.new_tokenizer.is_file():
            raise RuntimeError("no new tokenizer to evaluate (the train phase exported none)")
        result = self.s.work / "eval.json"
        table = self.s.work / "heldout.md"
        rc = self.s.sh([self.py, "examples/evaluate_tokenizer.py", "bicubic", f"{SHIPPED_TOKENIZER}:adaptive",
                        f"{self.new_tokenizer}:adaptive", "--heldout", str(self.pack / "data" / "heldout"),
                        "--json", str(result), *(["--tokens", "64", "--no-lpips"] if self.tiny else [])],
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


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=9.0,
                   help="wall-clock minutes for all phases (default 9: the device tool runs a command for at most 10)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default), or cpu: a dry run of every phase with tiny sizes")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_session/out",
                   help="folder for the files that come back (default: $OUT, else runs/gpu_session/out)")
    p.add_argument("--work", default="runs/gpu_session", help="work folder (runs, caches; default runs/gpu_session)")
    p.add_argument("--pack", default=str(PACK), help="the data pack of examples/gpu/prepare.py (default .devdata/gpu)")
    p.add_argument("--phases", nargs="+", default=list(SHARES),
                   help=f"run only these phases (in the fixed order; default all: {' '.join(SHARES)}); eval "
                        "then reads the tokenizer a train phase left in --work, texture uses the shipped "
                        "tokenizer unless eval ran")
    a = p.parse_args(argv)
    unknown = [x for x in a.phases if x not in SHARES]
    if unknown:
        p.error(f"--phases: unknown {unknown}; choose from {list(SHARES)}")
    least = (sum(FLOORS[x] for x in a.phases) + RESERVE_S) / 60
    if not a.budget_minutes >= least:
        p.error(f"--budget-minutes: at least {least:.2f} for these phases (their floors), got {a.budget_minutes}")
    env = {"GPSTOKEN_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu for a dry run")
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"--out: {out} is not empty; give a new folder (the session's files would mix with others)")
    session = Session(out.resolve(), Path(a.work).resolve(), 60.0 * a.budget_minutes, env)
    session.summary.update(device=a.device, budget_minutes=a.budget_minutes)
    summary = session.run([(n, fn) for n, fn in Phases(session, a.device, Path(a.pack).resolve()).all()
                           if n in a.phases])
    for name in ("heldout.md", "bench.md"):
        if (out / name).is_file():
            print(f"\n{name}:\n{(out / name).read_text()}")
    print(f"\nsession: {summary['seconds']:.0f} s; files in {out}: {', '.join(summary['files'])}")
    for name, rec in summary["phases"].items():  # one line each (the tool shows the output's tail)
        brief = {k: v for k, v in rec.items() if k not in ("rows", "box_s")}
        print(f"{name}: {json.dumps(brief, default=str)[:600]}")
    return 0 if all(r.get("status") == "ok" for r in summary["phases"].values()) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_half":
        half_check()
    else:
        sys.exit(main())
