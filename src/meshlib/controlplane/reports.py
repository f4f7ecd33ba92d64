"""Instance reports: validated, trimmed, kept in bounded memory, expired when an instance falls silent.

Each instance of each service posts its counters every few seconds
(`meshlib.controlplane.reporter`). The store keeps the latest report
per instance, turns consecutive counters into rates, and aggregates them into
the mesh the dashboard draws: services, edges, endpoint states, and the
policy version each instance runs. It is sans-IO and takes a Clock:

```python
reports = ReportStore(max_instances=1000, ttl=60.0, clock=clock)
reports.ingest(InstanceReport.model_validate(body))
view = reports.mesh_view()        # {"services": [...], "edges": [...]}
```
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from meshlib.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "SPLIT_PARTS",
    "DestinationReport",
    "DiscoveredEndpoint",
    "DiscoveryReport",
    "EndpointReport",
    "InstanceReport",
    "PartLatency",
    "ReportStore",
    "SplitLatency",
]

Key = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=0)]


class _Lenient(BaseModel):
    # Reports come from many meshlib versions: newer fields are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)


class EndpointReport(_Lenient):
    """One endpoint as one instance sees it."""

    breaker: Annotated[str, StringConstraints(max_length=16)] = "closed"
    ejected: bool = False
    requests: Count = 0
    errors: Count = 0


class Latency(_Lenient):
    """Latency percentiles in milliseconds."""

    p50: Annotated[float, Field(ge=0)] = 0.0
    p99: Annotated[float, Field(ge=0)] = 0.0


class PartLatency(_Lenient):
    """p50 and p99 (milliseconds) of one part of the latency split; None where never known."""

    p50: Annotated[float, Field(ge=0)] | None = None
    p99: Annotated[float, Field(ge=0)] | None = None


class SplitLatency(_Lenient):
    """The latency split's percentiles per part (see `meshlib.telemetry.latency`)."""

    total: PartLatency = Field(default_factory=PartLatency)
    service: PartLatency = Field(default_factory=PartLatency)
    network: PartLatency = Field(default_factory=PartLatency)
    unknown: PartLatency = Field(default_factory=PartLatency)
    meshlib: PartLatency = Field(default_factory=PartLatency)
    waits: PartLatency = Field(default_factory=PartLatency)


SPLIT_PARTS = ("service", "network", "unknown", "meshlib", "waits")
"""The parts of the split the dashboard shows per edge."""


class DestinationReport(_Lenient):
    """Counters for the calls one instance made to one destination (cumulative since start)."""

    requests: Count = 0
    errors: Count = 0
    retries: Count = 0
    budget_refusals: Count = 0
    deadlines_exceeded: Count = 0
    latency_ms: Latency = Field(default_factory=Latency)
    latency_split_ms: SplitLatency = Field(default_factory=SplitLatency)
    endpoints: dict[Key, EndpointReport] = Field(default_factory=dict)


class DiscoveredEndpoint(_Lenient):
    """One endpoint as one instance's discovery sees it (`meshlib.discovery`)."""

    zone: Annotated[str, StringConstraints(max_length=64)] | None = None
    health: Annotated[str, StringConstraints(max_length=16)] = "unknown"
    selected: bool = True


class DiscoveryReport(_Lenient):
    """One destination's discovered endpoints: health, which are in use, and whether in panic."""

    panic: bool = False
    zone: Annotated[str, StringConstraints(max_length=64)] | None = None
    endpoints: dict[Key, DiscoveredEndpoint] = Field(default_factory=dict)


class InstanceReport(_Lenient):
    """What `POST /v1/reports` accepts: who is reporting, its policy version, its destinations."""

    service: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    instance: Key
    policy_revision: Annotated[str, StringConstraints(max_length=100)] | None = None
    zone: Annotated[str, StringConstraints(max_length=64)] | None = None
    destinations: dict[Key, DestinationReport] = Field(default_factory=dict)
    discovery: dict[Key, DiscoveryReport] = Field(default_factory=dict)


@dataclass
class _Rates:
    requests: float = 0.0
    errors: float = 0.0
    retries: float = 0.0
    seconds: float = 0.0
    """The window the rates are over: the time between the instance's last two reports."""


@dataclass
class _Entry:
    report: InstanceReport
    seen: float
    wall: float
    rates: dict[str, _Rates] = field(default_factory=dict)


def _rate(now: int, before: int, seconds: float) -> float:
    # A smaller counter means the instance restarted: count from zero.
    return (now - before if now >= before else now) / seconds


def _top(items: dict[str, Any], limit: int) -> dict[str, Any]:
    if len(items) <= limit:
        return items
    ranked = sorted(items.items(), key=lambda kv: kv[1].requests, reverse=True)
    return dict(ranked[:limit])


class ReportStore:
    """The latest report per (service, instance), bounded in count and in size, expiring after `ttl`."""

    def __init__(
        self,
        *,
        max_instances: int = 1000,
        max_destinations: int = 100,
        max_endpoints: int = 32,
        ttl: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.max_instances = max_instances
        self.max_destinations = max_destinations
        self.max_endpoints = max_endpoints
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _trim(self, report: InstanceReport) -> InstanceReport:
        destinations = {
            name: dest.model_copy(update={"endpoints": _top(dest.endpoints, self.max_endpoints)})
            if len(dest.endpoints) > self.max_endpoints
            else dest
            for name, dest in _top(report.destinations, self.max_destinations).items()
        }
        discovery = {
            name: found.model_copy(
                update={"endpoints": dict(list(found.endpoints.items())[: self.max_endpoints])}
            )
            for name, found in list(report.discovery.items())[: self.max_destinations]
        }
        return report.model_copy(update={"destinations": destinations, "discovery": discovery})

    def ingest(self, report: InstanceReport) -> None:
        """Keep `report` as its instance's latest, computing rates from the previous one."""
        now = self._clock.monotonic()
        report = self._trim(report)
        key = (report.service, report.instance)
        self.expire()
        previous = self._entries.pop(key, None)
        entry = _Entry(report, now, self._clock.wall())
        if previous is not None and now > previous.seen:
            elapsed = now - previous.seen
            for name, dest in report.destinations.items():
                before = previous.report.destinations.get(name)
                if before is not None:
                    entry.rates[name] = _Rates(
                        _rate(dest.requests, before.requests, elapsed),
                        _rate(dest.errors, before.errors, elapsed),
                        _rate(dest.retries, before.retries, elapsed),
                        elapsed,
                    )
        while len(self._entries) >= self.max_instances:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[key] = entry

    def expire(self) -> int:
        """Forget instances silent for longer than `ttl`; returns how many went."""
        cutoff = self._clock.monotonic() - self.ttl
        gone = 0
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if oldest.seen > cutoff:
                break
            del self._entries[key]
            gone += 1
        self.expired += gone
        return gone

    def instances(self) -> list[dict[str, Any]]:
        """Every live instance: service, instance, zone, policy revision, seconds since its report."""
        self.expire()
        now = self._clock.monotonic()
        return [
            {
                "service": e.report.service,
                "instance": e.report.instance,
                "zone": e.report.zone,
                "policy_revision": e.report.policy_revision,
                "age_s": round(now - e.seen, 1),
                "reported_at": e.wall,
            }
            for e in sorted(
                self._entries.values(), key=lambda e: (e.report.service, e.report.instance)
            )
        ]

    def mesh_view(self) -> dict[str, Any]:
        """Services and the edges between them, summed over live instances, for the dashboard."""
        instances = self.instances()
        edges: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in self._entries.values():
            for name, dest in entry.report.destinations.items():
                if not dest.requests:
                    continue  # a destination in the policy this caller never called: no edge
                edge = edges.setdefault((entry.report.service, name), _new_edge(entry, name))
                _add(edge, dest, entry.rates.get(name))
        services: dict[str, dict[str, Any]] = {}
        for inst in instances:
            services.setdefault(inst["service"], {"name": inst["service"], "instances": []})
            services[inst["service"]]["instances"].append(inst)
        for _, destination in edges:
            services.setdefault(destination, {"name": destination, "instances": []})
        discovered = [
            {
                "source": e.report.service,
                "instance": e.report.instance,
                "destination": name,
                "panic": found.panic,
                "url": url,
                **endpoint.model_dump(),
            }
            for e in self._entries.values()
            for name, found in sorted(e.report.discovery.items())
            for url, endpoint in sorted(found.endpoints.items())
        ]
        return {
            "services": sorted(services.values(), key=lambda s: str(s["name"])),
            "edges": [_finish(edges[key]) for key in sorted(edges)],
            "discovery": discovered,
            "instances": len(instances),
            "limits": {"max_instances": self.max_instances, "ttl_s": self.ttl},
            "evicted": self.evicted,
            "expired": self.expired,
        }


def _new_edge(entry: _Entry, destination: str) -> dict[str, Any]:
    return {
        "source": entry.report.service,
        "destination": destination,
        "requests": 0,
        "errors": 0,
        "retries": 0,
        "budget_refusals": 0,
        "rps": 0.0,
        "errors_per_s": 0.0,
        "retries_per_s": 0.0,
        "deadlines_exceeded": 0,
        "latency_ms": {"p50": 0.0, "p99": 0.0},
        "split_ms": {part: {"p50": None, "p99": None} for part in SPLIT_PARTS},
        "window_s": 0.0,
        "endpoints": {},
    }


def _add(edge: dict[str, Any], dest: DestinationReport, rates: _Rates | None) -> None:
    edge["requests"] += dest.requests
    edge["errors"] += dest.errors
    edge["retries"] += dest.retries
    edge["budget_refusals"] += dest.budget_refusals
    edge["deadlines_exceeded"] += dest.deadlines_exceeded
    if rates is not None:
        edge["rps"] += rates.requests
        edge["errors_per_s"] += rates.errors
        edge["retries_per_s"] += rates.retries
        edge["window_s"] = max(edge["window_s"], rates.seconds)
    # Percentiles do not add up: show the worst instance's.
    latency = edge["latency_ms"]
    latency["p50"] = max(latency["p50"], dest.latency_ms.p50)
    latency["p99"] = max(latency["p99"], dest.latency_ms.p99)
    for part in SPLIT_PARTS:
        found: PartLatency = getattr(dest.latency_split_ms, part)
        shown = edge["split_ms"][part]
        for q in ("p50", "p99"):
            value = getattr(found, q)
            if value is not None and (shown[q] is None or value > shown[q]):
                shown[q] = value
    for url, ep in dest.endpoints.items():
        slot = edge["endpoints"].setdefault(
            url, {"url": url, "breaker": {}, "ejected": 0, "requests": 0, "errors": 0}
        )
        slot["breaker"][ep.breaker] = slot["breaker"].get(ep.breaker, 0) + 1
        slot["ejected"] += int(ep.ejected)
        slot["requests"] += ep.requests
        slot["errors"] += ep.errors


def _finish(edge: dict[str, Any]) -> dict[str, Any]:
    # One window for every rate and for error_ratio: each instance's last report interval
    # (window_s). No traffic in it: no ratio (None), never a since-start figure in its place.
    rps, errors = edge["rps"], edge["errors_per_s"]
    edge["error_ratio"] = round(min(1.0, errors / rps), 3) if rps > 0 else None
    for key in ("rps", "errors_per_s", "retries_per_s", "window_s"):
        edge[key] = round(edge[key], 3)
    edge["endpoints"] = sorted(edge["endpoints"].values(), key=lambda e: str(e["url"]))
    return edge
