"""One round of load on one path: sequential (sync), N-in-flight or fixed-rate (async); bounded.

A round returns per-request latencies plus the round's wall time and the client
process's CPU time (`time.process_time`: every thread of this process, so
the event loop and any telemetry thread are counted too):

```python
result = sync_round(opened.call, requests=500, time_limit=5.0)
result.latencies_us, result.cpu_s
```

The N-in-flight round is a closed loop: a new call starts when one ends, so once
the client is CPU-bound every latency is N ÷ throughput. The fixed-rate round is
an open loop (calls arrive on a Poisson schedule, whatever the earlier calls
are doing), which is how a service's outbound calls arrive and the way to
compare latency below saturation.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["STOP", "RoundResult", "async_round", "rate_round", "sync_round"]

STOP = threading.Event()
"""Set (by the SIGTERM/SIGINT handler) to end every loop early but cleanly."""


@dataclass
class RoundResult:
    """What one round measured."""

    latencies_us: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    errors: int = 0
    first_error: str | None = None

    @property
    def requests(self) -> int:
        """Requests completed (successful or not)."""
        return len(self.latencies_us)


def sync_round(call: Callable[[], int], *, requests: int, time_limit: float) -> RoundResult:
    """Call `call()` one after the other, at most `requests` times and `time_limit` seconds."""
    result = RoundResult()
    latencies = result.latencies_us
    perf = time.perf_counter_ns
    stop = perf() + int(time_limit * 1e9)
    cpu0, wall0 = time.process_time(), perf()
    for _ in range(requests):
        start = perf()
        try:
            status = call()
        except Exception as exc:  # a failed request is counted, never fatal
            status = 0
            result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
        end = perf()
        latencies.append((end - start) / 1e3)
        if status != 200:
            result.errors += 1
        if end > stop or STOP.is_set():
            break
    result.wall_s = (perf() - wall0) / 1e9
    result.cpu_s = time.process_time() - cpu0
    return result


async def _timed(call: Callable[[], Awaitable[int]], result: RoundResult) -> None:
    """Make one call; add its latency, and count it as an error unless it answered 200."""
    start = time.perf_counter_ns()
    try:
        status = await call()
    except Exception as exc:  # a failed request is counted, never fatal
        status = 0
        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
    result.latencies_us.append((time.perf_counter_ns() - start) / 1e3)
    if status != 200:
        result.errors += 1


async def async_round(
    call: Callable[[], Awaitable[int]], *, requests: int, concurrency: int, time_limit: float
) -> RoundResult:
    """Keep `concurrency` calls in flight until `requests` are done or `time_limit` passes."""
    result = RoundResult()
    perf = time.perf_counter_ns
    stop = perf() + int(time_limit * 1e9)
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0 and perf() < stop and not STOP.is_set():
            left -= 1
            await _timed(call, result)

    cpu0, wall0 = time.process_time(), perf()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), timeout=time_limit + 30
    )
    result.wall_s = (perf() - wall0) / 1e9
    result.cpu_s = time.process_time() - cpu0
    return result


async def rate_round(
    call: Callable[[], Awaitable[int]],
    *,
    requests: int,
    rate: float,
    concurrency: int,
    time_limit: float,
    seed: int = 9,
) -> RoundResult:
    """Start `requests` calls at Poisson arrival times of `rate` per second (open loop).

    Every round with the same `seed` follows the same schedule, so paths see the
    same bursts. Latency runs from a call's start; at most `concurrency` are in
    flight (an arrival past that waits, which shows as fewer requests per second).
    """
    result = RoundResult()
    perf = time.perf_counter_ns
    stop = perf() + int(time_limit * 1e9)
    gaps = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        try:
            await _timed(call, result)
        finally:
            slots.release()

    cpu0, wall0 = time.process_time(), perf()
    due = wall0
    tasks = []
    for _ in range(requests):
        due += int(gaps.expovariate(rate) * 1e9)
        wait = (due - perf()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        if perf() > stop or STOP.is_set():
            break
        await slots.acquire()
        tasks.append(asyncio.create_task(one()))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=time_limit + 30)
    result.wall_s = (perf() - wall0) / 1e9
    result.cpu_s = time.process_time() - cpu0
    return result
