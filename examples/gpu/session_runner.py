"""Time-boxed phases for ``examples/gpu/session.py``: the budget split, each command in its own
process group (killed at its box), the session log and ``summary.json``, and the files that come
back from the device machine (at most 8)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
#: each phase's share of the budget (the order is the run order) ...
SHARES: dict[str, float] = {"setup": 0.04, "tests": 0.08, "half": 0.04, "train": 0.50, "eval": 0.07,
                            "bench": 0.13, "texture": 0.14}
#: ... and the seconds it gets at least (start-up, imports and data loading take this long even on a GPU)
FLOORS: dict[str, float] = {"setup": 30.0, "tests": 30.0, "half": 25.0, "train": 90.0, "eval": 30.0,
                            "bench": 40.0, "texture": 50.0}
#: seconds kept back at the end for the summary
RESERVE_S = 5.0
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
