"""EndpointSet: one service's endpoints from every source, filtered by health and locality.

Sources are merged by URL in precedence order `static` (the policy's
`endpoints`), `registry`, `dns`: a URL found by several keeps the
attributes (zone, weight) of the first. [`select_endpoints`][meshlib.discovery.endpoints.select_endpoints] then picks
what the balancer is offered, in Envoy's order:

1. **Panic**: when fewer than `panic_threshold` percent of the endpoints are
   healthy, offer all of them: spreading load over a half-dead fleet beats
   crushing the few survivors, and a health-check outage cannot take a
   service down.
2. **Locality**: when the caller has a zone and at least
   `locality.min_healthy_percent` of that zone's endpoints are healthy, offer
   only those; otherwise fail over to every zone's healthy endpoints.
3. Otherwise, the healthy endpoints.

The answer is recomputed when a source or a health state changes, never per
request: readers take `endpoint_set.selection`, a plain attribute:

```python
endpoints = EndpointSet("payments", local_zone="eu-1")
endpoints.configure(policy.services["payments"].discovery)
endpoints.set_source("static", policy.services["payments"].endpoints)
endpoints.selection.endpoints      # what the balancer may pick from
```
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshlib.discovery import telemetry
from meshlib.discovery.health import HealthMonitor, Transition
from meshlib.policy.model import Discovery, Endpoint, Locality

__all__ = ["SOURCES", "EndpointSet", "Selection", "select_endpoints"]

logger = logging.getLogger("meshlib.discovery")

SOURCES = ("static", "registry", "dns")
"""Endpoint sources in precedence order."""

_DEFAULT_DISCOVERY = Discovery()


@dataclass(frozen=True, slots=True)
class Selection:
    """The endpoints offered to the balancer, and why.

    `panic` is True when too few were healthy and every endpoint is offered;
    `zone` names the zone the choice was confined to, if any; `healthy`
    and `total` count the endpoints behind the decision.
    """

    endpoints: tuple[Endpoint, ...] = ()
    panic: bool = False
    zone: str | None = None
    healthy: int = 0
    total: int = 0

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs of `endpoints`."""
        return tuple(e.url for e in self.endpoints)


def select_endpoints(
    endpoints: Sequence[Endpoint],
    is_healthy: Callable[[str], bool],
    *,
    local_zone: str | None = None,
    panic_threshold: float = 50.0,
    locality: Locality | None = None,
) -> Selection:
    """The endpoints to offer, by panic threshold, then locality, then health (pure).

    ```pycon
    >>> eps = [Endpoint(url="http://a:1", zone="z1"), Endpoint(url="http://b:1", zone="z2")]
    >>> select_endpoints(eps, lambda url: True, local_zone="z1").urls
    ('http://a:1',)
    ```
    """
    total = len(endpoints)
    if not total:
        return Selection()
    healthy = tuple(e for e in endpoints if is_healthy(e.url))
    if len(healthy) * 100 < panic_threshold * total:
        return Selection(tuple(endpoints), panic=True, healthy=len(healthy), total=total)
    locality = locality or Locality()
    if local_zone is not None and locality.enabled:
        local_total = sum(1 for e in endpoints if e.zone == local_zone)
        local = tuple(e for e in healthy if e.zone == local_zone)
        if local and len(local) * 100 >= locality.min_healthy_percent * local_total:
            return Selection(local, zone=local_zone, healthy=len(healthy), total=total)
    return Selection(healthy, healthy=len(healthy), total=total)


class EndpointSet:
    """A service's endpoints, merged from its sources and kept selected as health changes.

    Writers (policy reloads, the DNS and registry watchers, the health prober)
    call `set_source` / `configure`; readers use `selection`
    and may `subscribe` to changes of it.
    """

    def __init__(
        self,
        service: str,
        *,
        local_zone: str | None = None,
        health: HealthMonitor | None = None,
    ) -> None:
        self.service = service
        self.local_zone = local_zone
        self.discovery = _DEFAULT_DISCOVERY
        self.sources: dict[str, tuple[Endpoint, ...]] = {}
        self.all: tuple[Endpoint, ...] = ()
        self.selection = Selection()
        self.changes = 0
        """How often `selection` changed its endpoints."""
        self.health: HealthMonitor | None = None
        self._listeners: list[Callable[[Selection], None]] = []
        self._lock = threading.RLock()
        if health is not None:
            self.use_health(health)

    def subscribe(self, listener: Callable[[Selection], None]) -> None:
        """Call `listener(selection)` whenever the offered endpoints change."""
        self._listeners.append(listener)

    def configure(self, discovery: Discovery | None) -> None:
        """Adopt a policy's `discovery` section (panic threshold, locality)."""
        with self._lock:
            self.discovery = discovery or _DEFAULT_DISCOVERY
            self._reselect()

    def use_health(self, monitor: HealthMonitor | None) -> None:
        """Judge endpoints by `monitor` (None: every endpoint counts as healthy)."""
        with self._lock:
            self.health = monitor
            if monitor is not None:
                monitor.subscribe(self._on_transition)
                monitor.track(e.url for e in self.all)
            self._reselect()

    def set_source(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """Replace what source `name` (one of `SOURCES`) says the endpoints are."""
        if name not in SOURCES:
            raise ValueError(f"unknown endpoint source {name!r}; use one of {', '.join(SOURCES)}")
        with self._lock:
            self.sources[name] = tuple(endpoints)
            merged: dict[str, Endpoint] = {}
            for source in SOURCES:
                for endpoint in self.sources.get(source, ()):
                    merged.setdefault(endpoint.url, endpoint)
            self.all = tuple(merged.values())
            if self.health is not None:
                self.health.track(merged)
            self._reselect()

    def is_healthy(self, url: str) -> bool:
        """Whether active health checks let `url` take traffic."""
        health = self.health
        return health is None or health.is_healthy(url)

    def select(self, is_ejected: Callable[[str], bool] | None = None) -> Selection:
        """A fresh selection that also counts `is_ejected` endpoints (outlier ejection) as unhealthy.

        Passive ejection and active checks then share one panic threshold, as
        in Envoy: when together they leave too few endpoints, all are offered.
        """
        if is_ejected is None:
            return self.selection
        return self._compute(lambda url: self.is_healthy(url) and not is_ejected(url))

    def _compute(self, is_healthy: Callable[[str], bool]) -> Selection:
        return select_endpoints(
            self.all,
            is_healthy,
            local_zone=self.local_zone,
            panic_threshold=self.discovery.panic_threshold,
            locality=self.discovery.locality,
        )

    def _on_transition(self, transition: Transition) -> None:
        with self._lock:
            self._reselect()

    def _reselect(self) -> None:
        new = self._compute(self.is_healthy)
        old, self.selection = self.selection, new
        if new == old:
            return
        if new.urls != old.urls:
            self.changes += 1
            if new.panic and not old.panic:
                logger.warning(
                    "%s: only %d of %d endpoints healthy, below the panic threshold; routing to all",
                    self.service,
                    new.healthy,
                    new.total,
                )
            telemetry.endpoints_changed(self.service, len(new.endpoints))
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:
                logger.exception("endpoint set listener %r failed", listener)

    def snapshot(self) -> dict[str, object]:
        """JSON-able state for reports and the dashboard."""
        selection = self.selection
        health = self.health.snapshot() if self.health is not None else {}
        return {
            "endpoints": {
                e.url: {
                    "zone": e.zone,
                    "health": health.get(e.url, "unknown"),
                    "selected": e in selection.endpoints,
                }
                for e in self.all
            },
            "panic": selection.panic,
            "zone": selection.zone,
            "sources": {name: len(eps) for name, eps in self.sources.items()},
        }
