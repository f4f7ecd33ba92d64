"""Process-wide state of every live mesh transport, for the control plane's reports and dashboards.

Each mesh transport registers its router here (weakly: a closed or
collected client disappears from the report). `snapshot` merges them
into one JSON-able dict, per destination:

```text
{"destinations": {"payments": {
    "requests": 120, "errors": 3, "retries": 4, "budget_refusals": 0,
    "latency_ms": {"p50": 1.9, "p99": 7.5}, "deadlines_exceeded": 0,
    "latency_split_s": {"calls": 120, "total": 0.9, "service": 0.6, "network": 0.2,
                        "unknown": 0.0, "meshlib": 0.1, "waits": 0.0},
    "latency_split_ms": {"service": {"p50": 4.1, "p99": 6.0}, "network": {...}, ...},
    "endpoints": {"http://127.0.0.1:8001": {
        "breaker": "closed", "ejected": False, "requests": 61, "errors": 2}}}}}
```

Latency percentiles come from the last 2048 calls of each destination.
`latency_split_s` sums the latency split (seconds) of every measured call
to the destination since the process started, closed clients included, and
`latency_split_ms` gives p50/p99 of each part over the last 1024 measured
calls (`meshlib.telemetry.latency.edge_latency`); `split_by_edge` gives
the sums per caller -> destination edge.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from meshlib.telemetry.latency import PARTS, EdgeLatency, edges

if TYPE_CHECKING:
    from meshlib.outbound.routing import Router

__all__ = ["register", "snapshot", "split_by_edge", "unregister"]

_lock = threading.Lock()
_routers: weakref.WeakSet[Router] = weakref.WeakSet()


def register(router: Router) -> None:
    """Include a transport's router in `snapshot` until it is closed or collected."""
    with _lock:
        _routers.add(router)


def unregister(router: Router) -> None:
    """Leave a router out of `snapshot` (its client was closed)."""
    with _lock:
        _routers.discard(router)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000.0, 3)


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("requests", "errors", "retries", "budget_refusals", "deadlines_exceeded"):
        into[key] += part[key]
    into["latencies"].extend(part["latencies"])
    for url, endpoint in part["endpoints"].items():
        known = into["endpoints"].get(url)
        if known is None:
            into["endpoints"][url] = dict(endpoint)
            continue
        known["requests"] += endpoint["requests"]
        known["errors"] += endpoint["errors"]
        known["ejected"] = known["ejected"] or endpoint["ejected"]
        if endpoint["breaker"] != "closed":
            known["breaker"] = endpoint["breaker"]


def snapshot() -> dict[str, Any]:
    """Counters, latency percentiles and endpoint states over every live mesh transport."""
    with _lock:
        routers = list(_routers)
    merged: dict[str, dict[str, Any]] = {}
    for router in routers:
        for dest in [*router.destinations.values(), *router.origins.values()]:
            name = dest.name
            part = dest.stats()
            into = merged.setdefault(
                name,
                {
                    "requests": 0,
                    "errors": 0,
                    "retries": 0,
                    "budget_refusals": 0,
                    "deadlines_exceeded": 0,
                    "latencies": [],
                    "endpoints": {},
                },
            )
            _merge(into, part)
    split = _split_by_destination()
    destinations: dict[str, Any] = {}
    for name, entry in merged.items():
        ordered = sorted(entry.pop("latencies"))
        entry["latency_ms"] = {"p50": _percentile(ordered, 0.5), "p99": _percentile(ordered, 0.99)}
        sums, percentiles = split.get(name, ({}, {}))
        entry["latency_split_s"] = sums
        entry["latency_split_ms"] = percentiles
        destinations[name] = entry
    return {"destinations": destinations}


def _split_by_destination() -> dict[str, tuple[dict[str, float], dict[str, Any]]]:
    """Per destination, the split sums and percentiles over every caller in this process."""
    by_destination: dict[str, list[EdgeLatency]] = {}
    for (_, destination), edge in edges().items():
        by_destination.setdefault(destination, []).append(edge)
    found: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}
    for destination, records in by_destination.items():
        if len(records) == 1:
            merged = records[0]
        else:
            merged = EdgeLatency()
            for record in records:
                for key in ("calls", *PARTS):
                    setattr(
                        merged.totals,
                        key,
                        getattr(merged.totals, key) + getattr(record.totals, key),
                    )
                merged.recent.extend(record.recent)
        found[destination] = (merged.totals.as_dict(), merged.percentiles())
    return found


def split_by_edge() -> dict[tuple[str, str], dict[str, float]]:
    """Latency split sums per `(caller, destination)` since the process started.

    The caller is the transport's `service_name` (`""` when it has none).
    Monotonic: clients that closed still count. Read at metric collection
    time by `meshlib.client.latency.*`; cheap enough to call often.

    Example:
        ```python
        split_by_edge()[("orders", "payments")]["service"]   # seconds, summed
        ```
    """
    return {key: edge.totals.as_dict() for key, edge in edges().items()}
