"""End to end on 127.0.0.1: three instances self-register; one dies and lapses, one drains cleanly."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from meshlib.controlplane.instances import InstanceRegistry, RegistryConfig
from meshlib.discovery.endpoints import EndpointSet
from meshlib.discovery.registry import InstanceInfo, Registrar
from meshlib.discovery.watch import RegistryWatcher
from tests.discovery.conftest import plane_app, serve

REGISTER_TOKEN = "r3g1ster"
READ_TOKEN = "r3ad"


class Instance:
    """A tiny ASGI service that names itself, takes 20 ms per request and counts what is in flight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        self.served = 0
        self.ready: Callable[[], bool] = lambda: True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/readyz":
            status = 200 if self.ready() else 503
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.in_flight += 1
        try:
            await asyncio.sleep(0.02)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": self.name.encode()})
            self.served += 1
        finally:
            self.in_flight -= 1


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
    return time.monotonic() - started


class Load:
    """Client threads calling the EndpointSet's endpoints round robin; bounded in count and time."""

    def __init__(self, endpoints: EndpointSet, threads: int = 4, limit: int = 5000) -> None:
        self.endpoints = endpoints
        self.counter = itertools.count()
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self.limit = limit
        self.stop = threading.Event()
        self.client = httpx.Client(trust_env=False, timeout=5)
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            n = next(self.counter)
            if n >= self.limit:
                return
            offered = self.endpoints.selection.endpoints
            url = offered[n % len(offered)].url
            try:
                body = self.client.get(url + "/work").raise_for_status().text
                self.ok[body] = self.ok.get(body, 0) + 1
            except httpx.HTTPError as exc:
                self.failures.append(f"{url}: {exc!r}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.client.close()


def test_three_instances_register_one_lapses_one_drains(policy_dir: Path) -> None:
    """Kill one without deregistering: it drops out after its lease; drain one: no request fails."""
    registry = InstanceRegistry(RegistryConfig(register_tokens=(REGISTER_TOKEN,), min_lease=0.5))
    with ExitStack() as stack:
        cp = stack.enter_context(serve(plane_app(policy_dir, registry)))
        endpoints = EndpointSet("payments")
        watcher = RegistryWatcher(
            "payments",
            cp.url,
            lambda eps: endpoints.set_source("registry", eps),
            token=READ_TOKEN,
            wait=1.0,
        )
        stack.callback(watcher.close)
        watcher.start()

        apps = {name: Instance(name) for name in ("a", "b", "c")}
        servers: dict[str, ExitStack] = {}
        registrars: dict[str, Registrar] = {}
        for name, app in apps.items():
            servers[name] = ExitStack()
            stack.callback(servers[name].close)
            server = servers[name].enter_context(serve(app, lifespan="off"))
            registrar = Registrar(
                InstanceInfo("payments", server.url, instance=f"payments-{name}", zone="z1"),
                cp.url,
                token=REGISTER_TOKEN,
                lease=1.0,
            )
            stack.callback(registrar.close)
            app.ready = lambda r=registrar: r.ready
            assert registrar.start(wait=5)
            registrars[name] = registrar
        _wait_for(lambda: len(endpoints.all) == 3)

        # c dies: no deregistration, heartbeats stop, the server goes away.
        dead_url = registrars["c"].info.url
        registrars["c"].stop()
        servers["c"].close()
        took = _wait_for(lambda: dead_url not in {e.url for e in endpoints.all}, timeout=5)
        assert took < 3.0  # one lease (1 s) plus the renewal slack, not forever
        assert registry.expired == 1
        assert len(endpoints.all) == 2

        # b drains under load: unready first, then deregistered, then in-flight requests finish.
        b_url = registrars["b"].info.url
        with Load(endpoints) as load:
            _wait_for(lambda: load.ok.get("b", 0) >= 20 and load.ok.get("a", 0) >= 20)
            with httpx.Client() as probe:
                assert probe.get(b_url + "/readyz").status_code == 200
                readiness: list[int] = []
                registrars["b"].on_drain(
                    lambda: readiness.append(probe.get(b_url + "/readyz").status_code)
                )
                drained = registrars["b"].drain(
                    delay=0.5, in_flight=lambda: apps["b"].in_flight, timeout=5
                )
            assert drained
            assert readiness == [503]
            assert b_url not in {e.url for e in endpoints.all}
            served_by_b = apps["b"].served
            servers["b"].close()
            a_before = load.ok.get("a", 0)
            _wait_for(lambda: load.ok.get("a", 0) >= a_before + 40)
        assert load.failures == []
        assert apps["b"].served == served_by_b  # nothing reached b after its drain
        assert [e.url for e in endpoints.all] == [registrars["a"].info.url]
        assert registrars["a"].state.renewals >= 1


def test_drain_turns_mesh_middleware_unready_before_deregistering(policy_dir: Path) -> None:
    """Wired to MeshMiddleware.drain, a drain answers /readyz with 503 before the instance leaves."""
    from meshlib.inbound.asgi import MeshMiddleware
    from meshlib.policy.parse import parse_policy

    app = MeshMiddleware(
        Instance("a"),
        policy=parse_policy("version: 1\nservices: {payments: {}}\n"),
        service_name="payments",
    )
    registry = InstanceRegistry(RegistryConfig(register_tokens=(REGISTER_TOKEN,)))
    with serve(plane_app(policy_dir, registry)) as cp, serve(app, lifespan="off") as up:
        registrar = Registrar(
            InstanceInfo("payments", up.url, instance="a"), cp.url, token=REGISTER_TOKEN
        )
        seen: list[tuple[int, bool]] = []
        try:
            assert registrar.start(wait=5)
            registrar.on_drain(app.drain)
            with httpx.Client() as http:
                assert http.get(up.url + "/readyz").status_code == 200
                registrar.on_drain(
                    lambda: seen.append(
                        (
                            http.get(up.url + "/readyz").status_code,
                            "a" in registry.services["payments"],
                        )
                    )
                )
                assert registrar.drain(delay=0)
                assert http.get(up.url + "/readyz").status_code == 503
        finally:
            registrar.close()
    assert seen == [(503, True)]  # unready first, still registered at that moment
    assert "payments" not in registry.services
