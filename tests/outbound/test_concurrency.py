"""One client shared by many threads or tasks while its breaker trips and recovers."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.errors import CircuitOpenError
from meshlib.outbound.breaker import DENIED, PASS, PROBE, Breaker
from meshlib.policy.model import CircuitBreaker
from tests.outbound.conftest import Driver, mesh_policy

WORKERS = 16
ROUNDS = 3
CALLS_PER_PHASE = 400  # x2 phases x ROUNDS: 2,400 calls per driver


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, so races show up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_shared_client_breaker_trips_and_recovers(driver: Driver, up, busy_switching) -> None:
    """Thousands of concurrent calls through a tripping breaker raise nothing undocumented."""
    upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 3, "reset_timeout": "5ms"},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy)
    breaker = lambda: client.mesh_transport.router.destinations["payments"].endpoints[0].breaker  # noqa: E731
    unexpected: list[BaseException] = []
    statuses: set[int] = set()
    for _ in range(ROUNDS):
        for broken in (True, False):
            upstream.broken = broken
            results = driver.many(
                client, "http://payments/ok", count=CALLS_PER_PHASE, concurrency=WORKERS
            )
            for result in results:
                if isinstance(result, httpx.Response):
                    statuses.add(result.status_code)
                elif not isinstance(result, CircuitOpenError):
                    unexpected.append(result)
    assert unexpected == []
    assert statuses == {200, 500}
    endpoint = client.mesh_transport.router.destinations["payments"].endpoints[0]
    assert endpoint.in_flight == 0  # no update lost between threads: the balancer's load is true
    assert breaker().opened >= ROUNDS  # it tripped in every broken phase ...
    deadline = time.monotonic() + 5
    while breaker().state != "closed" and time.monotonic() < deadline:
        driver.request(client, "GET", "http://payments/ok")
    assert breaker().state == "closed"  # ... and recovered


def test_breaker_state_machine_is_consistent_under_threads(busy_switching) -> None:
    """Threads acquiring and recording on one breaker never see an error or a stuck probe."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=2, reset_timeout="1s"), clock)
    errors: list[BaseException] = []
    probes = 0
    lock = threading.Lock()

    def worker(seed: int) -> None:
        nonlocal probes
        try:
            for i in range(3_000):
                permit = breaker.acquire()
                if permit is DENIED:
                    clock.advance(0.01)
                    continue
                if permit is PROBE:
                    with lock:
                        probes += 1
                breaker.record(permit, success=(i + seed) % 3 == 0)
        except BaseException as exc:  # the point: nothing may escape
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert breaker.opened > 0
    assert probes > 0
    clock.advance(1)
    permit = breaker.acquire()
    assert permit in (PASS, PROBE)  # never a probe left dangling
    breaker.record(permit, success=True)
    assert breaker.state == "closed"
