"""configure_telemetry: providers from MeshSettings, or hands off when the application has its own.

Global providers can be set once per process, so each case runs in a fresh
interpreter (the `run_python` fixture) and prints what it saw as JSON.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshlib.settings import MeshSettings
from meshlib.telemetry.setup import default_instance_id, telemetry_mode
from tests.support.servers import RunningServer, free_port, serve_asgi

from .conftest import RunPython

PRELUDE = """
import json, sys, threading
from opentelemetry import metrics, trace
from meshlib.settings import MeshSettings
from meshlib.telemetry.setup import configure_telemetry

def emit(name="hello"):
    with trace.get_tracer("test").start_as_current_span(name):
        pass
    metrics.get_meter("test").create_counter("test.calls").add(1)

def kinds():
    return [type(trace.get_tracer_provider()).__name__, type(metrics.get_meter_provider()).__name__]
"""


class OtlpReceiver:
    """A tiny OTLP/HTTP receiver: keeps the protobuf requests POSTed to /v1/traces and /v1/metrics."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/traces", self.receive_traces, methods=["POST"]),
                Route("/v1/metrics", self.receive_metrics, methods=["POST"]),
            ]
        )

    @staticmethod
    async def _body(request: Request) -> bytes:
        body = await request.body()
        return gzip.decompress(body) if request.headers.get("content-encoding") == "gzip" else body

    async def receive_traces(self, request: Request) -> Response:
        message = ExportTraceServiceRequest.FromString(await self._body(request))
        with self.lock:
            self.traces.append(message)
        return Response(b"", media_type="application/x-protobuf")

    async def receive_metrics(self, request: Request) -> Response:
        message = ExportMetricsServiceRequest.FromString(await self._body(request))
        with self.lock:
            self.metrics.append(message)
        return Response(b"", media_type="application/x-protobuf")


@pytest.fixture
def otlp() -> Iterator[tuple[OtlpReceiver, RunningServer]]:
    """An OTLP/HTTP receiver listening on 127.0.0.1."""
    receiver = OtlpReceiver()
    with serve_asgi(receiver.app) as server:
        yield receiver, server


def _resource(attributes: object) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in attributes}  # type: ignore[attr-defined]


def test_mode_from_settings() -> None:
    """An OTLP endpoint implies otlp; otherwise MESH_TELEMETRY decides; instance id defaults to host:pid."""
    assert telemetry_mode(MeshSettings()) == "none"
    assert telemetry_mode(MeshSettings(telemetry="console")) == "console"
    assert telemetry_mode(MeshSettings(otlp_endpoint="http://127.0.0.1:4318")) == "otlp"
    assert default_instance_id(MeshSettings(instance_id="a-1")) == "a-1"
    assert default_instance_id(MeshSettings()).endswith(":" + str(__import__("os").getpid()))


def test_nothing_happens_at_import(run_python: RunPython) -> None:
    """Importing meshlib and its telemetry modules sets no provider and starts no thread."""
    out = run_python(
        """
        import json, sys, threading
        import meshlib
        import meshlib.telemetry.names, meshlib.telemetry.setup, meshlib.telemetry.policy_metrics
        import meshlib.telemetry.prometheus, meshlib.telemetry.client, meshlib.telemetry.server
        from opentelemetry import metrics, trace
        from meshlib.telemetry.setup import httpx_instrumentation_active
        print(json.dumps({
            "kinds": [type(trace.get_tracer_provider()).__name__, type(metrics.get_meter_provider()).__name__],
            "threads": threading.active_count(),
            "exporters": sorted(m for m in sys.modules if m.startswith(("opentelemetry.exporter", "prometheus_client"))),
            "instrumentor": [httpx_instrumentation_active(), "opentelemetry.instrumentation.httpx" in sys.modules],
        }))
        """
    )
    assert out["result"] == {
        "kinds": ["ProxyTracerProvider", "_ProxyMeterProvider"],
        "threads": 1,
        "exporters": [],
        "instrumentor": [False, False],
    }


def test_mode_none_configures_nothing(run_python: RunPython) -> None:
    """The default (telemetry=none) installs no provider and starts no thread; a second call is the same handle."""
    out = run_python(
        PRELUDE
        + """
h = configure_telemetry(MeshSettings())
print(json.dumps({"mode": h.mode, "providers": [h.tracer_provider, h.meter_provider],
    "kinds": kinds(), "threads": threading.active_count(),
    "same": configure_telemetry(MeshSettings(telemetry="console")) is h}))
"""
    )
    assert out["result"] == {
        "mode": "none",
        "providers": [None, None],
        "kinds": ["ProxyTracerProvider", "_ProxyMeterProvider"],
        "threads": 1,
        "same": True,
    }


def test_console_mode_prints_spans_with_the_service_resource(run_python: RunPython) -> None:
    """telemetry=console installs SDK providers whose spans and metrics print with service.name and instance id."""
    out = run_python(
        PRELUDE
        + """
h = configure_telemetry(MeshSettings(service_name="orders", instance_id="orders-7", telemetry="console"))
emit("console-span")
k = kinds()
h.shutdown(); h.shutdown()
print(json.dumps({"mode": h.mode, "kinds": k, "sampler": h.tracer_provider.sampler.get_description()}))
"""
    )
    assert out["result"]["kinds"] == ["TracerProvider", "MeterProvider"]
    assert out["result"]["sampler"].startswith("ParentBased{root:TraceIdRatioBased{1.0}")
    printed = out["stdout"]
    assert '"name": "console-span"' in printed
    assert '"service.name": "orders"' in printed
    assert '"service.instance.id": "orders-7"' in printed
    assert "test.calls" in printed  # the metric reader flushed at shutdown


def test_sample_ratio_zero_drops_root_spans_but_honours_sampled_parents(
    run_python: RunPython,
) -> None:
    """trace_sample_ratio=0 samples no new trace, while a sampled remote parent is still followed."""
    out = run_python(
        PRELUDE
        + """
from opentelemetry.propagate import extract
h = configure_telemetry(MeshSettings(telemetry="console", trace_sample_ratio=0.0))
tracer = trace.get_tracer("test")
with tracer.start_as_current_span("root") as root:
    root_sampled = root.get_span_context().trace_flags.sampled
parent = extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
with tracer.start_as_current_span("child", context=parent) as child:
    child_sampled = child.get_span_context().trace_flags.sampled
h.shutdown()
print(json.dumps({"root": root_sampled, "child": child_sampled}))
"""
    )
    assert out["result"] == {"root": False, "child": True}
    assert '"name": "root"' not in out["stdout"]


def test_standard_otel_variables_come_before_the_mesh_aliases(run_python: RunPython) -> None:
    """OTEL_TRACES_EXPORTER picks the exporter and OTEL_TRACES_SAMPLER the sampler; the MESH_* alias
    for the ratio is then ignored (with a warning), MESH_TELEMETRY set explicitly still wins."""
    out = run_python(
        PRELUDE
        + """
from meshlib.telemetry.setup import telemetry_mode
mode = telemetry_mode(MeshSettings())
explicit = telemetry_mode(MeshSettings(telemetry="none"))
h = configure_telemetry(MeshSettings())
tracer = trace.get_tracer("test")
with tracer.start_as_current_span("root") as root:
    sampled = root.get_span_context().trace_flags.sampled
sampler = type(trace.get_tracer_provider().sampler).__name__
h.shutdown()
print(json.dumps({"mode": mode, "explicit": explicit, "sampled": sampled, "sampler": sampler}))
""",
        env={
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "always_off",
            "MESH_TRACE_SAMPLE_RATIO": "1.0",
        },
    )
    assert out["result"] == {
        "mode": "console",
        "explicit": "none",
        "sampled": False,
        "sampler": "StaticSampler",
    }
    assert "MESH_TRACE_SAMPLE_RATIO is ignored" in out["stderr"]


def test_otlp_mode_exports_to_a_local_receiver(
    run_python: RunPython, otlp: tuple[OtlpReceiver, RunningServer]
) -> None:
    """otlp_endpoint sends spans and metrics over OTLP/HTTP to <endpoint>/v1/traces and /v1/metrics."""
    receiver, server = otlp
    out = run_python(
        PRELUDE
        + f"""
h = configure_telemetry(MeshSettings(service_name="orders", otlp_endpoint="{server.url}/"))
emit("otlp-span")
h.shutdown()
print(json.dumps({{"mode": h.mode, "kinds": kinds()}}))
"""
    )
    assert out["result"] == {"mode": "otlp", "kinds": ["TracerProvider", "MeterProvider"]}
    spans = [
        (span.name, _resource(rs.resource.attributes)["service.name"])
        for request in receiver.traces
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert spans == [("otlp-span", "orders")]
    exported_metrics = {
        metric.name
        for request in receiver.metrics
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert "test.calls" in exported_metrics


def test_otlp_mode_without_endpoint_follows_the_otel_variables(
    run_python: RunPython, otlp: tuple[OtlpReceiver, RunningServer]
) -> None:
    """MESH_TELEMETRY=otlp with no MESH_OTLP_ENDPOINT exports where OTEL_EXPORTER_OTLP_ENDPOINT says."""
    receiver, server = otlp
    out = run_python(
        PRELUDE
        + """
h = configure_telemetry(MeshSettings(telemetry="otlp"))
emit("env-span")
h.shutdown()
print(json.dumps(h.mode))
""",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": server.url, "OTEL_SERVICE_NAME": "from-env"},
    )
    assert out["result"] == "otlp"
    received = [
        (span.name, _resource(rs.resource.attributes)["service.name"])
        for request in receiver.traces
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert received == [("env-span", "from-env")]


def test_missing_otlp_extra_is_an_actionable_error(run_python: RunPython) -> None:
    """Without opentelemetry-exporter-otlp-proto-http, otlp mode fails with the pip command to run."""
    out = run_python(
        PRELUDE
        + """
sys.modules["opentelemetry.exporter.otlp.proto.http.trace_exporter"] = None
from meshlib.errors import SettingsError
try:
    configure_telemetry(MeshSettings(telemetry="otlp"))
except SettingsError as exc:
    print(json.dumps(str(exc)))
"""
    )
    assert "pip install 'servicemeshlib[otlp]'" in out["result"]


def test_application_providers_are_left_alone(run_python: RunPython) -> None:
    """With SDK providers already global, configure_telemetry installs nothing and reports them external."""
    out = run_python(
        PRELUDE
        + """
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
app_tp, app_mp = TracerProvider(), MeterProvider()
trace.set_tracer_provider(app_tp); metrics.set_meter_provider(app_mp)
h = configure_telemetry(MeshSettings(telemetry="console", prometheus_port=0))
print(json.dumps({"external": sorted(h.external), "providers": [h.tracer_provider, h.meter_provider],
    "prometheus": h.prometheus, "kept": trace.get_tracer_provider() is app_tp and metrics.get_meter_provider() is app_mp}))
"""
    )
    assert out["result"] == {
        "external": ["metrics", "traces"],
        "providers": [None, None],
        "prometheus": None,
        "kept": True,
    }
    assert "PrometheusEndpoint().reader" in out["stderr"]  # the warning says what to do instead


def test_only_the_missing_signal_is_configured(run_python: RunPython) -> None:
    """An application that set only a tracer provider keeps it; meshlib adds the meter provider."""
    out = run_python(
        PRELUDE
        + """
from opentelemetry.sdk.trace import TracerProvider
app_tp = TracerProvider()
trace.set_tracer_provider(app_tp)
h = configure_telemetry(MeshSettings(telemetry="console"))
print(json.dumps({"external": sorted(h.external), "tracer": h.tracer_provider is None,
    "kept": trace.get_tracer_provider() is app_tp, "meter": type(metrics.get_meter_provider()).__name__}))
h.shutdown()
"""
    )
    assert out["result"] == {
        "external": ["traces"],
        "tracer": True,
        "kept": True,
        "meter": "MeterProvider",
    }


def test_otel_sdk_disabled_wins(run_python: RunPython) -> None:
    """OTEL_SDK_DISABLED=true makes configure_telemetry a no-op even in console mode."""
    out = run_python(
        PRELUDE
        + """
h = configure_telemetry(MeshSettings(telemetry="console"))
print(json.dumps({"mode": h.mode, "kinds": kinds()}))
""",
        env={"OTEL_SDK_DISABLED": "true"},
    )
    assert out["result"] == {
        "mode": "none",
        "kinds": ["ProxyTracerProvider", "_ProxyMeterProvider"],
    }


def test_prometheus_port_serves_meshlib_metrics(run_python: RunPython) -> None:
    """MESH_PROMETHEUS_PORT alone installs a meter provider scraped on 127.0.0.1, with policy metrics."""
    port = free_port()
    out = run_python(
        PRELUDE
        + f"""
import httpx
from meshlib.policy.store import PolicyStore
from meshlib.telemetry.policy_metrics import observe_policy
store = PolicyStore()
store.update_from_text("version: 1\\n", source="mesh.yaml", revision="r9")
observe_policy(store)
h = configure_telemetry(MeshSettings(prometheus_port={port}, service_name="orders"))
text = httpx.get("http://127.0.0.1:{port}/metrics").text
h.shutdown()
print(json.dumps({{"mode": h.mode, "tracer": h.tracer_provider, "text": text}}))
"""
    )
    result = out["result"]
    assert (result["mode"], result["tracer"]) == ("none", None)
    assert 'meshlib_policy_revision{meshlib_policy_revision="r9"' in result["text"]
    assert "meshlib_policy_reload_failures_total" in result["text"]
    assert 'service_name="orders"' in result["text"]  # target_info carries the resource
