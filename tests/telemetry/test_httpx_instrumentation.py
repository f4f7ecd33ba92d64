"""MeshClient together with opentelemetry-instrumentation-httpx: one CLIENT span per attempt, never two."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_RESEND_COUNT
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshlib.outbound.client import AsyncMeshClient, MeshClient
from meshlib.policy.parse import parse_policy
from meshlib.telemetry import names
from meshlib.telemetry.setup import httpx_instrumentation_active
from tests.support.servers import RunningServer, serve_asgi

INSTRUMENTOR_SCOPE = "opentelemetry.instrumentation.httpx"


class Flaky:
    """Answers 503 to the first two requests of each path, then 200; remembers the traceparents."""

    def __init__(self) -> None:
        self.counts: dict[str, itertools.count[int]] = {}
        self.traceparents: list[str] = []
        self.app = Starlette(routes=[Route("/{name}", self.handle)])

    async def handle(self, request: Request) -> PlainTextResponse:
        self.traceparents.append(request.headers.get("traceparent", ""))
        n = next(self.counts.setdefault(request.url.path, itertools.count()))
        return PlainTextResponse("ok" if n >= 2 else "busy", status_code=200 if n >= 2 else 503)


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[Flaky, RunningServer]]:
    """A flaky service on 127.0.0.1."""
    service = Flaky()
    with serve_asgi(service.app) as server:
        yield service, server


@pytest.fixture
def instrumented(tracer_provider: TracerProvider) -> Iterator[None]:
    """The real instrumentor patching httpx globally for one test, then removed again."""
    assert not httpx_instrumentation_active()
    HTTPXClientInstrumentor().instrument(tracer_provider=tracer_provider)
    try:
        yield
    finally:
        HTTPXClientInstrumentor().uninstrument()
    assert not httpx_instrumentation_active()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> str:
    """MeshClient and AsyncMeshClient."""
    return str(request.param)


def _policy(server: RunningServer) -> object:
    return parse_policy(
        f"""
version: 1
defaults:
  retry: {{attempts: 3, backoff: {{base: 1ms, max: 2ms}}, retry_on: [503]}}
services:
  payments:
    endpoints: ["{server.url}"]
""",
        source="test",
    )


def _mesh_get(
    server: RunningServer, provider: TracerProvider, path: str, driver: str
) -> httpx.Response:
    policy = _policy(server)
    url = f"http://payments{path}"
    if driver == "sync":
        with MeshClient(policy, service_name="orders", tracer_provider=provider) as client:  # type: ignore[arg-type]
            return client.get(url)

    async def main() -> httpx.Response:
        async with AsyncMeshClient(
            policy, service_name="orders", tracer_provider=provider
        ) as client:  # type: ignore[arg-type]
            return await client.get(url)

    return asyncio.run(main())


def _client_spans(exporter: InMemorySpanExporter, scope: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT
        and s.instrumentation_scope
        and s.instrumentation_scope.name == scope
    ]


@pytest.mark.usefixtures("instrumented")
def test_attempts_have_one_client_span_each(
    flaky: tuple[Flaky, RunningServer],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    driver: str,
) -> None:
    """With the instrumentor on, a call retried twice has 3 CLIENT spans, all meshlib's, and none doubled."""
    service, server = flaky
    assert httpx_instrumentation_active()
    service.traceparents.clear()
    response = _mesh_get(server, tracer_provider, f"/mesh-{driver}", driver)
    assert response.status_code == 200

    assert _client_spans(span_exporter, INSTRUMENTOR_SCOPE) == []
    attempts = _client_spans(span_exporter, names.SCOPE)
    assert sorted(s.attributes.get(HTTP_REQUEST_RESEND_COUNT, 0) for s in attempts) == [0, 1, 2]  # type: ignore[union-attr]
    (call,) = [
        s for s in span_exporter.get_finished_spans() if s.name.startswith(names.SPAN_CALL_PREFIX)
    ]
    assert {s.parent.span_id for s in attempts if s.parent} == {call.context.span_id}
    # Each attempt carried its own span's context to the server: meshlib's, not the instrumentor's.
    sent = [tp.split("-")[2] for tp in service.traceparents]
    assert sent == [
        f"{s.context.span_id:016x}" for s in sorted(attempts, key=lambda s: s.start_time or 0)
    ]


@pytest.mark.usefixtures("instrumented")
def test_plain_httpx_clients_keep_the_instrumentor_spans(
    flaky: tuple[Flaky, RunningServer],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """meshlib suppresses the instrumentor only inside its own attempts; other clients stay traced."""
    _, server = flaky
    _mesh_get(server, tracer_provider, "/mixed", "sync")
    with httpx.Client() as plain:
        assert plain.get(server.url + "/plain").status_code == 503
    assert len(_client_spans(span_exporter, INSTRUMENTOR_SCOPE)) == 1
    assert len(_client_spans(span_exporter, names.SCOPE)) == 3


def test_detects_instrument_client_on_one_client(
    flaky: tuple[Flaky, RunningServer], tracer_provider: TracerProvider
) -> None:
    """httpx_instrumentation_active(client) reports HTTPXClientInstrumentor.instrument_client on that client."""
    _, server = flaky
    with MeshClient(_policy(server), tracer_provider=tracer_provider) as client:  # type: ignore[arg-type]
        assert not httpx_instrumentation_active(client)
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
        try:
            assert httpx_instrumentation_active(client)
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)
    assert not httpx_instrumentation_active()


class _DropCallSpans(Sampler):
    """Drops meshlib's call spans and samples everything else: a sampler meshlib cannot shortcut."""

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
    ) -> SamplingResult:
        decision = (
            Decision.DROP if name.startswith(names.SPAN_CALL_PREFIX) else Decision.RECORD_AND_SAMPLE
        )
        return SamplingResult(decision)

    def get_description(self) -> str:
        return "DropCallSpans"


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, _DropCallSpans()], ids=["standard", "custom"])
def test_unsampled_calls_get_no_instrumentor_spans(
    flaky: tuple[Flaky, RunningServer], sampler: Sampler, driver: str
) -> None:
    """An unsampled mesh call keeps the instrumentor out too: no orphan CLIENT span, meshlib's traceparent sent."""
    service, server = flaky
    seen = InMemorySpanExporter()
    instrumentor_provider = TracerProvider()  # samples everything it is asked about
    instrumentor_provider.add_span_processor(SimpleSpanProcessor(seen))
    mesh_provider = TracerProvider(sampler=ParentBased(sampler))
    HTTPXClientInstrumentor().instrument(tracer_provider=instrumentor_provider)
    try:
        service.traceparents.clear()
        response = _mesh_get(
            server, mesh_provider, f"/unsampled-{driver}-{sampler.get_description()}", driver
        )
    finally:
        HTTPXClientInstrumentor().uninstrument()
        mesh_provider.shutdown()
        instrumentor_provider.shutdown()
    assert response.status_code == 200
    assert seen.get_finished_spans() == ()
    trace_ids = {tp.split("-")[1] for tp in service.traceparents}
    sampled = {int(tp.split("-")[3], 16) & 0x01 for tp in service.traceparents}
    assert (len(service.traceparents), len(trace_ids), sampled) == (3, 1, {0})
