"""Bounds for hostile-input tests: how long a block took and how much Python memory it grew by."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MiB = 1 << 20


@dataclass
class Cost:
    """Wall time and peak traced memory growth of one measured block."""

    seconds: float = 0.0
    peak_bytes: int = 0


@contextmanager
def bounded(seconds: float = 2.0, megabytes: float = 50.0) -> Iterator[Cost]:
    """Run the block under tracemalloc and fail if it took longer or grew memory more than allowed.

    The bounds are generous for a refusal (which takes milliseconds and
    kilobytes) and far below what an unbounded parser needs for the same input
    (seconds and hundreds of MiB), so they separate the two on a busy machine.
    """
    cost = Cost()
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        cost.peak_bytes = peak - base
        if not started:
            tracemalloc.stop()
    assert cost.seconds < seconds, f"took {cost.seconds:.2f}s (bound {seconds}s)"
    assert cost.peak_bytes < megabytes * MiB, (
        f"grew by {cost.peak_bytes / MiB:.1f} MiB (bound {megabytes} MiB)"
    )
