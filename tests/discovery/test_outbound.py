"""MeshClient over discovered endpoints: zones with failover, panic, DNS changes and a registry drain."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshlib import MeshSettings
from meshlib.controlplane.instances import InstanceRegistry, RegistryConfig
from meshlib.discovery.dns import DnspythonResolver
from meshlib.discovery.registry import InstanceInfo, Registrar
from meshlib.outbound.client import AsyncMeshClient, MeshClient
from meshlib.policy.parse import parse_policy
from meshlib.policy.store import PolicyStore
from tests.discovery.conftest import plane_app, serve
from tests.discovery.dnsserver import Zone, serve_dns
from tests.support.servers import RunningServer, serve_asgi


class Named:
    """Answers its name; its /healthz answers `health` (200 or 503)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": self.health, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.in_flight += 1
        try:
            await asyncio.sleep(0.005)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": self.name.encode()})
        finally:
            self.in_flight -= 1


@contextmanager
def instances(*names: str) -> Iterator[dict[str, tuple[Named, RunningServer]]]:
    """One Named app per name, each served on 127.0.0.1."""
    with ExitStack() as stack:
        yield {
            name: (app, stack.enter_context(serve_asgi(app)))
            for name, app in ((n, Named(n)) for n in names)
        }


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def answers(client: MeshClient, count: int = 12) -> set[str]:
    return {client.get("http://payments/work").raise_for_status().text for _ in range(count)}


def zoned_policy(up: dict[str, tuple[Named, RunningServer]], panic: int = 50) -> str:
    zones = {"a": "z1", "b": "z2", "c": "z2"}
    endpoints = ", ".join(f'{{url: "{s.url}", zone: {zones[n]}}}' for n, (_, s) in up.items())
    return f"""\
version: 1
services:
  payments:
    endpoints: [{endpoints}]
    retry: {{attempts: 1}}
    discovery:
      health_check: {{interval: 50ms, timeout: 40ms, healthy_threshold: 1, unhealthy_threshold: 1}}
      panic_threshold: {panic}
      locality: {{min_healthy_percent: 100}}
"""


def test_zone_preference_with_failover_through_mesh_client() -> None:
    """Calls stay in the caller's zone while it is healthy, fail over when it is not, and come back."""
    with instances("a", "b", "c") as up:
        store = PolicyStore(parse_policy(zoned_policy(up)))
        with MeshClient(store, settings=MeshSettings(zone="z1")) as client:
            assert answers(client) == {"a"}
            up["a"][0].health = 503
            _wait_for(lambda: answers(client, 4) == {"b", "c"})
            assert answers(client) == {"b", "c"}
            up["a"][0].health = 200
            _wait_for(lambda: answers(client, 4) == {"a"})


def test_panic_threshold_routes_to_all_through_mesh_client() -> None:
    """When too few endpoints pass their health checks, calls go to all of them rather than none."""
    with instances("a", "b", "c") as up:
        store = PolicyStore(parse_policy(zoned_policy(up, panic=50)))
        with MeshClient(store) as client:
            assert answers(client) == {"a", "b", "c"}
            up["a"][0].health = 503  # 2 of 3 healthy: above the threshold
            _wait_for(lambda: answers(client, 6) == {"b", "c"})
            up["b"][0].health = 503  # 1 of 3 healthy: below 50 %, so every endpoint is used
            _wait_for(lambda: answers(client, 12) == {"a", "b", "c"})
            assert answers(client, 30) == {"a", "b", "c"}


def test_async_client_follows_health_too() -> None:
    """AsyncMeshClient drops an endpoint that fails its health check, as the sync one does."""
    with instances("a", "b", "c") as up:
        store = PolicyStore(parse_policy(zoned_policy(up, panic=0)))
        up["b"][0].health = up["c"][0].health = 503

        async def main() -> set[str]:
            async with AsyncMeshClient(store) as client:
                for _ in range(200):
                    got = {(await client.get("http://payments/w")).text for _ in range(6)}
                    if got == {"a"}:
                        return got
                    await asyncio.sleep(0.02)
                return got

        assert asyncio.run(main()) == {"a"}


def test_dns_srv_change_reaches_mesh_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service discovered by SRV records: calls follow a record change after its TTL."""
    with instances("a", "b") as up, ExitStack() as stack:
        zone = Zone()
        zone.set("_http._tcp.payments.test.", "SRV", f"1 1 {up['a'][1].port} host.test.", ttl=1)
        zone.set("host.test.", "A", "127.0.0.1", ttl=30)
        port = stack.enter_context(serve_dns(zone))
        text = """\
version: 1
services:
  payments:
    discovery:
      dns: {name: _http._tcp.payments.test, srv: true, min_ttl: 100ms, max_ttl: 5s}
"""
        resolver = DnspythonResolver(["127.0.0.1"], port=port)
        monkeypatch.setattr("meshlib.discovery.dns.default_resolver", lambda: resolver)
        with MeshClient(PolicyStore(parse_policy(text))) as client:
            assert answers(client, 4) == {"a"}
            zone.set("_http._tcp.payments.test.", "SRV", f"1 1 {up['b'][1].port} host.test.", ttl=1)
            _wait_for(lambda: answers(client, 2) == {"b"})


def test_registry_drain_has_no_failed_calls_through_mesh_client(policy_dir: Path) -> None:
    """Instances found through the registry: a drained one leaves without one failed call (no retries)."""
    registry = InstanceRegistry(RegistryConfig(register_tokens=("r3g1ster",)))
    with serve(plane_app(policy_dir, registry)) as cp, instances("a", "b") as up:
        registrars = {}
        for name, (_, server) in up.items():
            registrar = Registrar(
                InstanceInfo("payments", server.url, instance=name), cp.url, token="r3g1ster"
            )
            assert registrar.start(wait=5)
            registrars[name] = registrar
        text = "version: 1\nservices:\n  payments:\n    retry: {attempts: 1}\n    discovery: {registry: true}\n"
        settings = MeshSettings(control_plane_url=cp.url, control_plane_token="r3ad")
        failures: list[str] = []
        seen: dict[str, int] = {"a": 0, "b": 0}
        stop = threading.Event()
        try:
            with MeshClient(PolicyStore(parse_policy(text)), settings=settings) as client:
                _wait_for(lambda: answers(client, 6) == {"a", "b"})

                def load() -> None:
                    for _ in range(5000):
                        if stop.is_set():
                            return
                        try:
                            name = client.get("http://payments/work").raise_for_status().text
                            seen[name] += 1
                        except Exception as exc:
                            failures.append(repr(exc))

                threads = [threading.Thread(target=load) for _ in range(3)]
                for thread in threads:
                    thread.start()
                _wait_for(lambda: seen["b"] > 20)
                assert registrars["b"].drain(delay=0.5, in_flight=lambda: up["b"][0].in_flight)
                after = seen["a"]
                _wait_for(lambda: seen["a"] > after + 30)
                stop.set()
                for thread in threads:
                    thread.join(timeout=10)
            assert failures == []
        finally:
            stop.set()
            for registrar in registrars.values():
                registrar.close()
