"""Discovery driven by the policy store: sources started, reconfigured and stopped with the policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib.discovery import manager
from meshlib.discovery.dns import DnspythonResolver
from meshlib.discovery.manager import Discovery
from meshlib.policy.parse import parse_policy
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from tests.discovery.conftest import plane_app, serve
from tests.discovery.dnsserver import Zone, serve_dns
from tests.support.servers import serve_asgi

STATIC_AND_DNS = """\
version: 1
services:
  payments:
    endpoints: [{url: "http://127.0.0.1:1", zone: z1}]
    discovery:
      dns: {name: payments.test, port: 8080, min_ttl: 100ms, max_ttl: 1s, zone: z2}
      panic_threshold: 0
  orders:
    endpoints: ["http://127.0.0.1:2"]
"""


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_policy_starts_and_stops_dns_discovery() -> None:
    """A dns section adds resolved endpoints beside the static ones; removing it removes them."""
    zone = Zone()
    zone.set("payments.test.", "A", "127.0.0.5", "127.0.0.6", ttl=1)
    with serve_dns(zone) as port:
        store = PolicyStore(parse_policy(STATIC_AND_DNS))
        discovery = Discovery(
            store,
            settings=MeshSettings(zone="z1"),
            dns_resolver=DnspythonResolver(["127.0.0.1"], port=port),
            first_answer_wait=5,
        )
        try:
            payments = discovery.endpoint_set("payments")
            assert payments is not None
            assert [(e.url, e.zone) for e in payments.all] == [
                ("http://127.0.0.1:1", "z1"),
                ("http://127.0.0.5:8080", "z2"),
                ("http://127.0.0.6:8080", "z2"),
            ]
            assert payments.selection.zone == "z1"  # the caller's zone is preferred
            orders = discovery.endpoint_set("orders")
            assert orders is not None
            assert orders.selection.urls == ("http://127.0.0.1:2",)
            state = manager.snapshot()["services"]["payments"]
            assert state["dns"]["failures"] == 0
            assert state["sources"] == {"static": 1, "dns": 2}
            store.update(parse_policy(STATIC_AND_DNS.split("    discovery:")[0] + "  orders: {}\n"))
            assert [e.url for e in payments.all] == ["http://127.0.0.1:1"]
            assert discovery.endpoint_set("payments") is payments  # sets outlive reloads
            assert discovery.endpoint_set("orders") is orders
        finally:
            discovery.close()
    assert "payments" not in manager.snapshot()["services"]


def test_health_check_from_policy_filters_endpoints() -> None:
    """A health_check section probes every endpoint and takes failing ones out of the selection."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_asgi(app) as up:
        text = f"""\
version: 1
services:
  payments:
    endpoints: ["{up.url}", "http://127.0.0.1:1", "http://127.0.0.1:2"]
    discovery:
      health_check: {{path: /healthz, interval: 100ms, timeout: 50ms}}
      panic_threshold: 30
"""
        store = PolicyStore(parse_policy(text))
        discovery = Discovery(store, settings=MeshSettings())
        try:
            payments = discovery.endpoint_set("payments")
            assert payments is not None
            _wait_for(lambda: payments.selection.urls == (up.url,))
            assert not payments.selection.panic
            store.update(parse_policy(text.replace("panic_threshold: 30", "panic_threshold: 50")))
            assert payments.selection.panic  # 1 of 3 healthy is below 50 %
        finally:
            discovery.close()


def test_registry_source_follows_the_control_plane(policy_dir: Path) -> None:
    """discovery.registry watches the control plane named by MESH_CONTROL_PLANE_URL."""
    import httpx

    text = "version: 1\nservices:\n  payments:\n    discovery: {registry: true}\n"
    with serve(plane_app(policy_dir)) as cp:
        settings = MeshSettings(control_plane_url=cp.url, control_plane_token="r3ad")
        discovery = Discovery(PolicyStore(parse_policy(text)), settings=settings, registry_wait=1)
        try:
            payments = discovery.endpoint_set("payments")
            assert payments is not None
            with httpx.Client(base_url=cp.url) as http:
                http.post(
                    "/v1/registry/payments/instances",
                    json={"instance": "p-1", "url": "http://127.0.0.1:9", "zone": "z1"},
                    headers={"authorization": "Bearer r3g1ster"},
                ).raise_for_status()
            _wait_for(lambda: payments.selection.urls == ("http://127.0.0.1:9",))
        finally:
            discovery.close()


def test_registry_without_control_plane_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """registry: true without a control plane URL logs an actionable error and keeps static endpoints."""
    text = "version: 1\nservices:\n  p:\n    endpoints: ['http://127.0.0.1:3']\n    discovery: {registry: true}\n"
    discovery = Discovery(PolicyStore(parse_policy(text)), settings=MeshSettings())
    try:
        found = discovery.endpoint_set("p")
        assert found is not None
        assert found.selection.urls == ("http://127.0.0.1:3",)
        assert "MESH_CONTROL_PLANE_URL is not set" in caplog.text
    finally:
        discovery.close()


def test_probes_use_the_services_tls_and_identity(tmp_path: Path) -> None:
    """Over TLS, a probe passes only when the endpoint proves the service's SPIFFE identity."""
    from meshlib.security.ca import DevCA

    ca = DevCA.create("example.org", tmp_path / "ca")
    leaf = ca.issue("payments", ips=["127.0.0.1"])

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    tls_config = {"ssl_certfile": str(leaf.cert_path), "ssl_keyfile": str(leaf.key_path)}
    with serve_asgi(app, **tls_config) as up:
        base = f"""\
version: 1
trust_domain: example.org
services:
  SERVICE:
    endpoints: ["{up.url}", "https://127.0.0.1:1"]
    identity: spiffe://example.org/SERVICE
    tls: {{mode: tls, ca: "{ca.cert_path}"}}
    discovery:
      health_check: {{interval: 100ms, timeout: 90ms}}
      panic_threshold: 0
"""
        for service, expected in (("payments", (up.url,)), ("orders", ())):
            store = PolicyStore(parse_policy(base.replace("SERVICE", service)))
            discovery = Discovery(store, settings=MeshSettings())
            try:
                found = discovery.endpoint_set(service)
                assert found is not None
                _wait_for(
                    lambda f=found: (
                        len(f.health.snapshot()) == 2
                        and "unknown" not in f.health.snapshot().values()
                    )
                )  # type: ignore[union-attr]
                assert found.selection.urls == expected
            finally:
                discovery.close()
