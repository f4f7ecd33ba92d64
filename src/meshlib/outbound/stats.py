"""Process-wide state of every live mesh transport, for the control plane's reports and dashboards.

Each mesh transport registers its router here (weakly: a closed or
collected client disappears from the report). :func:`snapshot` merges them
into one JSON-able dict, per destination::

    {"destinations": {"payments": {
        "requests": 120, "errors": 3, "retries": 4, "budget_refusals": 0,
        "latency_ms": {"p50": 1.9, "p99": 7.5},
        "latency_split_s": {"calls": 120, "total": 0.9, "service": 0.6,
                            "network": 0.2, "meshlib": 0.1, "waits": 0.0},
        "endpoints": {"http://127.0.0.1:8001": {
            "breaker": "closed", "ejected": False, "requests": 61, "errors": 2}}}}}

Latency percentiles come from the last 2048 calls of each destination.
``latency_split_s`` sums the latency split (seconds) of every call made
while a meter provider was in place (:class:`meshlib.telemetry.latency.SplitTotals`);
:func:`split_by_edge` gives the same sums per caller -> destination edge.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshlib.outbound.routing import Router

__all__ = ["register", "snapshot", "split_by_edge", "unregister"]

_lock = threading.Lock()
_routers: weakref.WeakSet[Router] = weakref.WeakSet()


def register(router: Router) -> None:
    """Include a transport's router in :func:`snapshot` until it is closed or collected."""
    with _lock:
        _routers.add(router)


def unregister(router: Router) -> None:
    """Leave a router out of :func:`snapshot` (its client was closed)."""
    with _lock:
        _routers.discard(router)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000.0, 3)


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("requests", "errors", "retries", "budget_refusals"):
        into[key] += part[key]
    into["latencies"].extend(part["latencies"])
    for key, value in part["latency_split_s"].items():
        into["latency_split_s"][key] = into["latency_split_s"].get(key, 0) + value
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
                    "latencies": [],
                    "latency_split_s": {},
                    "endpoints": {},
                },
            )
            _merge(into, part)
    destinations: dict[str, Any] = {}
    for name, entry in merged.items():
        ordered = sorted(entry.pop("latencies"))
        entry["latency_ms"] = {"p50": _percentile(ordered, 0.5), "p99": _percentile(ordered, 0.99)}
        destinations[name] = entry
    return {"destinations": destinations}


def split_by_edge() -> dict[tuple[str, str], dict[str, float]]:
    """Latency split sums per ``(caller, destination)`` over every live mesh transport.

    The caller is the transport's ``service_name`` (``""`` when it has none).
    Read at metric collection time by ``meshlib.client.latency.*``; cheap
    enough to call often.

    Example::

        split_by_edge()[("orders", "payments")]["service"]   # seconds, summed
    """
    with _lock:
        routers = list(_routers)
    edges: dict[tuple[str, str], dict[str, float]] = {}
    for router in routers:
        caller = getattr(router, "caller", None) or ""
        for dest in [*router.destinations.values(), *router.origins.values()]:
            totals = dest.split_totals
            if not totals.calls:
                continue
            into = edges.setdefault((caller, dest.name), {})
            for key, value in totals.as_dict().items():
                into[key] = into.get(key, 0) + value
    return edges
