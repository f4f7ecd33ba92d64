"""Active health checks: the per-endpoint state machine (FakeClock) and real HTTP probes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.discovery.endpoints import EndpointSet
from meshlib.discovery.health import Health, HealthMonitor, HealthProber, Transition
from meshlib.policy.model import Endpoint, HealthCheck
from tests.support.servers import free_port, serve_asgi

A = "http://10.0.0.1:80"
B = "http://10.0.0.2:80"


def check(**kw: object) -> HealthCheck:
    base: dict[str, object] = {
        "interval": "10s",
        "timeout": "1s",
        "healthy_threshold": 2,
        "unhealthy_threshold": 3,
    }
    return HealthCheck.model_validate(base | kw)


def test_first_probe_decides_at_once() -> None:
    """A new endpoint is routable until its first probe, which decides alone."""
    monitor = HealthMonitor(check(), FakeClock())
    monitor.track([A, B])
    assert monitor.health(A) is Health.UNKNOWN
    assert monitor.is_healthy(A)
    assert sorted(monitor.due()) == [A, B]
    assert monitor.record(A, ok=False) == Transition(A, Health.UNKNOWN, Health.UNHEALTHY, 1000.0)
    monitor.record(B, ok=True)
    assert not monitor.is_healthy(A)
    assert monitor.health(B) is Health.HEALTHY


def test_thresholds_flip_only_after_streaks() -> None:
    """Healthy needs unhealthy_threshold failures in a row to flip, and back needs healthy_threshold passes."""
    clock = FakeClock()
    monitor = HealthMonitor(check(), clock)
    monitor.track([A])
    seen: list[Transition] = []
    monitor.subscribe(seen.append)

    def probe(ok: bool) -> None:
        assert monitor.due() == [A]
        monitor.record(A, ok)
        clock.advance(10)

    probe(True)
    for ok in (False, False, True, False, False):  # a pass resets the failure streak
        probe(ok)
    assert monitor.is_healthy(A)
    probe(False)
    assert not monitor.is_healthy(A)
    probe(True)
    assert not monitor.is_healthy(A)
    probe(True)
    assert monitor.is_healthy(A)
    assert [(t.old, t.new) for t in seen] == [
        (Health.UNKNOWN, Health.HEALTHY),
        (Health.HEALTHY, Health.UNHEALTHY),
        (Health.UNHEALTHY, Health.HEALTHY),
    ]


def test_schedule_interval_jitter_and_in_flight() -> None:
    """The next probe is due interval plus jitter later; a probe in flight is not handed out twice."""
    clock = FakeClock(random_values=[0.0, 0.5])
    monitor = HealthMonitor(check(jitter="2s"), clock)
    monitor.track([A])  # first probe offset: 0.0 * 2s
    assert monitor.due() == [A]  # next: 10s + 0.5 * 2s
    assert monitor.due() == []
    assert monitor.next_due() is None  # in flight
    monitor.record(A, ok=True)
    assert monitor.next_due() == 1011.0
    clock.advance(10.9)
    assert monitor.due() == []
    clock.advance(0.1)
    assert monitor.due() == [A]


def test_track_keeps_known_state_and_drops_gone() -> None:
    """Re-tracking keeps the state of endpoints that stay; a late result for a dropped one is ignored."""
    monitor = HealthMonitor(check(), FakeClock())
    monitor.track([A, B])
    monitor.due()
    monitor.record(A, ok=False)
    monitor.track([A])
    assert not monitor.is_healthy(A)
    assert monitor.record(B, ok=False) is None
    assert monitor.snapshot() == {A: "unhealthy"}


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_probe_marks_endpoint_down_and_back_up() -> None:
    """A real server failing its health path leaves the endpoint set, and returns once it passes again."""
    state = {"status": 200}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        assert scope["type"] == "http"
        status = state["status"] if scope["path"] == "/healthz" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: always fails
    with serve_asgi(app) as server:
        monitor = HealthMonitor(
            check(interval="50ms", timeout="40ms", healthy_threshold=2, unhealthy_threshold=2)
        )
        endpoints = EndpointSet("payments", health=monitor)
        endpoints.configure(None)
        endpoints.set_source("static", [Endpoint(url=server.url), Endpoint(url=dead)])
        prober = HealthProber(monitor, service="payments")
        prober.start()
        try:
            _wait_for(lambda: monitor.health(server.url) is Health.HEALTHY)
            _wait_for(lambda: monitor.health(dead) is Health.UNHEALTHY)
            assert endpoints.selection.urls == (server.url,)
            state["status"] = 503
            _wait_for(lambda: monitor.health(server.url) is Health.UNHEALTHY)
            assert endpoints.selection.panic  # 0 of 2 healthy: route to all
            state["status"] = 200
            _wait_for(lambda: monitor.health(server.url) is Health.HEALTHY)
            assert endpoints.selection.urls == (server.url,)
            assert not endpoints.selection.panic
        finally:
            prober.close()


def test_prober_probe_outcomes() -> None:
    """A probe passes only on 2xx within the timeout; a connection error fails it."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        status = int(scope["path"].rsplit("/", 1)[-1])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_asgi(app) as server:
        for status, ok in ((200, True), (204, True), (302, False), (500, False)):
            monitor = HealthMonitor(check(path=f"/s/{status}"))
            prober = HealthProber(monitor)
            try:
                assert prober.probe(server.url) is ok
            finally:
                prober.close()
    monitor = HealthMonitor(check())
    client = httpx.Client()
    prober = HealthProber(monitor, client=client)
    try:
        assert prober.probe(f"http://127.0.0.1:{free_port()}") is False
    finally:
        prober.close()
        client.close()


@pytest.mark.parametrize("bad", [{"timeout": "20s"}, {"path": "healthz"}, {"healthy_threshold": 0}])
def test_health_check_validation(bad: dict[str, object]) -> None:
    """Overlapping probes, relative paths and zero thresholds are refused."""
    with pytest.raises(ValueError):
        check(**bad)
