"""Background jobs with progress: the page polls a job while the model works.

One worker thread runs the jobs in order (the model computations share the CPU/GPU anyway);
a job reports its current stage through the ``report`` callback it is given.
"""
from __future__ import annotations

import queue
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Job:
    """State of one job: ``state`` is "queued", "running", "done" or "error"."""

    id: str
    what: str
    state: str = "queued"
    stage: str = "waiting for the previous job"
    created: float = field(default_factory=time.monotonic)
    started: Optional[float] = None
    result: Any = None
    error: Optional[str] = None
    status: int = 200

    def as_dict(self, position: int) -> dict:
        now = time.monotonic()
        out = {"job": self.id, "what": self.what, "state": self.state, "stage": self.stage,
               "elapsed": round(now - (self.started or self.created), 2)}
        if self.state == "queued":
            out["stage"] = f"waiting: {position} job(s) ahead"
        if self.state == "done":
            out["result"] = self.result
        if self.state == "error":
            out["error"], out["status"] = self.error, self.status
        return out


class JobRunner:
    """Runs ``fn(report)`` callables one at a time on a daemon thread; keeps the last ``keep`` jobs.

    ``expected`` exception types become the job's error message (their ``status`` attribute,
    default 400, is kept); anything else is reported as an internal error (500) with the
    traceback printed on the server's stderr.
    """

    def __init__(self, expected: tuple[type[BaseException], ...] = (ValueError,), keep: int = 64):
        self._expected = expected
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="gpstoken-studio-jobs", daemon=True)
        self._thread.start()

    def submit(self, what: str, fn: Callable[[Callable[[str], None]], Any]) -> Job:
        job = Job(secrets.token_urlsafe(9), what)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._queue.put((job, fn))
        return job

    def status(self, job_id: str) -> Optional[dict]:
        """The job as a dict (None when unknown)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            ahead = sum(1 for j in self._jobs.values() if j.state in ("queued", "running") and j.created < job.created)
            return job.as_dict(ahead)

    def wait(self, job_id: str, timeout: float = 600.0) -> Optional[dict]:
        """Block until the job ends (for tests and scripts); returns :meth:`status` (None for an unknown job)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status(job_id)
            if st is None or st["state"] in ("done", "error"):
                return st
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still running after {timeout} s")

    def _work(self) -> None:
        while True:
            job, fn = self._queue.get()
            job.state, job.started, job.stage = "running", time.monotonic(), "starting"

            def report(stage: str, job: Job = job) -> None:
                job.stage = stage

            try:
                job.result = fn(report)
                job.state = "done"
            except self._expected as e:
                job.error, job.status, job.state = str(e), getattr(e, "status", 400), "error"
            except Exception as e:  # noqa: BLE001 - reported to the page, traceback on stderr
                traceback.print_exc()
                job.error, job.status, job.state = f"internal error: {type(e).__name__}: {e}", 500, "error"
