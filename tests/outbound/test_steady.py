"""Steady over time: nothing retained after calls and close, per-destination state bounded across swaps."""

from __future__ import annotations

import gc
import time
import types
import weakref
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.errors import CircuitOpenError
from meshlib.outbound import MeshClient
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.otel import LocalTelemetry
from tests.support.servers import free_port

# Per-destination state and what it owns, by class name (module checked too, to avoid look-alikes).
STATE = {
    "meshlib.outbound.destination": ("Destination", "EndpointState"),
    "meshlib.outbound.breaker": ("Breaker",),
    "meshlib.outbound.budget": ("RetryBudget",),
    "meshlib.outbound.outlier": ("OutlierDetector", "OutlierState"),
    "meshlib.outbound.routing": ("Plan", "Router"),
    "meshlib.telemetry.client": ("CallTelemetry",),
    "pybreaker": ("CircuitBreaker",),
}
POOLS = {
    "httpx": ("HTTPTransport", "AsyncHTTPTransport"),
    "meshlib.outbound.aiohttp_transport": ("AiohttpTransport",),
    "aiohttp.client": ("ClientSession",),
}
CONNECTIONS = {
    "httpcore": ("HTTPConnection", "AsyncHTTPConnection"),
    "aiohttp.client_proto": ("ResponseHandler",),
}
CALL = {"httpx": ("Response", "Request")}


def census(*groups: dict[str, tuple[str, ...]]) -> Counter[str]:
    """Live objects of the given kinds (after a full collection), and traceback objects."""
    gc.collect()
    wanted = {
        (module, name) for group in groups for module, names in group.items() for name in names
    }
    found: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        if kind is types.TracebackType:
            found["traceback"] += 1
            continue
        module = str(kind.__module__)
        root = module.split(".")[0]
        if (module, kind.__name__) in wanted or (root, kind.__name__) in wanted:
            found[kind.__name__] += 1
    return found


def _grown(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] > before[name]}


def test_nothing_retained_after_failing_workload_and_close(driver: Driver, up) -> None:
    """After failing calls no Response or traceback stays; after close no mesh state or pool either."""
    upstream, server = up
    telemetry = LocalTelemetry()
    before = census(STATE, POOLS, CONNECTIONS, CALL)
    refused = f"http://127.0.0.1:{free_port()}"
    policy = mesh_policy(
        [server.url, refused],
        timeouts={"attempt": "300ms", "total": "300ms"},
        circuit_breaker={"failure_threshold": 10, "reset_timeout": "20ms"},
        outlier_detection={"consecutive_failures": 2, "base_ejection_time": "20ms"},
    )
    client = driver.client(policy, **telemetry.kwargs())
    transport = weakref.ref(client.mesh_transport)
    outcomes: Counter[str] = Counter()
    workload = [("/sleep/400", 8), ("/ok", 60), ("/status/503", 60), ("/flaky/1/a", 60)]
    workload += [("/status/500", 60), ("/ok", 60)]
    for path, count in workload:
        for result in driver.many(client, f"http://payments{path}", count=count, concurrency=4):
            outcomes[type(result).__name__] += 1
        del result
    assert {"Response", "ConnectError", "DeadlineExceeded"} <= set(outcomes), outcomes
    upstream.reset()
    telemetry.exporter.clear()
    during = census(STATE, POOLS, CONNECTIONS, CALL)
    assert during["Response"] <= before["Response"]
    assert during["Request"] <= before["Request"]
    assert during["traceback"] <= before["traceback"]
    assert during["CallTelemetry"] <= before["CallTelemetry"]
    driver.close()
    driver._clients.clear()
    del client
    telemetry.close()
    after = census(STATE, POOLS, CONNECTIONS, CALL)
    assert _grown(before, after) == {}
    assert transport() is None


DOC_A = {"payments": [0]}
DOC_B = {"payments": [0, 1], "ledger": [2]}


def _docs(urls: list[str]) -> tuple[Policy, Policy]:
    """Two policies to alternate: A has one service and endpoint, B two services and three endpoints."""

    def doc(services: dict[str, list[int]], threshold: int) -> Policy:
        return Policy.model_validate(
            {
                "version": 1,
                "defaults": {
                    "retry": {"backoff": {"base": "1ms", "max": "2ms"}},
                    "circuit_breaker": {"failure_threshold": threshold, "reset_timeout": "10ms"},
                    "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "10ms"},
                },
                "services": {
                    name: {"endpoints": [urls[i] for i in indexes]}
                    for name, indexes in services.items()
                },
            }
        )

    return doc(DOC_A, 3), doc(DOC_B, 4)


SWAPS = 1_000


def test_policy_swaps_under_failing_load_stay_bounded(driver: Driver, up, up2) -> None:
    """1,000 swaps under failing load: destination state, pools and connections stay within the policy's bound."""
    (first, first_server), (second, second_server) = up, up2
    refused = f"http://127.0.0.1:{free_port()}"
    doc_a, doc_b = _docs([first_server.url, second_server.url, refused])
    store = PolicyStore(doc_a)
    baseline = census(STATE, POOLS, CONNECTIONS)
    client = driver.client(store)
    # The policy in force never has more than 3 endpoints in 2 services: one state, breaker and
    # pool each (plus the base transport for other URLs), at most one connection per pool
    # (the calls are one at a time), and nothing else.
    bound = {
        "Destination": 2,
        "EndpointState": 3,
        "Breaker": 3,
        "CircuitBreaker": 3,
        "RetryBudget": 2,
        "OutlierDetector": 2,
        "OutlierState": 3,
        "Router": 1,
    }
    pools_bound, connections_bound = 4, 3
    errors: Counter[str] = Counter()
    peaks: Counter[str] = Counter()
    for swap in range(SWAPS):
        store.update(doc_b if swap % 2 else doc_a)
        if swap % 2 == 0:
            url = "http://payments/status/503"  # retried, then returned
        elif swap % 4 == 1:
            url = "http://ledger/ok"  # refused: connect failures (under A, ledger is no service)
        else:
            url = "http://payments/ok"
        try:
            driver.request(client, "GET", url)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
        if swap % 100 == 99:
            now = census(STATE, POOLS, CONNECTIONS)
            grown = _grown(baseline, now)
            for name, count in grown.items():
                peaks[name] = max(peaks[name], count)
            pools = sum(
                grown.get(name, 0)
                for name in ("HTTPTransport", "AsyncHTTPTransport", "AiohttpTransport")
            )
            connections = sum(
                grown.get(name, 0) for names in CONNECTIONS.values() for name in names
            )
            over = {name: n for name, n in grown.items() if name in bound and n > bound[name]}
            assert over == {}, (swap, grown)
            assert pools <= pools_bound, grown
            assert grown.get("ClientSession", 0) <= pools_bound, grown  # aiohttp's, one per pool
            assert connections <= connections_bound, grown
            assert grown.get("traceback", 0) == 0, grown
    assert errors["ConnectError"] > 0  # the load did fail, the breakers did trip
    assert first.total > 0
    assert second.total > 0


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_removed_endpoints_pools_close_at_once(driver: Driver, up, up2) -> None:
    """A swap that removes endpoints closes their idle pools without waiting for another call."""
    (_, first_server), (_, second_server) = up, up2
    refused = f"http://127.0.0.1:{free_port()}"
    doc_a, doc_b = _docs([first_server.url, second_server.url, refused])
    store = PolicyStore(doc_b)
    client = driver.client(store)
    for _ in range(4):  # both payments endpoints get a connection
        driver.request(client, "GET", "http://payments/ok")
    pools = client.mesh_transport.outbound.pools
    assert len(pools) == 3
    removed = [p for k, p in pools._pools.items() if k[0] != first_server.url]
    store.update(doc_a)
    assert len(pools) == 1
    assert _wait_for(lambda: not pools._retired)
    for pool in removed:
        inner = getattr(pool, "_pool", None)  # httpx: the httpcore pool; aiohttp: its session
        if inner is not None:
            assert inner.connections == []
        else:
            assert pool._session is None


def test_breaker_and_ejection_state_survive_a_swap(driver: Driver, up, up2) -> None:
    """Endpoints that stay keep their breaker and ejection state, even when the settings change."""
    (first, first_server), (second, second_server) = up, up2
    clock = FakeClock()

    def doc(threshold: int, percent: int) -> Policy:
        return mesh_policy(
            [first_server.url, second_server.url],
            retry={"attempts": 1},
            circuit_breaker={"failure_threshold": threshold, "reset_timeout": "30s"},
            outlier_detection={
                "consecutive_failures": 1,
                "base_ejection_time": "30s",
                "max_ejection_percent": percent,
            },
        )

    store = PolicyStore(doc(1, 50))
    client = driver.client(store, clock=clock)
    second.broken = True
    for _ in range(4):
        driver.request(client, "GET", "http://payments/ok")
    dest = client.mesh_transport.router.destinations["payments"]
    states = {e.url: e for e in dest.endpoints}
    assert states[second_server.url].breaker.state == "open"
    assert dest.outlier.is_ejected(second_server.url)
    store.update(doc(5, 100))  # other thresholds, same endpoints
    dest = client.mesh_transport.router.destinations["payments"]
    kept = {e.url: e for e in dest.endpoints}
    assert kept[second_server.url] is states[second_server.url]
    assert kept[second_server.url].breaker.state == "open"
    assert kept[second_server.url].breaker.config.failure_threshold == 5
    assert dest.outlier.is_ejected(second_server.url)
    hits = second.total
    for _ in range(4):
        assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    assert second.total == hits  # still skipped after the swap
    first.broken = True
    assert driver.request(client, "GET", "http://payments/ok").status_code == 500
    for _ in range(4):  # the breaker opens at the fifth failure
        assert driver.request(client, "GET", "http://payments/ok").status_code == 500
    with pytest.raises(CircuitOpenError):  # both out now: the breakers say so
        driver.request(client, "GET", "http://payments/ok")


def test_a_client_dropped_without_close_is_collected(up) -> None:
    """A shared store does not keep a forgotten client (and its pools) alive."""
    _upstream, server = up
    store = PolicyStore(mesh_policy([server.url]))
    client = MeshClient(store)
    assert client.get("http://payments/ok").status_code == 200
    dropped = weakref.ref(client.mesh_transport)
    client.mesh_transport.outbound.pools.drain()[0].close()  # the socket: not the point here
    del client
    gc.collect()
    assert dropped() is None
    store.update(mesh_policy([server.url], retry={"attempts": 2}))  # its subscription goes too
    assert store._subscribers == []
