"""The latency split: how much of a call was the service, the network, meshlib, and waiting.

A sidecar cannot tell these apart; a library can, because it sees both the
callee's own account of its time and every attempt's wire time. The clock
starts when the mesh transport receives the request and stops when the
response body is done. Each attempt is split on its own, and the call is
the sum of its attempts plus the waits between them:

```text
attempt  = wire + meshlib                  (from the attempt's start to the next wait, or the end)
wire     = service + network               when the callee reported its own time
         = unknown                         when it did not: the wire time stays unsplit
service  = Server-Timing `app;dur=`, else x-envoy-upstream-service-time (capped at the wire time)
call     = sum(attempts) + waits           (backoff and Retry-After sleeps, injected fault delays)
```

so `service + network + unknown + meshlib + waits == total` for every call.
Wire time runs from the attempt reaching the wire (httpx `trace` events of a
sampled call; the endpoint transport's call otherwise) to the response
headers, and for the final attempt on to the body's end.

Example:
    ```python
    parse_service_time([(b"server-timing", b"db;dur=2, app;dur=12.5")])   # 0.0125
    ```
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from meshlib.clock import Clock
from meshlib.telemetry import names

__all__ = [
    "ATTEMPTS_EXTENSION",
    "LATENCY_EXTENSION",
    "PARTS",
    "AttemptMarks",
    "EdgeLatency",
    "LatencySplit",
    "SplitTotals",
    "edge_latency",
    "edges",
    "measure_every_call",
    "parse_server_timing",
    "parse_service_time",
]

PARTS = ("total", "service", "network", "unknown", "meshlib", "waits")
"""The parts of the split, as `meshlib.latency.part` values of `meshlib.client.latency.time`."""

ATTEMPTS_EXTENSION = "meshlib.attempts"
"""Response extension holding the call's tuple of `meshlib.outbound.Attempt` records (each with its `split`)."""

LATENCY_EXTENSION = "meshlib.latency"
"""Response extension with the call's `LatencySplit` (set when the body is done); also the
request extension that asks for the split when nothing else does (`extensions={LATENCY_EXTENSION: True}`)."""

measure_all = False
"""Measure every call's split even without a sampled span or a meter provider (a control-plane
reporter turns this on so the dashboard shows the split); see `measure_every_call`."""

_ENVOY = b"x-envoy-upstream-service-time"
_SERVER_TIMING = b"server-timing"


def parse_server_timing(value: str | None) -> float | None:
    """Seconds in the `app` entry of a Server-Timing header, or None.

    A duration that is not a finite, non-negative number (`inf`, `nan`, `-3`)
    is garbage from the callee and treated as absent.

    Example:
        ```python
        parse_server_timing("db;dur=2, app;dur=12.5") == 0.0125
        ```
    """
    if not value:
        return None
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        if name.strip() != names.SERVER_TIMING_APP:
            continue
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key.strip() == "dur":
                try:
                    seconds = float(number.strip().strip('"')) / 1000.0
                except ValueError:
                    return None
                return seconds if 0.0 <= seconds < math.inf else None
    return None


def parse_service_time(raw_headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The callee's own time (seconds) from a response's raw headers, or None when it gave none.

    Server-Timing's `app` entry (what `MeshMiddleware` writes) wins; a
    callee behind Envoy reports `x-envoy-upstream-service-time` (milliseconds)
    instead. One pass over the headers, no dict built.

    Example:
        ```python
        parse_service_time([(b"x-envoy-upstream-service-time", b"42")])   # 0.042
        ```
    """
    timing: list[bytes] | None = None
    envoy: bytes | None = None
    for key, value in raw_headers:
        if len(key) == 13 and key.lower() == _SERVER_TIMING:
            if timing is None:
                timing = [value]
            else:
                timing.append(value)
        elif len(key) == 29 and key.lower() == _ENVOY:
            envoy = value
    if timing is not None:
        found = parse_server_timing(b", ".join(timing).decode("latin-1"))
        if found is not None:
            return found
    if envoy is not None:
        text = envoy.strip()
        if text.isdigit() and len(text) < 10:
            return int(text) / 1000.0
    return None


def measure_every_call(on: bool = True) -> None:
    """Measure the split of every call in this process (the control-plane reporter calls this).

    Without it the split is measured only when a call is sampled, a meter
    provider is in place, or the request asks (`extensions={"meshlib.latency": True}`).
    """
    global measure_all
    measure_all = on


class LatencySplit:
    """One call's or one attempt's time, split (seconds).

    `service + network + unknown + meshlib + waits == total`. `service` and
    `network` are None when no attempt's callee reported its time; `unknown`
    is then the wire time that could not be split. A call's split also has
    `attempts`, the split of each of its attempts (their `waits` are 0).

    Example:
        ```python
        split = response.extensions["meshlib.latency"]
        split.service, split.network, split.meshlib, split.waits
        ```
    """

    __slots__ = ("attempts", "meshlib", "network", "service", "total", "unknown", "waits")

    def __init__(
        self,
        total: float,
        service: float | None,
        network: float | None,
        meshlib: float,
        waits: float = 0.0,
        unknown: float = 0.0,
        attempts: tuple[LatencySplit, ...] = (),
    ) -> None:
        self.total = total
        self.service = service
        self.network = network
        self.unknown = unknown
        self.meshlib = meshlib
        self.waits = waits
        self.attempts = attempts

    @property
    def wire(self) -> float:
        """Service, network and unknown together: the time the request was out on the wire."""
        return (self.service or 0.0) + (self.network or 0.0) + self.unknown

    def as_dict(self) -> dict[str, float | None]:
        """`{"total", "service", "network", "unknown", "meshlib", "waits"}`, seconds."""
        return {part: getattr(self, part) for part in PARTS}

    def __repr__(self) -> str:
        def ms(value: float | None) -> str:
            return "unknown" if value is None else f"{value * 1000:.2f}ms"

        return (
            f"<LatencySplit total={ms(self.total)} service={ms(self.service)} "
            f"network={ms(self.network)} unknown={ms(self.unknown)} meshlib={ms(self.meshlib)} "
            f"waits={ms(self.waits)} attempts={len(self.attempts)}>"
        )


class SplitTotals:
    """Running sums of the split of every measured call on one edge (caller -> destination).

    Races between threads may lose an update, never corrupt one.

    Example:
        ```python
        totals = SplitTotals()
        totals.add(LatencySplit(0.012, 0.010, 0.0015, 0.0005))
        totals.calls, totals.service     # 1, 0.010
        ```
    """

    __slots__ = ("calls", "meshlib", "network", "service", "total", "unknown", "waits")

    def __init__(self) -> None:
        self.calls = 0
        self.total = 0.0
        self.service = 0.0
        self.network = 0.0
        self.unknown = 0.0
        self.meshlib = 0.0
        self.waits = 0.0

    def add(self, split: LatencySplit) -> None:
        """Count one call's split."""
        self.calls += 1
        self.total += split.total
        if split.service is not None:
            self.service += split.service
        if split.network is not None:
            self.network += split.network
        self.unknown += split.unknown
        self.meshlib += split.meshlib
        self.waits += split.waits

    def as_dict(self) -> dict[str, float]:
        """`{"calls", "total", "service", "network", "unknown", "meshlib", "waits"}` (seconds but calls)."""
        return {"calls": self.calls, **{part: getattr(self, part) for part in PARTS}}


_RECENT = 1024


class EdgeLatency:
    """The split of one edge's calls: monotonic sums since the process started, and recent calls.

    Process-level: it outlives the clients that add to it, so counters built
    on it never go back when a client closes. `recent` keeps the last 1024
    calls' parts for percentiles (a tuple per call, in `PARTS` order).

    Example:
        ```python
        edge = edge_latency("orders", "payments")
        edge.percentiles()["service"]["p99"]    # milliseconds, or None
        ```
    """

    __slots__ = ("recent", "totals")

    def __init__(self) -> None:
        self.totals = SplitTotals()
        self.recent: deque[tuple[float, float | None, float | None, float, float, float]] = deque(
            maxlen=_RECENT
        )

    def add(self, split: LatencySplit) -> None:
        """Count one call."""
        self.totals.add(split)
        self.recent.append(
            (split.total, split.service, split.network, split.unknown, split.meshlib, split.waits)
        )

    def percentiles(self) -> dict[str, dict[str, float | None]]:
        """p50 and p99 (milliseconds) of each part over the recent calls; None where never known."""
        rows = list(self.recent)
        found: dict[str, dict[str, float | None]] = {}
        for index, part in enumerate(PARTS):
            values = sorted(value for row in rows if (value := row[index]) is not None)
            found[part] = {"p50": _percentile(values, 0.5), "p99": _percentile(values, 0.99)}
        return found


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000.0, 3)


_EDGE_LIMIT = 4096
_edges: dict[tuple[str, str], EdgeLatency] = {}
_edges_lock = threading.Lock()


def edge_latency(caller: str, destination: str) -> EdgeLatency:
    """The process-wide split record of the edge `caller -> destination`, made on first use.

    Edges are never dropped (counters stay monotonic). Past 4096 edges (many
    distinct non-mesh hosts), new ones share the record `(caller, "other")`.
    """
    key = (caller, destination)
    found = _edges.get(key)
    if found is not None:
        return found
    with _edges_lock:
        found = _edges.get(key)
        if found is None:
            if len(_edges) >= _EDGE_LIMIT:
                key = (caller, "other")
                found = _edges.get(key)
            if found is None:
                found = _edges[key] = EdgeLatency()
        return found


def edges() -> dict[tuple[str, str], EdgeLatency]:
    """Every edge with at least one measured call, by `(caller, destination)`."""
    with _edges_lock:
        return {key: edge for key, edge in _edges.items() if edge.totals.calls}


class AttemptMarks:
    """Timestamps httpx's `trace` extension reports for one attempt.

    `first` is when the attempt reached the wire (connect or send started);
    `done` when the response headers were in. Pass `sync_hook` or
    `async_hook` (httpcore wants a coroutine function under asyncio) as the
    request's `trace` extension.
    """

    __slots__ = ("clock", "done", "first")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.first = 0.0
        self.done = 0.0

    def mark(self, name: str) -> None:
        """Note the time of a trace event that bounds the attempt's window."""
        if not self.first and name.endswith(".started") and not name.startswith("connection_pool"):
            self.first = self.clock.monotonic()
        elif name.endswith("receive_response_headers.complete"):
            self.done = self.clock.monotonic()

    def sync_hook(self, name: str, info: dict[str, Any]) -> None:
        """The `trace` extension for a sync transport."""
        self.mark(name)

    async def async_hook(self, name: str, info: dict[str, Any]) -> None:
        """The `trace` extension for an async transport."""
        self.mark(name)
