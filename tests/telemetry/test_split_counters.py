"""The all-calls latency counters are process-level and monotonic, and exist whenever a meter provider does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshlib.outbound import MeshClient
from meshlib.policy.model import Policy
from meshlib.telemetry import names
from tests.support.otel import LocalTelemetry
from tests.support.servers import RunningServer, serve_asgi

from .conftest import RunPython


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"server-timing", b"app;dur=1.0")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """A callee that reports 1 ms of service time."""
    with serve_asgi(_app) as running:
        yield running


def _edge(telemetry: LocalTelemetry, caller: str) -> tuple[int, dict[str, float]]:
    points = telemetry.points()
    calls = [
        p.value
        for p in points.get(names.CLIENT_LATENCY_CALLS.name, [])
        if p.attributes.get(names.ATTR_CALLER) == caller
    ]
    parts = {
        p.attributes[names.ATTR_LATENCY_PART]: p.value
        for p in points.get(names.CLIENT_LATENCY_TIME.name, [])
        if p.attributes.get(names.ATTR_CALLER) == caller
    }
    return (calls[0] if calls else 0), parts


def test_counters_are_monotonic_across_client_close(server: RunningServer) -> None:
    """A client per request, each closed at once: the counters keep every call, never go back,
    and need no observe_mesh_state()/configure_telemetry() call (the meter provider suffices)."""
    telemetry = LocalTelemetry()
    caller = "batch-per-request"
    policy = Policy.model_validate(
        {"version": 1, "services": {"payments": {"endpoints": [server.url]}}}
    )
    seen = []
    try:
        for _ in range(4):
            with MeshClient(policy, service_name=caller, **telemetry.kwargs()) as client:
                assert client.get("http://payments/x").status_code == 200
            calls, parts = _edge(telemetry, caller)
            seen.append(calls)
            assert parts["service"] == pytest.approx(0.001 * calls)
        assert seen == [1, 2, 3, 4]
        assert _edge(telemetry, caller)[0] == 4  # and again after the last client is gone
    finally:
        telemetry.close()


def test_counters_appear_with_a_global_provider_set_later(run_python: RunPython) -> None:
    """A client built before any meter provider; the application sets one afterwards: the
    counters are exported without any meshlib call, and the closed client's calls stay counted."""
    out = run_python(
        """
import json
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from meshlib import MeshClient, Policy
from tests.support.servers import serve_asgi

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

with serve_asgi(app) as server:
    policy = Policy.model_validate({"version": 1, "services": {"payments": {"endpoints": [server.url]}}})
    client = MeshClient(policy, service_name="early")
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    for _ in range(3):
        client.get("http://payments/x")
    client.close()
names = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            for p in m.data.data_points:
                if p.attributes.get("meshlib.caller") == "early":
                    names.setdefault(m.name, []).append(p.value)
print(json.dumps(names))
""",
        cwd=__import__("pathlib").Path(__file__).resolve().parents[2],
    )["result"]
    assert out[names.CLIENT_LATENCY_CALLS.name] == [3]
    assert len(out[names.CLIENT_LATENCY_TIME.name]) == 6  # one point per part
