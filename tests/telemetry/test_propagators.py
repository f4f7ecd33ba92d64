"""OpenTelemetry's configured propagators on both sides: OTEL_PROPAGATORS=b3 in and out.

A service behind MeshMiddleware (uvicorn) calls a downstream echo with an
AsyncMeshClient, in a fresh interpreter whose global propagator comes from
`OTEL_PROPAGATORS` (as `opentelemetry-instrument` or the SDK's
environment set it up). The caller speaks B3 only.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import RunPython

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "80f198ee56343ba864fe8b2a57d3eff7"
SPAN_ID = "e457b5a2e4d86bd1"

SCRIPT = """
import json
import httpx
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from meshlib import AsyncMeshClient, MeshMiddleware, Policy
from tests.support.servers import serve_asgi

seen = []

async def echo(scope, receive, send):
    seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

with serve_asgi(echo) as downstream:
    policy = Policy.model_validate({"version": 1, "services": {
        "payments": {}, "downstream": {"endpoints": [downstream.url]}}})
    client = AsyncMeshClient(policy, service_name="payments")

    async def app(scope, receive, send):
        await client.get("http://downstream/echo")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    with serve_asgi(MeshMiddleware(app, policy=policy, service_name="payments")) as service:
        for flag in ("1", "0"):
            headers = {"b3": f"TRACE-SPAN-{flag}", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            assert httpx.get(service.url + "/x", headers=headers).status_code == 200

spans = [
    {"kind": s.kind.name, "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
     "parent": f"{s.parent.span_id:016x}" if s.parent else None}
    for s in exporter.get_finished_spans()
]
print(json.dumps({"textmap": type(propagate.get_global_textmap()).__name__, "seen": seen, "spans": spans}))
""".replace("TRACE", TRACE_ID).replace("SPAN", SPAN_ID)


def test_b3_inbound_and_outbound_with_otel_propagators_b3(run_python: RunPython) -> None:
    """B3 in: the SERVER span continues the B3 caller's trace (traceparent ignored, it is not
    configured); B3 out: the downstream gets a b3 header of the same trace naming the CLIENT
    attempt span, sampled or not as the caller said, and no traceparent."""
    out = run_python(SCRIPT, env={"OTEL_PROPAGATORS": "b3"}, cwd=ROOT)["result"]
    assert out["textmap"] == "CompositePropagator"  # of B3SingleFormat alone
    sampled, unsampled = out["seen"]
    spans = out["spans"]
    server = next(s for s in spans if s["kind"] == "SERVER")
    attempt = next(s for s in spans if s["kind"] == "CLIENT")
    assert server["trace_id"] == TRACE_ID
    assert server["parent"] == SPAN_ID
    assert "traceparent" not in sampled
    trace_id, span_id, flag = sampled["b3"].split("-")
    assert (trace_id, span_id, flag) == (TRACE_ID, attempt["span_id"], "1")
    assert attempt["trace_id"] == TRACE_ID
    # the unsampled caller: no spans recorded, its decision and trace passed on in B3
    assert len([s for s in spans if s["kind"] == "SERVER"]) == 1
    trace_id, span_id, flag = unsampled["b3"].split("-")
    assert trace_id == TRACE_ID
    assert span_id != SPAN_ID
    assert flag == "0"
    assert "traceparent" not in unsampled
