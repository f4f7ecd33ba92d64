"""EndpointSet: merging sources, panic threshold and zone preference with failover."""

from __future__ import annotations

import pytest

from meshlib.clock import FakeClock
from meshlib.discovery.endpoints import EndpointSet, Selection, select_endpoints
from meshlib.discovery.health import HealthMonitor
from meshlib.policy.model import Discovery, Endpoint, HealthCheck, Locality


def eps(*specs: str) -> list[Endpoint]:
    """`"a@z1"` -> Endpoint(url="http://a:80", zone="z1")."""
    out = []
    for spec in specs:
        host, _, zone = spec.partition("@")
        out.append(Endpoint(url=f"http://{host}:80", zone=zone or None))
    return out


def url(host: str) -> str:
    return f"http://{host}:80"


def healthy_except(*down: str):  # type: ignore[no-untyped-def]
    bad = {url(h) for h in down}
    return lambda u: u not in bad


def test_panic_threshold_routes_to_all() -> None:
    """Below the panic threshold every endpoint is offered; at or above it only the healthy ones."""
    endpoints = eps("a", "b", "c", "d")
    at = select_endpoints(endpoints, healthy_except("a", "b"), panic_threshold=50)
    assert not at.panic
    assert at.urls == (url("c"), url("d"))
    below = select_endpoints(endpoints, healthy_except("a", "b", "c"), panic_threshold=50)
    assert below.panic
    assert below.urls == tuple(url(h) for h in "abcd")
    assert (below.healthy, below.total) == (1, 4)
    none = select_endpoints(endpoints, healthy_except(*"abcd"), panic_threshold=50)
    assert none.panic
    assert len(none.endpoints) == 4


def test_panic_threshold_zero_never_panics() -> None:
    """panic_threshold 0 turns panic off: with nothing healthy, nothing is offered."""
    chosen = select_endpoints(eps("a", "b"), healthy_except("a", "b"), panic_threshold=0)
    assert chosen == Selection((), healthy=0, total=2)


def test_zone_preference_with_failover() -> None:
    """The caller's zone is preferred while enough of it is healthy; else all zones' healthy ones."""
    endpoints = eps("a1@z1", "a2@z1", "a3@z1", "b1@z2", "b2@z2")
    kw = {"local_zone": "z1", "locality": Locality(min_healthy_percent=60)}
    local = select_endpoints(endpoints, healthy_except(), **kw)  # type: ignore[arg-type]
    assert local.zone == "z1"
    assert local.urls == (url("a1"), url("a2"), url("a3"))
    degraded = select_endpoints(endpoints, healthy_except("a1"), **kw)  # type: ignore[arg-type]
    assert degraded.zone == "z1"
    assert degraded.urls == (url("a2"), url("a3"))
    failover = select_endpoints(endpoints, healthy_except("a1", "a2"), **kw)  # type: ignore[arg-type]
    assert failover.zone is None
    assert failover.urls == (url("a3"), url("b1"), url("b2"))
    unknown = select_endpoints(endpoints, healthy_except(), local_zone="z9")
    assert unknown.zone is None
    assert len(unknown.endpoints) == 5
    off = select_endpoints(
        endpoints, healthy_except(), local_zone="z1", locality=Locality(enabled=False)
    )
    assert len(off.endpoints) == 5


def test_panic_wins_over_locality() -> None:
    """In panic every endpoint of every zone is offered, as Envoy does."""
    endpoints = eps("a1@z1", "b1@z2", "b2@z2", "b3@z2")
    chosen = select_endpoints(endpoints, healthy_except("b1", "b2", "b3"), local_zone="z1")
    assert chosen.panic
    assert len(chosen.endpoints) == 4


def test_sources_merge_by_precedence() -> None:
    """Static beats registry beats DNS for a URL found twice; each source replaces only itself."""
    endpoints = EndpointSet("payments")
    endpoints.set_source("dns", eps("a@dns", "b@dns"))
    endpoints.set_source("registry", eps("b@reg", "c@reg"))
    endpoints.set_source("static", eps("c@static"))
    assert [(e.url, e.zone) for e in endpoints.all] == [
        (url("c"), "static"),
        (url("b"), "reg"),
        (url("a"), "dns"),
    ]
    endpoints.set_source("dns", [])
    assert [e.url for e in endpoints.all] == [url("c"), url("b")]
    with pytest.raises(ValueError, match="unknown endpoint source 'consul'"):
        endpoints.set_source("consul", [])


def test_endpoint_set_follows_health_and_notifies() -> None:
    """Health transitions reselect at once and tell subscribers; panic turns on and off."""
    clock = FakeClock()
    monitor = HealthMonitor(HealthCheck(unhealthy_threshold=1, healthy_threshold=1), clock)
    endpoints = EndpointSet("payments", health=monitor)
    endpoints.configure(Discovery(panic_threshold=50))
    seen: list[Selection] = []
    endpoints.subscribe(seen.append)
    endpoints.set_source("static", eps("a", "b", "c"))
    assert len(endpoints.selection.endpoints) == 3
    monitor.due()
    monitor.record(url("a"), ok=False)
    assert endpoints.selection.urls == (url("b"), url("c"))
    monitor.record(url("b"), ok=False)
    assert endpoints.selection.panic
    assert len(endpoints.selection.endpoints) == 3
    monitor.record(url("c"), ok=True)
    assert endpoints.selection.panic
    clock.advance(10)
    monitor.due()
    monitor.record(url("a"), ok=True)
    assert endpoints.selection.urls == (url("a"), url("c"))
    assert [len(s.endpoints) for s in seen] == [3, 2, 3, 2]
    assert endpoints.changes == 4
    snap = endpoints.snapshot()
    assert snap["endpoints"][url("b")] == {"zone": None, "health": "unhealthy", "selected": False}  # type: ignore[index]


def test_select_counts_ejected_endpoints_towards_panic() -> None:
    """Outlier-ejected endpoints count as unhealthy, sharing the panic threshold with active checks."""
    endpoints = EndpointSet("payments")
    endpoints.set_source("static", eps("a", "b", "c"))
    assert endpoints.select() is endpoints.selection
    one = endpoints.select(lambda u: u == url("a"))
    assert one.urls == (url("b"), url("c"))
    two = endpoints.select(lambda u: u != url("c"))
    assert two.panic
    assert len(two.endpoints) == 3


def test_local_zone_setting_drives_preference() -> None:
    """An EndpointSet built with the caller's zone offers only that zone while it is healthy."""
    endpoints = EndpointSet("payments", local_zone="z2")
    endpoints.set_source("static", eps("a@z1", "b@z2"))
    assert endpoints.selection.urls == (url("b"),)
    assert endpoints.selection.zone == "z2"
