"""The latency split: how much of a call was the service, the network, and meshlib.

A sidecar cannot tell these apart; a library can, because it sees both the
callee's own account of its time and every attempt's wire time::

    total    = call start -> response body done, as the caller saw it
    service  = the callee's own time, from its ``Server-Timing: app;dur=<ms>``
    network  = attempt windows (httpx ``trace`` events: connect/send start ->
               response headers) + body transfer - service
    meshlib  = total - attempt windows - body transfer - waits (backoff, injected delay)

so ``service + network + meshlib + waits == total``. "meshlib" includes the
httpx/httpcore work outside the wire window (building the request, taking a
pooled connection): it is the client-side cost of the call. Without a
Server-Timing header ``service`` is None and ``network`` is the whole wire time::

    parse_server_timing("db;dur=2, app;dur=12.5")   # 0.0125
"""

from __future__ import annotations

import math
from typing import Any

from meshlib.clock import Clock
from meshlib.telemetry import names

__all__ = ["AttemptMarks", "LatencySplit", "SplitTotals", "parse_server_timing"]


def parse_server_timing(value: str | None) -> float | None:
    """Seconds in the ``app`` entry of a Server-Timing header, or None.

    ``parse_server_timing("db;dur=2, app;dur=12.5") == 0.0125``. A duration
    that is not a finite, non-negative number (`inf`, `nan`, `-3`) is garbage
    from the callee and treated as absent.
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


class LatencySplit:
    """One call's time, split: ``service + network + meshlib + waits == total`` (seconds)."""

    __slots__ = ("meshlib", "network", "service", "total", "waits")

    def __init__(
        self, total: float, service: float | None, network: float, meshlib: float, waits: float
    ) -> None:
        self.total = total
        self.service = service
        self.network = network
        self.meshlib = meshlib
        self.waits = waits

    def __repr__(self) -> str:
        service = "n/a" if self.service is None else f"{self.service * 1000:.2f}ms"
        return (
            f"<LatencySplit total={self.total * 1000:.2f}ms service={service} "
            f"network={self.network * 1000:.2f}ms meshlib={self.meshlib * 1000:.2f}ms "
            f"waits={self.waits * 1000:.2f}ms>"
        )


class SplitTotals:
    """Running sums of the split of every measured call on one edge (caller -> destination).

    Kept by each destination, for every call while a meter provider is in
    place, sampled or not; read at collection time by the observable
    instruments ``meshlib.client.latency.time`` and ``meshlib.client.latency.calls``
    (:mod:`meshlib.telemetry.state_metrics`), so a call pays a few float
    additions and no OpenTelemetry call. ``service`` counts 0 for a call
    without a Server-Timing ``app`` entry::

        totals = SplitTotals()
        totals.add(LatencySplit(0.012, 0.010, 0.0015, 0.0005, 0.0))
        totals.calls, totals.service     # 1, 0.010
    """

    __slots__ = ("calls", "meshlib", "network", "service", "total", "waits")

    def __init__(self) -> None:
        self.calls = 0
        self.total = 0.0
        self.service = 0.0
        self.network = 0.0
        self.meshlib = 0.0
        self.waits = 0.0

    def add(self, split: LatencySplit) -> None:
        """Count one call's split (races between threads may lose an update, never corrupt one)."""
        self.calls += 1
        self.total += split.total
        if split.service is not None:
            self.service += split.service
        self.network += split.network
        self.meshlib += split.meshlib
        self.waits += split.waits

    def as_dict(self) -> dict[str, float]:
        """``{"calls", "total", "service", "network", "meshlib", "waits"}`` (seconds but calls)."""
        return {
            "calls": self.calls,
            "total": self.total,
            "service": self.service,
            "network": self.network,
            "meshlib": self.meshlib,
            "waits": self.waits,
        }


class AttemptMarks:
    """Timestamps httpx's ``trace`` extension reports for one attempt.

    ``first`` is when the attempt reached the wire (connect or send started);
    ``done`` when the response headers were in. Pass ``sync_hook`` or
    ``async_hook`` (httpcore wants a coroutine function under asyncio) as the
    request's ``trace`` extension.
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
        """The ``trace`` extension for a sync transport."""
        self.mark(name)

    async def async_hook(self, name: str, info: dict[str, Any]) -> None:
        """The ``trace`` extension for an async transport."""
        self.mark(name)
