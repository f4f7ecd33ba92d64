"""The ASGI and WSGI twins under real servers on 127.0.0.1 (uvicorn, werkzeug): same test bodies."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_QUERY, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.semconv.metrics.http_metrics import HTTP_SERVER_REQUEST_DURATION
from opentelemetry.trace import SpanKind, StatusCode

from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from tests.support.servers import serve_asgi

from .conftest import Telemetry
from .twins import KINDS, Twin, echo, get, serve_twin

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TIMING = re.compile(r"^app;dur=\d+\.\d$")


def policy(inbound: dict[str, Any] | None = None, downstream: str | None = None) -> Policy:
    services: dict[str, Any] = {"payments": {"inbound": inbound or {}}}
    if downstream is not None:
        services["downstream"] = {"endpoints": [downstream]}
    return Policy.model_validate({"version": 1, "services": services})


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each test body runs against the ASGI twin and the WSGI twin."""
    return str(request.param)


@pytest.fixture
def twin(kind: str, telemetry: Telemetry) -> Iterator[Twin]:
    """The twin with the default policy (everything allowed, no limits)."""
    with serve_twin(kind, PolicyStore(policy()), telemetry) as running:
        yield running


def server_spans(telemetry: Telemetry, count: int) -> list[ReadableSpan]:
    """The SERVER spans, once `count` have ended (a server may end one just after replying)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in telemetry.spans() if s.kind is SpanKind.SERVER]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.005)


def server_span(telemetry: Telemetry) -> ReadableSpan:
    """The one SERVER span recorded."""
    (span,) = server_spans(telemetry, 1)
    return span


def test_trace_is_continued_from_traceparent(twin: Twin, telemetry: Telemetry) -> None:
    """A valid traceparent: the handler runs in the caller's trace, under the SERVER span."""
    response = get(f"{twin.url}/items/7", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    seen = response.json()
    span = server_span(telemetry)
    assert seen["trace_id"] == TRACE_ID
    assert seen["span_id"] == f"{span.context.span_id:016x}"
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.parent.is_remote


def test_unsampled_caller_continues_its_trace_without_a_recorded_span(
    twin: Twin, telemetry: Telemetry
) -> None:
    """The default sampler drops a child of an unsampled caller: no SERVER span is built, yet the
    handler runs in the caller's trace under a span id of its own, and the request is counted."""
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00", "tracestate": "vendor=x"}
    response = get(f"{twin.url}/items/7", headers=headers)
    assert response.status_code == 200
    seen = response.json()
    assert seen["trace_id"] == TRACE_ID
    assert seen["span_id"] not in (PARENT_ID, "0" * 16)
    assert seen["sampled"] is False
    assert seen["tracestate"] == "vendor=x"
    # a sampled request after it: once its SERVER span has ended, it must be the only one
    assert get(f"{twin.url}/items/8", headers={"traceparent": TRACEPARENT}).status_code == 200
    (span,) = server_spans(telemetry, 1)
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.attributes is not None
    assert span.attributes[URL_PATH] == "/items/8"
    ((attributes, point),) = telemetry.points(HTTP_SERVER_REQUEST_DURATION)
    assert attributes[HTTP_RESPONSE_STATUS_CODE] == 200
    assert point.count == 2


class _RecordEverything(Sampler):
    """A sampler the SDK does not ship: meshlib must ask it, whatever the caller decided."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "record everything"


def test_a_custom_sampler_still_decides_for_an_unsampled_caller(kind: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=_RecordEverything())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    custom = Telemetry(provider, MeterProvider(), exporter, InMemoryMetricReader())
    with serve_twin(kind, PolicyStore(policy()), custom) as running:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
        assert get(f"{running.url}/items/7", headers=headers).status_code == 200
        span = server_span(custom)
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_ID


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE_ID.upper()}-{PARENT_ID}-01"},
        {"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
        {"traceparent": "garbage", "tracestate": "foo=1"},
        [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],
    ],
)
def test_malformed_traceparent_starts_a_fresh_trace(
    twin: Twin, telemetry: Telemetry, headers: Any
) -> None:
    """Malformed or duplicated traceparent: a new root trace, and the request still succeeds."""
    response = get(f"{twin.url}/items/7", headers=headers)
    assert response.status_code == 200
    span = server_span(telemetry)
    assert span.parent is None
    assert response.json()["trace_id"] == f"{span.context.trace_id:032x}" != TRACE_ID


def test_span_name_and_attributes_follow_stable_semconv(twin: Twin, telemetry: Telemetry) -> None:
    """SERVER span '{method} {route}' with the stable HTTP attributes and the duration metric."""
    response = get(f"{twin.url}/items/7?q=1", headers={"user-agent": "probe/1"})
    assert response.status_code == 200
    span = server_span(telemetry)
    assert span.kind is SpanKind.SERVER
    assert span.name == f"GET {twin.item_route}"
    attributes = dict(span.attributes or {})
    assert attributes[HTTP_REQUEST_METHOD] == "GET"
    assert attributes[URL_PATH] == "/items/7"
    assert attributes[URL_QUERY] == "q=1"
    assert attributes[URL_SCHEME] == "http"
    assert attributes[HTTP_ROUTE] == twin.item_route
    assert attributes[HTTP_RESPONSE_STATUS_CODE] == 200
    assert attributes[NETWORK_PROTOCOL_VERSION] == "1.1"
    assert attributes[SERVER_ADDRESS] == "127.0.0.1"
    assert attributes[SERVER_PORT] == twin.server.port
    assert attributes[CLIENT_ADDRESS] == "127.0.0.1"
    assert attributes[USER_AGENT_ORIGINAL] == "probe/1"
    assert span.status.status_code is StatusCode.UNSET
    ((point_attributes, point),) = telemetry.points(HTTP_SERVER_REQUEST_DURATION)
    assert point_attributes == {
        HTTP_REQUEST_METHOD: "GET",
        URL_SCHEME: "http",
        NETWORK_PROTOCOL_VERSION: "1.1",
        HTTP_RESPONSE_STATUS_CODE: 200,
        HTTP_ROUTE: twin.item_route,
    }
    assert point.count == 1


def test_unknown_route_names_the_span_by_method_only(twin: Twin, telemetry: Telemetry) -> None:
    """A 404 has no route template: the span is named 'GET', never the raw path."""
    response = get(f"{twin.url}/no/such/thing")
    assert response.status_code == 404
    span = server_span(telemetry)
    assert span.name == "GET"
    assert HTTP_ROUTE not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET


def test_server_error_marks_the_span(twin: Twin, telemetry: Telemetry) -> None:
    """A handler exception: 500, span status ERROR and error.type set."""
    response = get(f"{twin.url}/boom")
    assert response.status_code == 500
    span = server_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.name == "GET /boom"
    assert (span.attributes or {})[ERROR_TYPE] in {"RuntimeError", "500"}


def test_server_timing_on_every_response(twin: Twin) -> None:
    """Server-Timing app;dur=<ms> on success, on 404 and on the middleware's own answers."""
    for path in ("/items/7", "/no/such/thing", "/healthz"):
        assert TIMING.match(get(twin.url + path).headers["server-timing"]), path
    expired = get(f"{twin.url}/items/7", headers={"x-mesh-deadline-ms": "0"})
    assert TIMING.match(expired.headers["server-timing"])


def test_health_endpoints_answer_without_the_app(twin: Twin, telemetry: Telemetry) -> None:
    """/healthz and /readyz never reach the app; draining turns readiness to 503."""
    assert get(f"{twin.url}/healthz").status_code == 200
    assert get(f"{twin.url}/readyz").text == "ready\n"
    twin.middleware.drain()
    not_ready = get(f"{twin.url}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["retry-after"] == "1"
    assert get(f"{twin.url}/healthz").status_code == 200
    assert twin.state.hits == 0
    assert telemetry.spans() == []


def test_expired_deadline_is_rejected_before_the_app(twin: Twin) -> None:
    """x-mesh-deadline-ms: 0 and grpc-timeout: 0m give 504 without running the handler."""
    assert get(f"{twin.url}/items/7", headers={"x-mesh-deadline-ms": "0"}).status_code == 504
    assert get(f"{twin.url}/items/7", headers={"grpc-timeout": "0m"}).status_code == 504
    assert twin.state.hits == 0


@pytest.mark.parametrize(
    ("headers", "budget_ms"),
    [
        ({"x-mesh-deadline-ms": "5000"}, 5000),
        ({"grpc-timeout": "3S"}, 3000),
        ({"x-envoy-expected-rq-timeout-ms": "4000"}, 4000),
        ({"x-mesh-deadline-ms": "5000", "grpc-timeout": "2000m"}, 2000),
    ],
)
def test_deadline_is_current_in_the_handler(
    twin: Twin, headers: dict[str, str], budget_ms: int
) -> None:
    """Each deadline header becomes the handler's deadline; the soonest wins."""
    remaining = get(f"{twin.url}/items/7", headers=headers).json()["deadline_ms"]
    assert budget_ms - 1000 < remaining < budget_ms


def test_deadline_propagates_to_outbound_calls(kind: str, telemetry: Telemetry) -> None:
    """A MeshClient call inside the handler sends a smaller x-mesh-deadline-ms and the same trace on."""
    with serve_asgi(echo) as downstream:
        store = PolicyStore(policy(downstream=downstream.url))
        with serve_twin(kind, store, telemetry, downstream=downstream.url) as twin:
            seen = get(
                f"{twin.url}/call",
                headers={"x-mesh-deadline-ms": "5000", "traceparent": TRACEPARENT},
            ).json()
    assert 0 < int(seen["x-mesh-deadline-ms"]) < 5000
    assert seen["traceparent"].split("-")[1] == TRACE_ID


def test_rate_limit_answers_429_with_retry_after(kind: str, telemetry: Telemetry) -> None:
    """Beyond the token bucket: 429 + Retry-After, the app not reached, the shed counted."""
    store = PolicyStore(policy({"rate_limit": {"requests_per_second": 0.5, "burst": 2}}))
    with serve_twin(kind, store, telemetry) as twin:
        statuses = [get(f"{twin.url}/items/7") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["retry-after"] == "2"
    assert twin.state.hits == 2
    spans = server_spans(telemetry, 3)
    ((attributes, point),) = telemetry.points("meshlib.server.shed")
    assert attributes["meshlib.shed.reason"] == "rate_limit"
    assert point.value == 1
    shed = [s for s in spans if (s.attributes or {}).get(HTTP_RESPONSE_STATUS_CODE) == 429]
    assert [e.name for e in shed[0].events] == ["meshlib.shed"]


def test_concurrency_limit_answers_503_with_retry_after(kind: str, telemetry: Telemetry) -> None:
    """With the only slot taken, the next request gets 503 + Retry-After; then it frees up."""
    store = PolicyStore(policy({"concurrency_limit": 1}))
    with serve_twin(kind, store, telemetry) as twin:
        results: list[httpx.Response] = []
        blocker = threading.Thread(target=lambda: results.append(get(f"{twin.url}/block")))
        blocker.start()
        try:
            assert twin.state.entered.wait(10)
            shed = get(f"{twin.url}/items/7")
        finally:
            twin.state.gate.set()
            blocker.join(10)
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert [r.status_code for r in results] == [200]
        deadline = time.monotonic() + 5
        while (
            after := get(f"{twin.url}/items/7")
        ).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.01)  # the slot is released once the server closes the blocked response
        assert after.status_code == 200


def test_policy_reload_applies_without_restart(kind: str, telemetry: Telemetry) -> None:
    """Swapping the policy in the store changes inbound decisions on the next request."""
    store = PolicyStore(policy())
    with serve_twin(kind, store, telemetry) as twin:
        assert get(f"{twin.url}/items/7").status_code == 200
        store.update(policy({"authz": {"default": "deny"}}))
        denied = get(f"{twin.url}/items/7")
        assert denied.status_code == 403
        assert denied.text == "forbidden\n"
        store.update(policy())
        assert get(f"{twin.url}/items/7").status_code == 200


def test_lifespan_passes_through_and_allowed_websockets_reach_the_app() -> None:
    """Lifespan reaches the app untouched; an allowed websocket scope after the checks (ASGI only)."""
    import asyncio

    from meshlib.inbound import MeshMiddleware

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = MeshMiddleware(app, policy=policy(), service_name="payments")

    async def noop(*args: Any) -> Any:
        return None

    asyncio.run(middleware({"type": "lifespan"}, noop, noop))
    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, noop, noop))
    assert seen == ["lifespan", "websocket"]
