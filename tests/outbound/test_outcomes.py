"""What a call's outcome is: one deadline type, local rejections kept off breakers, hostile headers."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.errors import CircuitOpenError, DeadlineExceeded
from meshlib.outbound import ATTEMPTS_EXTENSION
from meshlib.outbound.retry import parse_retry_after
from meshlib.telemetry import names
from meshlib.telemetry.latency import edge_latency, parse_server_timing
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.otel import LocalTelemetry
from tests.support.servers import RunningServer, serve_asgi

ATTEMPT_HEADER = "x-mesh-attempt"


class _TopJitter:
    """The real clock, with backoff jitter always drawing the top of its range."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    @staticmethod
    def random() -> float:
        return 0.999999


# --- one type for "the total time ran out" ---------------------------------------------------


def test_deadline_during_an_attempt_is_deadline_exceeded(driver: Driver, up) -> None:
    """An attempt cut short by the total deadline raises DeadlineExceeded from its timeout."""
    _upstream, server = up
    policy = mesh_policy([server.url], timeouts={"attempt": "300ms", "total": "300ms"})
    client = driver.client(policy)
    with pytest.raises(DeadlineExceeded) as info:
        driver.request(client, "GET", "http://payments/sleep/2000")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert [a.outcome for a in info.value.attempts] == ["ReadTimeout"]
    assert "during attempt 1" in str(info.value)


def test_deadline_between_attempts_is_deadline_exceeded(driver: Driver, up) -> None:
    """Retries stopped because no attempt fits in the time left raise DeadlineExceeded too."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        timeouts={"attempt": "150ms", "total": "400ms"},
        retry={"attempts": 5, "retry_on": ["timeout"], "backoff": {"base": "300ms", "max": "1s"}},
    )
    client = driver.client(policy, clock=_TopJitter())
    with pytest.raises(DeadlineExceeded) as info:
        driver.request(client, "GET", "http://payments/sleep/2000")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)  # the attempt's own timeout
    assert [(a.outcome, a.note) for a in info.value.attempts] == [("ReadTimeout", "deadline")]
    assert info.value.__meshlib_attempts__ == info.value.attempts  # type: ignore[attr-defined]


def test_a_response_is_returned_when_the_deadline_stops_retries(driver: Driver, up) -> None:
    """A real response (a 503) is never replaced by an exception: it comes back, noted."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        timeouts={"attempt": "300ms", "total": "300ms"},
        retry={"attempts": 5, "backoff": {"base": "1s", "max": "1s"}},
    )
    client = driver.client(policy, clock=_TopJitter())
    response = driver.request(client, "GET", "http://payments/status/503")
    assert response.status_code == 503
    assert response.extensions[ATTEMPTS_EXTENSION][-1].note == "deadline"


# --- local rejections never count against the endpoint --------------------------------------


def test_full_local_pool_never_opens_a_breaker(driver: Driver, up) -> None:
    """Ten callers behind max_connections=1 get PoolTimeouts; the healthy endpoint is not blamed."""
    # The policy sets no pool timeout of its own (the attempt timeout bounds the wait); a
    # client's shorter timeout= applies, and makes the callers give up on the pool quickly.
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 2, "reset_timeout": "60s"},
        outlier_detection={"consecutive_failures": 2},
    )
    client = driver.client(
        policy, limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(5.0, pool=0.1)
    )
    results = driver.many(client, "http://payments/sleep/300", count=10, concurrency=10)
    assert any(isinstance(r, httpx.PoolTimeout) for r in results)
    assert all(isinstance(r, (httpx.Response, httpx.PoolTimeout)) for r in results)
    dest = client.mesh_transport.router.destinations["payments"]
    endpoint = dest.endpoints[0]
    assert endpoint.breaker.state == "closed"
    assert endpoint.breaker.opened == 0
    assert endpoint.errors == 0
    assert not dest.outlier.is_ejected(endpoint.url)
    assert driver.request(client, "GET", "http://payments/ok").status_code == 200


def test_incoming_deadline_never_opens_a_breaker(driver: Driver, up) -> None:
    """Attempts cut short by a caller's tiny deadline are not the endpoint's failures."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        circuit_breaker={"failure_threshold": 2},
        outlier_detection={"consecutive_failures": 2},
    )
    client = driver.client(policy)
    for _ in range(4):
        with pytest.raises(DeadlineExceeded):
            driver.request(client, "GET", "http://payments/sleep/500", deadline=0.05)
    endpoint = client.mesh_transport.router.destinations["payments"].endpoints[0]
    assert endpoint.breaker.state == "closed"
    assert endpoint.errors == 0


# --- CircuitOpenError says who and when --------------------------------------------------------


def test_circuit_open_error_names_destination_endpoint_and_time(driver: Driver, up) -> None:
    """The error carries destination, endpoint, retry_after/retry_at and attempts; its message the time."""
    _upstream, server = up
    clock = FakeClock()
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 1, "reset_timeout": "30s"},
    )
    client = driver.client(policy, clock=clock)
    assert driver.request(client, "GET", "http://payments/status/500").status_code == 500
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        driver.request(client, "GET", "http://payments/ok")
    error = info.value
    assert error.destination == "payments"
    assert error.endpoint == server.url
    assert error.retry_after == pytest.approx(20.0)
    expected = dt.datetime.fromtimestamp(clock.wall() + 20.0, dt.timezone.utc)
    assert error.retry_at == expected
    assert expected.strftime("%Y-%m-%dT%H:%M:%S") in str(error)
    assert error.attempts == ()
    assert error.request is not None
    assert str(error.request.url) == "http://payments/ok"


# --- the attempt number travels -------------------------------------------------------------


def test_each_attempt_carries_its_number(driver: Driver, up) -> None:
    """x-mesh-attempt is 1, 2, 3 on the tries of one call, so the callee can tell a retry."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))
    assert driver.request(client, "GET", "http://payments/flaky/2/n").status_code == 200
    assert [h[ATTEMPT_HEADER] for h in upstream.headers] == ["1", "2", "3"]


# --- hostile Retry-After and Server-Timing ---------------------------------------------------

HOSTILE_RETRY_AFTER = [
    "²",  # str.isdigit() says yes, float() says no
    "٣",  # an Arabic-Indic 3: must not be honoured as 3 s
    "\uff11\uff10",  # full-width digits 10
    "Wed, 21 Oct 99999999999 07:28:00 GMT",  # a year no datetime holds
    "Fri, 31 Dec 9999 23:59:59 GMT",  # the last representable day
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "9" * 400,  # a number larger than a float holds
    "-5",
    "1e9",
    "inf",
    "nan",
    "",
    "Wed, 21 Oct 2015 07:28:00 -0000",
]


async def _hostile_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 503 with the Retry-After and Server-Timing values given in the query string."""
    assert scope["type"] == "http"
    query = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
    headers = [(b"content-type", b"text/plain")]
    for name in ("retry-after", "server-timing"):
        for value in query.get(name, []):
            headers.append((name.encode(), value.encode("utf-8")))
    status = int(query.get("status", ["503"])[0])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"x"})


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    """An upstream whose headers the test chooses."""
    with serve_asgi(_hostile_app) as server:
        yield server


@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER)
def test_hostile_retry_after_is_survived_and_never_honoured(
    driver: Driver, hostile: RunningServer, value: str
) -> None:
    """Garbage Retry-After is treated as absent: the 503 comes back after normal backoff."""
    client = driver.client(mesh_policy([hostile.url], retry={"attempts": 2}))
    response = driver.request(client, "GET", f"http://payments/?retry-after={quote(value)}")
    assert response.status_code == 503
    attempts = response.extensions[ATTEMPTS_EXTENSION]
    assert all(a.backoff <= 0.005 for a in attempts)  # the policy's backoff, never 3 s or more


@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER)
def test_parse_retry_after_hostile_values(value: str) -> None:
    """Only ASCII delta-seconds and representable HTTP-dates are understood."""
    clock = FakeClock()
    seconds = parse_retry_after(value, clock)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0.0)
    if not value.isascii() or value in ("", "-5", "1e9", "inf", "nan"):
        assert seconds is None


def test_retry_after_dates_are_gmt() -> None:
    """An HTTP-date is GMT even when written with -0000; a past one asks for no wait."""
    clock = FakeClock(wall_start=1_445_412_480.0)  # 2015-10-21 07:28:00 UTC
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 -0000", clock) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", clock) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", clock) == 0.0


HOSTILE_SERVER_TIMING = [
    "app;dur=inf",
    "app;dur=nan",
    "app;dur=-inf",
    "app;dur=1e999",
    "app;dur=-3",
]


@pytest.mark.parametrize("value", HOSTILE_SERVER_TIMING)
def test_parse_server_timing_drops_non_finite_and_negative(value: str) -> None:
    """Durations that are not finite and non-negative are treated as absent."""
    assert parse_server_timing(value) is None


def test_hostile_server_timing_never_reaches_a_histogram(
    driver: Driver, hostile: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """inf/nan/negative Server-Timing durations are dropped: no point, no SDK error, finite sums."""
    telemetry = LocalTelemetry()
    try:
        caller = f"hostile-{uuid.uuid4().hex[:8]}"
        client = driver.client(
            mesh_policy([hostile.url]), service_name=caller, **telemetry.kwargs()
        )
        with caplog.at_level(logging.WARNING):
            for value in HOSTILE_SERVER_TIMING:
                url = f"http://payments/?status=200&server-timing={quote(value)}"
                assert driver.request(client, "GET", url).status_code == 200
        points = telemetry.points()
        service = names.CLIENT_LATENCY_SERVICE.name
        assert service not in points or all(math.isfinite(p.sum) for p in points[service])
        totals = edge_latency(caller, "payments").totals
        assert totals.calls == len(HOSTILE_SERVER_TIMING)
        assert totals.service == 0.0
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        telemetry.close()
