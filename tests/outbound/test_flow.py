"""The outbound flow driven by hand on a FakeClock: deadline arithmetic and step sequencing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.deadline import DEADLINE_HEADER, Deadline, deadline_scope
from meshlib.errors import DeadlineExceeded
from meshlib.outbound import ATTEMPTS_EXTENSION, MeshTransport
from meshlib.outbound.flow import Send, Sleep
from tests.outbound.conftest import mesh_policy


@pytest.fixture
def clock() -> FakeClock:
    """A clock whose jitter always draws the top of the range."""
    return FakeClock(random_values=[0.999999])


def _transport(clock: FakeClock, **service: Any) -> Iterator[MeshTransport]:
    transport = MeshTransport(mesh_policy(["http://10.0.0.1:80"], **service), clock=clock)
    try:
        yield transport
    finally:
        transport.close()


def _drive(
    transport: MeshTransport, clock: FakeClock, statuses: list[int], request: httpx.Request
) -> tuple[httpx.Response, list[Send], list[float]]:
    """Run a flow by hand: answer each Send with the next status; Sleep advances the clock."""
    flow = transport.outbound.flow(request)
    sends: list[Send] = []
    sleeps: list[float] = []
    answers = iter(statuses)
    step = next(flow)
    try:
        while True:
            if isinstance(step, Sleep):
                sleeps.append(step.seconds)
                clock.advance(step.seconds)
                step = next(flow)
            else:
                # The flow reuses one request object: keep a copy of what this attempt sent.
                sent = step.request
                copy = httpx.Request(sent.method, sent.url, headers=sent.headers)
                copy.extensions = dict(sent.extensions)
                sends.append(Send(step.transport, copy))
                clock.advance(0.05)
                step = flow.send(httpx.Response(next(answers)))
    except StopIteration as stop:
        return stop.value, sends, sleeps


def test_no_backoff_sleep_ends_past_the_deadline(clock: FakeClock) -> None:
    """Backoff that would end past the total deadline stops the retries instead."""
    for transport in _transport(
        clock,
        timeouts={"total": "1s", "attempt": "500ms"},
        retry={"attempts": 10, "backoff": {"base": "400ms", "max": "10s"}},
    ):
        request = httpx.Request("GET", "http://payments/x")
        response, sends, sleeps = _drive(transport, clock, [503] * 10, request)
        assert response.status_code == 503
        assert len(sends) == 2
        assert sleeps == [pytest.approx(0.4, rel=1e-3)]
        assert response.extensions[ATTEMPTS_EXTENSION][-1].note == "deadline"
        assert sum(sleeps) + 0.05 * len(sends) < 1.0


def test_attempt_timeout_and_header_shrink_with_the_deadline(clock: FakeClock) -> None:
    """Each attempt's timeout and x-mesh-deadline-ms are capped by the time left."""
    for transport in _transport(
        clock,
        timeouts={"total": "1s", "attempt": "800ms", "connect": "100ms"},
        retry={"attempts": 3, "backoff": {"base": "100ms", "max": "100ms"}},
    ):
        request = httpx.Request("GET", "http://payments/x")
        response, sends, _ = _drive(transport, clock, [503, 503, 200], request)
        assert response.status_code == 200
        reads = [s.request.extensions["timeout"]["read"] for s in sends]
        assert reads[:2] == [0.8, 0.8]
        assert reads[2] == pytest.approx(0.70, abs=1e-6)
        assert [s.request.extensions["timeout"]["connect"] for s in sends] == [0.1] * 3
        assert [s.request.headers[DEADLINE_HEADER] for s in sends] == ["1000", "850", "700"]
        assert str(sends[0].request.url) == "http://10.0.0.1/x"
        assert str(request.url) == "http://payments/x"


def test_incoming_deadline_caps_the_policy_total(clock: FakeClock) -> None:
    """A propagated deadline shorter than the policy total wins."""
    for transport in _transport(clock):
        with deadline_scope(Deadline.after(0.3, clock)):
            _, sends, _ = _drive(transport, clock, [200], httpx.Request("GET", "http://payments/"))
        assert sends[0].request.headers[DEADLINE_HEADER] == "300"
        assert sends[0].request.extensions["timeout"]["read"] == pytest.approx(0.3)


def test_expired_incoming_deadline_fails_without_sending(clock: FakeClock) -> None:
    """A deadline already spent raises DeadlineExceeded before any attempt."""
    for transport in _transport(clock):
        with deadline_scope(Deadline.after(0.0, clock)):
            flow = transport.outbound.flow(httpx.Request("GET", "http://payments/"))
            with pytest.raises(DeadlineExceeded) as info:
                next(flow)
        assert info.value.__meshlib_attempts__ == ()  # type: ignore[attr-defined]
