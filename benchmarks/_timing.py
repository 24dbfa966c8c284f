"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""
from __future__ import annotations

import time
from typing import Callable


def best_of(fn: Callable[[], object], reps: int, *, warmup: bool = False) -> float:
    """Best wall-clock seconds of ``reps`` calls of ``fn`` (one untimed call first when ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
