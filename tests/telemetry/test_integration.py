"""The whole path on global providers: MeshClient -> MeshMiddleware, configured the way applications do.

Runs in a fresh interpreter because it sets the global providers, and it
sets them *after* meshlib's client and middleware exist, as an application
that builds its objects before configuring OpenTelemetry would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlib.telemetry import names

from .conftest import run_snippet

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
import asyncio, json, time
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshlib.inbound.asgi import MeshMiddleware
from meshlib.outbound.client import MeshClient
from meshlib.policy.parse import parse_policy
from meshlib.settings import MeshSettings
from meshlib.telemetry.policy_metrics import observe_policy
from meshlib.policy.store import PolicyStore
from meshlib.telemetry.setup import configure_telemetry
from tests.support.servers import serve_asgi

async def charge(request):
    await asyncio.sleep(0.03)
    return PlainTextResponse("charged")

inbound = MeshMiddleware(
    Starlette(routes=[Route("/v1/charges/{id}", charge)]),
    policy=parse_policy("version: 1\\n", source="inbound"),
    service_name="payments",
)
with serve_asgi(inbound) as server:
    store = PolicyStore(parse_policy(
        f"version: 1\\nservices:\\n  payments:\\n    endpoints: ['{server.url}']\\n", source="mesh.yaml"
    ), revision="r1", source="mesh.yaml")
    client = MeshClient(store, service_name="orders")
    observe_policy(store)

    # The application configures OpenTelemetry only now, after meshlib's objects exist.
    exporter = InMemorySpanExporter()
    app_tracer = TracerProvider()
    app_tracer.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(app_tracer)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    handle = configure_telemetry(MeshSettings(service_name="orders", telemetry="console"))

    response = client.get("http://payments/v1/charges/7")
    deadline = time.monotonic() + 5
    while not any(s.kind is trace.SpanKind.SERVER for s in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, "the server span never ended"
        time.sleep(0.01)
    data = reader.get_metrics_data()  # while the client is open, so its breakers are listed
    client.close()

def span(s):
    return {
        "name": s.name, "kind": s.kind.name, "scope": s.instrumentation_scope.name,
        "trace": s.context.trace_id, "id": s.context.span_id,
        "parent": s.parent.span_id if s.parent else None, "attributes": dict(s.attributes),
    }

points = {}
for rm in data.resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            points[m.name] = [[dict(p.attributes), getattr(p, "value", None)] for p in m.data.data_points]
print(json.dumps({
    "status": response.status_code, "endpoint": server.url, "external": sorted(handle.external),
    "spans": [span(s) for s in exporter.get_finished_spans()], "metrics": points,
}))
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What one call from orders to payments left in the application's global providers."""
    out = run_snippet(
        SNIPPET, env={"PYTHONPATH": str(ROOT)}, cwd=tmp_path_factory.mktemp("integration")
    )
    result: dict[str, Any] = out["result"]
    return result


def _spans(outcome: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in outcome["spans"] if s["kind"] == kind]


def test_application_providers_receive_meshlib_telemetry(outcome: dict[str, Any]) -> None:
    """Providers set after MeshClient/MeshMiddleware were built get their spans; meshlib configured nothing."""
    assert outcome["status"] == 200
    assert outcome["external"] == ["metrics", "traces"]
    assert {s["scope"] for s in outcome["spans"]} == {names.SCOPE}


def test_one_trace_spans_caller_and_callee(outcome: dict[str, Any]) -> None:
    """call span -> CLIENT attempt -> SERVER span in the callee, one trace id, parents linked through traceparent."""
    (call,) = _spans(outcome, "INTERNAL")
    (attempt,) = _spans(outcome, "CLIENT")
    (server,) = _spans(outcome, "SERVER")
    assert call["trace"] == attempt["trace"] == server["trace"]
    assert attempt["parent"] == call["id"]
    assert server["parent"] == attempt["id"]
    assert call["name"] == f"{names.SPAN_CALL_PREFIX} GET"
    assert server["name"].startswith("GET")


def test_latency_split_from_the_real_middleware(outcome: dict[str, Any]) -> None:
    """Service time comes from the callee middleware's Server-Timing and the parts add up to the total."""
    (call,) = _spans(outcome, "INTERNAL")
    a: dict[str, float] = call["attributes"]
    total, service = a[names.ATTR_LATENCY_TOTAL], a[names.ATTR_LATENCY_SERVICE]
    network, meshlib = a[names.ATTR_LATENCY_NETWORK], a[names.ATTR_LATENCY_MESHLIB]
    assert 0.03 <= service <= total
    assert network >= 0.0
    assert meshlib >= 0.0
    assert service + network + meshlib == pytest.approx(total, abs=0.002)


def test_metrics_per_edge_and_policy_in_force(outcome: dict[str, Any]) -> None:
    """HTTP durations, the per-edge split, breaker state and the policy revision reach the app's reader."""
    points: dict[str, list[tuple[dict[str, Any], Any]]] = outcome["metrics"]
    for spec in (
        names.CLIENT_REQUEST_DURATION,
        names.SERVER_REQUEST_DURATION,
        names.CLIENT_LATENCY_SERVICE,
        names.CLIENT_LATENCY_NETWORK,
        names.CLIENT_LATENCY_MESHLIB,
    ):
        assert spec.name in points, spec.name
    edge = {names.ATTR_DESTINATION: "payments", names.ATTR_CALLER: "orders"}
    assert [attributes for attributes, _ in points[names.CLIENT_LATENCY_SERVICE.name]] == [edge]
    assert points[names.CLIENT_BREAKER_STATE.name] == [
        [{names.ATTR_DESTINATION: "payments", names.ATTR_ENDPOINT: outcome["endpoint"]}, 0]
    ]
    assert points[names.CLIENT_EJECTED_ENDPOINTS.name] == [
        [{names.ATTR_DESTINATION: "payments"}, 0]
    ]
    assert points[names.POLICY_REVISION.name] == [
        [{names.ATTR_POLICY_REVISION: "r1", names.ATTR_POLICY_SOURCE: "mesh.yaml"}, 1]
    ]
    assert points[names.POLICY_RELOAD_FAILURES.name] == [[{}, 0]]
