"""The Router's view of discovery: free when unused, dirty when a selection changes."""

from __future__ import annotations

from meshlib.discovery.binding import DiscoveredEndpoints, uses_discovery
from meshlib.discovery.health import HealthMonitor
from meshlib.policy.parse import parse_policy
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from tests.support.servers import serve_asgi

STATIC = """\
version: 1
services:
  payments:
    endpoints: [{url: "http://127.0.0.1:1", zone: z1}, {url: "http://127.0.0.1:2", zone: z2}]
"""


def test_static_services_start_nothing() -> None:
    """Without a discovery section or a caller zone, the static endpoints pass through untouched."""
    store = PolicyStore(parse_policy(STATIC))
    discovered = DiscoveredEndpoints(store, settings=MeshSettings())
    discovered.begin(store.current)
    service = store.current.policy.services["payments"]
    assert discovered.endpoints("payments", service) is service.endpoints
    assert discovered.discovery is None
    discovered.close()


def test_caller_zone_prefers_static_endpoints_in_it() -> None:
    """With MESH_ZONE set, static endpoints carrying zones are narrowed to the caller's zone."""
    store = PolicyStore(parse_policy(STATIC))
    service = store.current.policy.services["payments"]
    assert uses_discovery(service, "z2")
    discovered = DiscoveredEndpoints(store, settings=MeshSettings(zone="z2"))
    try:
        discovered.begin(store.current)
        assert [e.url for e in discovered.endpoints("payments", service)] == ["http://127.0.0.1:2"]
    finally:
        discovered.close()


def test_selection_changes_mark_dirty_until_the_next_begin() -> None:
    """A health transition marks the binding dirty; begin() clears it and the answer reflects it."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_asgi(app) as one, serve_asgi(app) as two:
        text = f"""\
version: 1
services:
  payments:
    endpoints: ["{one.url}", "{two.url}"]
    discovery:
      health_check: {{interval: 1m, healthy_threshold: 2, unhealthy_threshold: 1}}
      panic_threshold: 0
"""
        store = PolicyStore(parse_policy(text))
        discovered = DiscoveredEndpoints(store, settings=MeshSettings())
        try:
            discovered.begin(store.current)
            assert discovered.discovery is not None
            found = discovered.discovery.endpoint_set("payments")
            assert found is not None
            monitor = found.health
            assert isinstance(monitor, HealthMonitor)
            discovered.begin(store.current)
            assert not discovered.dirty
            # Whether or not the prober's first (passing) probe came first, one failure
            # flips it (threshold 1) and one pass cannot bring it back (threshold 2).
            monitor.record(one.url, ok=False)
            assert discovered.dirty
            discovered.begin(store.current)
            assert not discovered.dirty
            service = store.current.policy.services["payments"]
            assert [e.url for e in discovered.endpoints("payments", service)] == [two.url]
        finally:
            discovered.close()
    assert discovered.discovery is None


def test_first_sync_waits_for_the_first_dns_answer(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A client's first sync has DNS endpoints at once, so its first call does not fail for want of them."""
    from meshlib.discovery.dns import DnspythonResolver
    from tests.discovery.dnsserver import Zone, serve_dns

    zone = Zone()
    zone.set("payments.test.", "A", "127.0.0.7", ttl=30)
    text = "version: 1\nservices:\n  payments:\n    discovery: {dns: {name: payments.test, port: 81}}\n"
    with serve_dns(zone) as port:
        resolver = DnspythonResolver(["127.0.0.1"], port=port)
        monkeypatch.setattr("meshlib.discovery.dns.default_resolver", lambda: resolver)
        store = PolicyStore(parse_policy(text))
        discovered = DiscoveredEndpoints(store, settings=MeshSettings())
        try:
            discovered.begin(store.current)
            service = store.current.policy.services["payments"]
            assert [e.url for e in discovered.endpoints("payments", service)] == [
                "http://127.0.0.7:81"
            ]
        finally:
            discovered.close()
