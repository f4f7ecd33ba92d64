"""The unsampled hot path with an SDK installed: what it records, what it sends, and what it skips."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.metrics.http_metrics import HTTP_CLIENT_REQUEST_DURATION
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from meshlib.outbound import MeshClient
from meshlib.outbound.aiohttp_transport import AiohttpTransport
from meshlib.policy.model import Policy
from meshlib.telemetry import names
from meshlib.telemetry.client import ClientTelemetry
from meshlib.telemetry.latency import edge_latency
from meshlib.telemetry.state_metrics import MeshStateMetrics
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.otel import LocalTelemetry

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
PARENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN = 0x00F067AA0BA902B7


class Unsampled(LocalTelemetry):
    """SDK providers whose sampler drops every new trace (as a low ratio does for most calls)."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        super().__init__(sampler or ParentBased(ALWAYS_OFF))


@pytest.fixture
def unsampled() -> Iterator[Unsampled]:
    """Providers with ParentBased(ALWAYS_OFF), shut down after the test."""
    t = Unsampled()
    yield t
    t.close()


class _Custom(Sampler):
    """A sampler the fast path does not know: it must leave the decision to the SDK."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return ALWAYS_OFF.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "custom"


def _remote_parent(flags: int = 0, state: str = "") -> object:
    """Attach an incoming (remote) trace context and return the detach token."""
    parent = SpanContext(
        PARENT_TRACE,
        PARENT_SPAN,
        is_remote=True,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header([state]) if state else TraceState(),
    )
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))


def test_unsampled_call_records_one_duration_per_attempt_and_no_split(
    driver: Driver, up, unsampled: Unsampled
) -> None:
    """Two retries unsampled: 3 duration points, no split histograms, no spans, the split summed."""
    upstream, server = up
    caller = f"orders-unsampled-{uuid.uuid4().hex[:8]}"
    client = driver.client(mesh_policy([server.url]), service_name=caller, **unsampled.kwargs())
    assert driver.request(client, "GET", "http://payments/flaky/2/u").status_code == 200
    points = unsampled.points()
    durations = points[HTTP_CLIENT_REQUEST_DURATION]
    assert sum(p.count for p in durations) == 3
    assert sorted((p.attributes[HTTP_RESPONSE_STATUS_CODE], p.count) for p in durations) == [
        (200, 1),
        (503, 2),
    ]
    # the semantic conventions' required and conditionally required attributes, no opt-in
    # ones; the address is the logical destination the caller wrote, not the endpoint's
    for point in durations:
        status = point.attributes[HTTP_RESPONSE_STATUS_CODE]
        assert dict(point.attributes) == {
            HTTP_REQUEST_METHOD: "GET",
            SERVER_ADDRESS: "payments",
            SERVER_PORT: 80,
            names.ATTR_DESTINATION: "payments",
            HTTP_RESPONSE_STATUS_CODE: status,
            **({ERROR_TYPE: "503"} if status == 503 else {}),
        }
    for spec in (
        names.CLIENT_LATENCY_SERVICE,
        names.CLIENT_LATENCY_NETWORK,
        names.CLIENT_LATENCY_MESHLIB,
    ):
        assert spec.name not in points
    assert unsampled.exporter.get_finished_spans() == ()
    totals = edge_latency(caller, "payments").totals
    assert totals.calls == 1
    # every attempt carried a valid, unsampled W3C context of one trace, each its own parent id
    sent = [h["traceparent"] for h in upstream.headers]
    assert len(sent) == 3
    matches = [TRACEPARENT.match(tp) for tp in sent]
    assert all(m is not None for m in matches)
    assert len({m.group(1) for m in matches if m}) == 1
    assert len({m.group(2) for m in matches if m}) == 3
    for match in matches:
        assert match is not None
        assert int(match.group(3), 16) & 0x01 == 0
        assert int(match.group(1), 16) != 0
        assert int(match.group(2), 16) != 0


@pytest.mark.parametrize(
    ("sampler", "parent_flags", "quick"),
    [
        (ParentBased(ALWAYS_OFF), None, True),
        (ParentBased(TraceIdRatioBased(0.0)), None, True),
        (ParentBased(TraceIdRatioBased(1.0)), None, False),
        (ParentBased(TraceIdRatioBased(1.0)), 0x00, True),
        (ParentBased(ALWAYS_OFF), 0x01, False),
        (_Custom(), None, False),
    ],
    ids=["off", "ratio-0", "ratio-1", "unsampled-parent", "sampled-parent", "custom"],
)
def test_quick_decision_only_for_standard_samplers_that_drop(
    sampler: Sampler, parent_flags: int | None, quick: bool
) -> None:
    """The span-less path is taken only when an SDK sampler surely drops; otherwise the SDK decides."""
    telemetry = Unsampled(sampler)
    token = None if parent_flags is None else _remote_parent(flags=parent_flags)
    try:
        tel = ClientTelemetry(**telemetry.kwargs())
        assert (tel.quick.unsampled() is not None) is quick
    finally:
        if token is not None:
            otel_context.detach(token)
        telemetry.close()


def test_sampled_call_keeps_the_split_and_the_trace_hook(up) -> None:
    """A sampled call still gets the split on its span and in the histograms, and the httpcore hook."""
    _upstream, server = up
    seen: list[bool] = []
    sampled = Unsampled(sampler=ParentBased(TraceIdRatioBased(1.0)))
    transport = httpx.HTTPTransport()

    class Spy(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append("trace" in request.extensions)
            return transport.handle_request(request)

        def close(self) -> None:
            transport.close()

    policy = Policy.model_validate({"version": 1})
    try:
        with MeshClient(policy, transport=Spy(), **sampled.kwargs()) as client:
            assert client.get(f"{server.url}/sleep/20").status_code == 200
        (call,) = [s for s in sampled.exporter.get_finished_spans() if s.name.startswith("meshlib")]
        assert call.attributes is not None
        assert call.attributes[names.ATTR_LATENCY_SERVICE] == pytest.approx(0.020, abs=1e-6)
        assert names.CLIENT_LATENCY_SERVICE.name in sampled.points()
        assert seen == [True]
    finally:
        sampled.close()


def test_unsampled_call_installs_no_trace_hook(up, unsampled: Unsampled) -> None:
    """Unsampled, the base transport sees no httpcore "trace" extension (no per-event callbacks)."""
    _upstream, _server = up
    seen: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append("trace" in request.extensions)
        return httpx.Response(200, content=b"ok")

    policy = Policy.model_validate({"version": 1})
    with MeshClient(policy, transport=httpx.MockTransport(handler), **unsampled.kwargs()) as client:
        client.get("http://elsewhere.test/x")
    assert seen == [False]


@pytest.mark.parametrize("sampler", [ParentBased(ALWAYS_OFF), _Custom()], ids=["quick", "sdk"])
def test_unsampled_call_continues_an_incoming_context(up, sampler: Sampler) -> None:
    """Under an incoming unsampled context: same trace id, a new parent id, flags kept, tracestate passed on."""
    upstream, server = up
    telemetry = Unsampled(sampler)
    token = _remote_parent(flags=0x02, state="vendor=abc")
    try:
        with MeshClient(mesh_policy([server.url]), **telemetry.kwargs()) as client:
            client.get("http://payments/ok")
    finally:
        otel_context.detach(token)
        telemetry.close()
    headers = upstream.headers[-1]
    match = TRACEPARENT.match(headers["traceparent"])
    assert match is not None
    assert match.group(1) == f"{PARENT_TRACE:032x}"
    assert match.group(2) not in (f"{PARENT_SPAN:016x}", "0" * 16)
    assert match.group(3) == "02"
    assert headers["tracestate"] == "vendor=abc"


def test_other_propagators_and_baggage_still_run(
    up, unsampled: Unsampled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With baggage in the context, or a non-default global propagator, the global propagator writes the headers."""
    upstream, server = up
    with MeshClient(mesh_policy([server.url]), **unsampled.kwargs()) as client:
        token = otel_context.attach(baggage.set_baggage("tenant", "t1"))
        try:
            client.get("http://payments/ok")
        finally:
            otel_context.detach(token)
        assert upstream.headers[-1]["baggage"] == "tenant=t1"
        assert TRACEPARENT.match(upstream.headers[-1]["traceparent"])

        class Custom(TextMapPropagator):
            def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
                ctx = trace.get_current_span(context).get_span_context()
                carrier["x-custom-trace"] = f"{ctx.trace_id:032x}"

            def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
                return context

            @property
            def fields(self) -> set[str]:
                return {"x-custom-trace"}

        monkeypatch.setattr(propagate, "get_global_textmap", lambda: Custom())
        client.get("http://payments/ok")
    assert "traceparent" not in upstream.headers[-1]
    assert len(upstream.headers[-1]["x-custom-trace"]) == 32


def test_split_sums_are_exposed_per_edge_as_observable_counters(
    driver: Driver, up, unsampled: Unsampled
) -> None:
    """Unsampled calls' split sums reach meshlib.client.latency.time/.calls, per caller -> destination."""
    _upstream, server = up
    caller = f"orders-split-{uuid.uuid4().hex[:8]}"
    state = MeshStateMetrics(meter_provider=unsampled.meter_provider)
    try:
        client = driver.client(mesh_policy([server.url]), service_name=caller, **unsampled.kwargs())
        for _ in range(3):
            assert driver.request(client, "GET", "http://payments/sleep/10").status_code == 200
        points = unsampled.points()
    finally:
        state.close()
    edge = {names.ATTR_DESTINATION: "payments", names.ATTR_CALLER: caller}
    (calls,) = [p for p in points[names.CLIENT_LATENCY_CALLS.name] if dict(p.attributes) == edge]
    assert calls.value == 3
    parts = {
        p.attributes[names.ATTR_LATENCY_PART]: p.value
        for p in points[names.CLIENT_LATENCY_TIME.name]
        if p.attributes.get(names.ATTR_CALLER) == caller
    }
    assert set(parts) == {"total", "service", "network", "unknown", "meshlib", "waits"}
    assert parts["unknown"] == 0.0
    assert parts["service"] == pytest.approx(0.030, abs=1e-6)
    assert parts["waits"] == 0.0
    assert parts["service"] + parts["network"] + parts["meshlib"] == pytest.approx(
        parts["total"], abs=0.003
    )
    for spec in (names.CLIENT_LATENCY_SERVICE, names.CLIENT_LATENCY_NETWORK):
        assert spec.name not in points


def test_aiohttp_transport_ignores_trust_env() -> None:
    """AiohttpTransport(trust_env=True) still makes a session without netrc/proxy look-ups."""
    import asyncio

    async def go() -> bool:
        transport = AiohttpTransport(trust_env=True)
        try:
            return bool(transport._make_session().trust_env)
        finally:
            await transport.aclose()

    assert asyncio.run(go()) is False
