"""Client telemetry with the SDK's in-memory exporter and reader: spans, events, metrics, latency split."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.metrics.http_metrics import HTTP_CLIENT_REQUEST_DURATION
from opentelemetry.trace import SpanKind

from meshlib.errors import CircuitOpenError
from meshlib.telemetry import names
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.otel import LocalTelemetry


class Telemetry(LocalTelemetry):
    """A local tracer and meter provider with in-memory export (no globals touched)."""


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """In-memory telemetry, shut down after the test."""
    t = Telemetry()
    yield t
    t.close()


def test_two_retries_give_call_span_and_three_attempt_spans(
    driver: Driver, up, telemetry: Telemetry
) -> None:
    """A call with two retries: 1 INTERNAL call span, 3 CLIENT spans (resend_count 0/1/2), 2 retry events."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]), service_name="orders", **telemetry.kwargs())
    response = driver.request(client, "GET", "http://payments/flaky/2/t")
    assert response.status_code == 200
    spans = telemetry.exporter.get_finished_spans()
    calls = [s for s in spans if s.kind is SpanKind.INTERNAL]
    attempts = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT),
        key=lambda s: s.attributes.get(HTTP_REQUEST_RESEND_COUNT, 0),
    )
    assert len(calls) == 1
    call = calls[0]
    assert call.name == f"{names.SPAN_CALL_PREFIX} GET"
    assert [a.attributes.get(HTTP_REQUEST_RESEND_COUNT) for a in attempts] == [None, 1, 2]
    assert [a.attributes[HTTP_RESPONSE_STATUS_CODE] for a in attempts] == [503, 503, 200]
    for attempt in attempts:
        assert attempt.name == "GET"
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.attributes[HTTP_REQUEST_METHOD] == "GET"
        assert attempt.attributes[SERVER_ADDRESS] == "127.0.0.1"
        assert attempt.attributes[SERVER_PORT] == server.port
        assert attempt.attributes[names.ATTR_DESTINATION] == "payments"
    retries = [e for e in call.events if e.name == names.EVENT_RETRY]
    assert [e.attributes[names.ATTR_RETRY_ATTEMPT] for e in retries] == [0, 1]
    assert all(e.attributes[names.ATTR_RETRY_REASON] == "503" for e in retries)
    assert call.attributes[names.ATTR_CALLER] == "orders"
    assert call.attributes[names.ATTR_DEADLINE_BUDGET] == 10.0
    # every attempt carried its own span's trace context
    parents = [h["traceparent"].split("-")[2] for h in upstream.headers]
    assert parents == [format(a.context.span_id, "016x") for a in attempts]
    metrics = telemetry.points()
    durations = metrics[HTTP_CLIENT_REQUEST_DURATION]
    assert sum(p.count for p in durations) == 3
    assert sum(p.value for p in metrics[names.CLIENT_RETRIES.name]) == 2


def test_latency_split_is_present_and_consistent(driver: Driver, up, telemetry: Telemetry) -> None:
    """For a handler that takes 80 ms and says so, service ~ 80 ms <= total and the parts sum up."""
    _upstream, server = up
    client = driver.client(mesh_policy([server.url]), **telemetry.kwargs())
    response = driver.request(client, "GET", "http://payments/sleep/80")
    assert response.status_code == 200
    (call,) = [s for s in telemetry.exporter.get_finished_spans() if s.kind is SpanKind.INTERNAL]
    a = call.attributes
    total, service = a[names.ATTR_LATENCY_TOTAL], a[names.ATTR_LATENCY_SERVICE]
    network, meshlib = a[names.ATTR_LATENCY_NETWORK], a[names.ATTR_LATENCY_MESHLIB]
    assert service == pytest.approx(0.080, abs=1e-6)
    assert service <= total
    assert total < 0.5
    assert service + network + meshlib == pytest.approx(total, abs=0.002)
    assert network >= 0.0
    assert meshlib >= 0.0
    metrics = telemetry.points()
    (point,) = metrics[names.CLIENT_LATENCY_SERVICE.name]
    assert point.sum == pytest.approx(0.080, abs=1e-6)
    assert names.CLIENT_LATENCY_NETWORK.name in metrics
    assert names.CLIENT_LATENCY_MESHLIB.name in metrics


def test_breaker_and_budget_events(driver: Driver, up, telemetry: Telemetry) -> None:
    """Breaker opening and budget refusals show up as span events and counters."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 2, "budget": {"ratio": 0.0, "min_per_second": 0}},
        circuit_breaker={"failure_threshold": 2},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy, **telemetry.kwargs())
    for _ in range(2):
        driver.request(client, "GET", "http://payments/status/503")
    with pytest.raises(CircuitOpenError):
        driver.request(client, "GET", "http://payments/status/503")
    calls = [s for s in telemetry.exporter.get_finished_spans() if s.kind is SpanKind.INTERNAL]
    events = [e.name for s in calls for e in s.events]
    assert events.count(names.EVENT_BUDGET_REFUSED) == 2
    changes = [e for s in calls for e in s.events if e.name == names.EVENT_BREAKER_STATE_CHANGE]
    assert [e.attributes[names.ATTR_BREAKER_STATE] for e in changes] == ["open"]
    metrics = telemetry.points()
    assert sum(p.value for p in metrics[names.CLIENT_BUDGET_REFUSALS.name]) == 2
    assert sum(p.value for p in metrics[names.CLIENT_BREAKER_TRANSITIONS.name]) == 1


def test_unsampled_calls_still_propagate_context(driver: Driver, up) -> None:
    """With no SDK configured nothing records, and no traceparent is invented."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))
    driver.request(client, "GET", "http://payments/ok")
    assert "traceparent" not in upstream.headers[-1]


def test_streamed_response_span_ends_with_body(driver: Driver, up, telemetry: Telemetry) -> None:
    """The call and attempt spans stay open while a streamed body is read and end when it closes."""
    _upstream, server = up
    client = driver.client(mesh_policy([server.url]), **telemetry.kwargs())
    if driver.is_async:

        async def go() -> None:
            async with client.stream("GET", "http://payments/ok") as response:
                assert telemetry.exporter.get_finished_spans() == ()
                await response.aread()

        assert driver.portal is not None
        driver.portal.call(go)
    else:
        with client.stream("GET", "http://payments/ok") as response:
            assert telemetry.exporter.get_finished_spans() == ()
            response.read()
    assert len(telemetry.exporter.get_finished_spans()) == 2


def test_httpx_instrumentation_does_not_double_attempt_spans(
    driver: Driver, up, telemetry: Telemetry
) -> None:
    """With opentelemetry-instrumentation-httpx on globally, each attempt is still one CLIENT span."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    _upstream, server = up
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        client = driver.client(mesh_policy([server.url]), **telemetry.kwargs())
        driver.request(client, "GET", "http://payments/flaky/1/d")
    finally:
        instrumentor.uninstrument()
    spans = telemetry.exporter.get_finished_spans()
    assert len([s for s in spans if s.kind is SpanKind.CLIENT]) == 2


def test_shadow_retry_is_counted_and_marked(driver: Driver, up, telemetry: Telemetry) -> None:
    """A shadow-mode retry shows as a retry event and count marked meshlib.shadow, with no resend."""
    _upstream, server = up
    policy = mesh_policy([server.url], retry={"mode": "shadow"})
    client = driver.client(policy, **telemetry.kwargs())
    assert driver.request(client, "GET", "http://payments/flaky/1/sh").status_code == 503
    spans = telemetry.exporter.get_finished_spans()
    assert len([s for s in spans if s.kind is SpanKind.CLIENT]) == 1
    (call,) = [s for s in spans if s.kind is SpanKind.INTERNAL]
    (event,) = [e for e in call.events if e.name == names.EVENT_RETRY]
    assert event.attributes[names.ATTR_SHADOW] is True
    (point,) = telemetry.points()[names.CLIENT_RETRIES.name]
    assert point.value == 1
    assert point.attributes[names.ATTR_SHADOW] is True


def test_duration_metric_is_per_destination_unless_the_endpoint_is_asked_for(
    driver: Driver, up, telemetry: Telemetry
) -> None:
    """http.client.request.duration: the logical destination, 4xx with error.type, and the
    endpoint address only with MESH_METRICS_ENDPOINT_ATTRIBUTE (per-pod cardinality)."""
    from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

    from meshlib.settings import MeshSettings

    _upstream, server = up
    plain = driver.client(mesh_policy([server.url]), **telemetry.kwargs())
    driver.request(plain, "GET", "http://payments/status/404")
    ((point,),) = [telemetry.points()[HTTP_CLIENT_REQUEST_DURATION]]
    assert dict(point.attributes) == {
        HTTP_REQUEST_METHOD: "GET",
        SERVER_ADDRESS: "payments",
        SERVER_PORT: 80,
        names.ATTR_DESTINATION: "payments",
        HTTP_RESPONSE_STATUS_CODE: 404,
        ERROR_TYPE: "404",
    }
    other = Telemetry()
    try:
        settings = MeshSettings(metrics_endpoint_attribute=True)
        opted = driver.client(mesh_policy([server.url]), settings=settings, **other.kwargs())
        driver.request(opted, "GET", "http://payments/ok")
        ((point,),) = [other.points()[HTTP_CLIENT_REQUEST_DURATION]]
        assert point.attributes[names.ATTR_ENDPOINT] == server.url
    finally:
        other.close()
