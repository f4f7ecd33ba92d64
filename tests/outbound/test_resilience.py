"""Breakers, deadlines, budgets, ejection and hot reload against real upstreams."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.errors import CircuitOpenError, DeadlineExceeded
from meshlib.outbound import ATTEMPTS_EXTENSION, MeshClient
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from tests.outbound.conftest import Driver, mesh_policy


def test_breaker_opens_fails_fast_and_closes_after_probe(driver: Driver, up) -> None:
    """N failures open the breaker; calls then fail fast off-network; a good probe closes it."""
    upstream, server = up
    clock = FakeClock()
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 3, "reset_timeout": "30s"},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy, clock=clock)
    for _ in range(3):
        assert driver.request(client, "GET", "http://payments/status/500").status_code == 500
    with pytest.raises(CircuitOpenError):
        driver.request(client, "GET", "http://payments/ok")
    assert upstream.hits["/ok"] == 0
    assert isinstance(CircuitOpenError("x"), httpx.TransportError)
    clock.advance(30)
    assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    endpoint = client.mesh_transport.router.destinations["payments"].endpoints[0]
    assert endpoint.breaker.state == "closed"
    assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    assert upstream.hits["/ok"] == 2


def test_total_deadline_covers_attempts_and_backoff(driver: Driver, up) -> None:
    """Attempts time out at the attempt timeout; the call stops at the total deadline."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        timeouts={"attempt": "150ms", "total": "500ms"},
        retry={"attempts": 10, "retry_on": ["timeout", 503]},
    )
    client = driver.client(policy)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        driver.request(client, "GET", "http://payments/sleep/2000")
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed <= 1.0  # ten 150 ms attempts alone would take 1.5 s
    assert isinstance(info.value, httpx.TimeoutException)
    attempts = info.value.__meshlib_attempts__  # type: ignore[attr-defined]
    assert len(attempts) >= 3
    assert all(a.elapsed < 0.4 for a in attempts)


def test_incoming_deadline_caps_call_and_is_propagated(driver: Driver, up) -> None:
    """A deadline bound by inbound caps the call and travels on as x-mesh-deadline-ms."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))
    response = driver.request(client, "GET", "http://payments/ok", deadline=0.3)
    assert response.status_code == 200
    sent = int(upstream.headers[-1]["x-mesh-deadline-ms"])
    assert 200 <= sent <= 300
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        driver.request(client, "GET", "http://payments/sleep/2000", deadline=0.2)
    assert time.monotonic() - started < 1.0  # the handler sleeps 2 s


def test_budget_caps_amplification_under_dead_upstream(driver: Driver, up) -> None:
    """Against an upstream that always fails, retries stay within the budget's ratio."""
    upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 3, "budget": {"ratio": 0.2, "min_per_second": 0, "window": "10s"}},
        circuit_breaker={"enabled": False},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy)
    calls = 100
    for _ in range(calls):
        assert driver.request(client, "GET", "http://payments/status/503").status_code == 503
    assert calls < upstream.total <= calls * 1.2 + 1
    dest = client.mesh_transport.router.destinations["payments"]
    assert dest.budget_refusals >= calls - (upstream.total - calls)


def test_ejection_and_recovery(driver: Driver, up, up2) -> None:
    """A failing endpoint is ejected (traffic moves away) and returns after its ejection time."""
    (good, good_server), (bad, bad_server) = up, up2
    clock = FakeClock()
    policy = mesh_policy(
        [good_server.url, bad_server.url],
        retry={"attempts": 1},
        circuit_breaker={"enabled": False},
        outlier_detection={"consecutive_failures": 2, "base_ejection_time": "30s"},
    )
    client = driver.client(policy, clock=clock)
    bad.broken = True
    for _ in range(6):
        driver.request(client, "GET", "http://payments/ok")
    assert bad.total == 2
    before = good.total
    for _ in range(6):
        assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    assert good.total == before + 6
    assert bad.total == 2
    bad.broken = False
    clock.advance(30)
    for _ in range(6):
        assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    assert bad.total == 5


def test_policy_swap_mid_traffic_no_failures(driver: Driver, up, up2) -> None:
    """Swapping endpoints under load fails no request; new traffic reaches the new endpoint."""
    (first, first_server), (second, second_server) = up, up2
    store = PolicyStore(mesh_policy([first_server.url]))
    client = driver.client(store)
    swapped = threading.Event()

    def swap() -> None:
        deadline = time.monotonic() + 10
        while first.total < 40 and time.monotonic() < deadline:
            time.sleep(0.002)
        store.update(mesh_policy([second_server.url]))
        swapped.set()

    swapper = threading.Thread(target=swap)
    swapper.start()
    results = driver.many(client, "http://payments/sleep/2", count=200, concurrency=8)
    swapper.join(timeout=10)
    assert swapped.is_set()
    failures = [r for r in results if not isinstance(r, httpx.Response) or r.status_code != 200]
    assert failures == []
    assert first.total >= 40
    assert second.total > 0
    assert first.total + second.total == 200
    response = driver.request(client, "GET", "http://payments/ok")
    assert response.extensions[ATTEMPTS_EXTENSION][0].endpoint == second_server.url
    pools = client.mesh_transport.outbound.pools
    assert len(pools) == 1  # the removed endpoint's pool was retired ...
    assert not pools._retired  # ... and closed once idle


def test_caller_zone_keeps_traffic_in_zone(up, up2) -> None:
    """With MESH_ZONE set, discovery's zone preference decides which endpoints the client uses."""
    (far, far_server), (near, near_server) = up, up2
    policy = mesh_policy(
        [{"url": far_server.url, "zone": "z1"}, {"url": near_server.url, "zone": "z2"}]
    )
    with MeshClient(policy, settings=MeshSettings(zone="z2")) as client:
        for _ in range(4):
            assert client.get("http://payments/ok").status_code == 200
    assert near.hits["/ok"] == 4
    assert far.total == 0
