"""Tracer and meter providers from MeshSettings, unless the application brought its own.

meshlib's spans and metrics always go to the *global* OpenTelemetry providers,
looked up at use time. Who sets those providers is the application's choice:

- An application that already configured OpenTelemetry (its own SDK
  `TracerProvider`/`MeterProvider`, or `opentelemetry-instrument`) keeps
  full control: meshlib leaves every signal that has a provider alone.
- Otherwise `configure_telemetry(settings)` builds providers with the
  OpenTelemetry SDK (the `servicemeshlib[otel]` extra; `[otlp]` and
  `[prometheus]` include it), with a resource naming the service and this
  instance. The standard `OTEL_*` variables come first: the exporter from
  `OTEL_TRACES_EXPORTER` (`otlp`, `console`, `none`) or an
  `OTEL_EXPORTER_OTLP_ENDPOINT`, the sampler from `OTEL_TRACES_SAMPLER`
  / `OTEL_TRACES_SAMPLER_ARG`, the endpoint from `OTEL_EXPORTER_OTLP_*`.
  meshlib's `MESH_TELEMETRY`, `MESH_OTLP_ENDPOINT` and
  `MESH_TRACE_SAMPLE_RATIO` are aliases used when the standard ones are not
  set (`MESH_TELEMETRY`, when set, wins, being the explicit choice for
  meshlib); `MESH_PROMETHEUS_PORT` adds a scrape endpoint.

Nothing happens at import time; call it once at startup (again is harmless):

```python
from meshlib.telemetry.setup import configure_telemetry

handle = configure_telemetry(MeshSettings(service_name="orders", telemetry="console"))
...
handle.shutdown()          # flushes exporters; also runs at interpreter exit
```

`httpx_instrumentation_active()` tells whether opentelemetry-instrumentation-httpx
is patching httpx too; meshlib then keeps one CLIENT span per attempt (its own).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
from opentelemetry import metrics, trace
from opentelemetry.semconv.attributes.service_attributes import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
)

from meshlib.errors import SettingsError
from meshlib.settings import MeshSettings
from meshlib.telemetry.providers import is_real_provider

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from meshlib.telemetry.prometheus import PrometheusEndpoint

__all__ = [
    "Mode",
    "TelemetryHandle",
    "configure_telemetry",
    "default_instance_id",
    "httpx_instrumentation_active",
    "meter_provider_configured",
    "telemetry_mode",
    "tracer_provider_configured",
]

logger = logging.getLogger("meshlib.telemetry")

Mode = Literal["none", "console", "otlp"]

_lock = threading.Lock()
_handle: TelemetryHandle | None = None


@dataclass
class TelemetryHandle:
    """What `configure_telemetry` did, and how to undo it.

    `tracer_provider` / `meter_provider` are the providers meshlib created
    and installed globally, or None where it left the signal alone (mode
    `none`, or the application had a provider already; see `external`).

    Example:
        ```python
        handle = configure_telemetry(settings)
        if handle.external:
            print("the application configured", handle.external)
        handle.shutdown()
        ```
    """

    mode: Mode
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    prometheus: PrometheusEndpoint | None = None
    external: frozenset[Literal["traces", "metrics"]] = frozenset()
    _closed: bool = field(default=False, init=False, repr=False)

    def shutdown(self) -> None:
        """Flush and stop what meshlib created (exporters, Prometheus server); idempotent.

        The global providers stay installed (OpenTelemetry allows setting them
        once per process); after shutdown they drop what they are given.
        """
        if self._closed:
            return
        self._closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.prometheus is not None:
            self.prometheus.close()


_MODES: tuple[Mode, ...] = ("none", "console", "otlp")


def telemetry_mode(settings: MeshSettings) -> Mode:
    """The exporter mode: `MESH_TELEMETRY` when set, else an OTLP endpoint, else `OTEL_*`.

    In order: `MESH_TELEMETRY` (set explicitly), `MESH_OTLP_ENDPOINT`
    (implies `otlp`), the first of `OTEL_TRACES_EXPORTER` that meshlib
    knows (`otlp`, `console`, `none`), `OTEL_EXPORTER_OTLP_ENDPOINT`
    or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (`otlp`), else `none`.

    Example:
        ```python
        telemetry_mode(MeshSettings(otlp_endpoint="http://127.0.0.1:4318"))  # "otlp"
        ```
    """
    if "telemetry" in settings.model_fields_set:
        return settings.telemetry
    if settings.otlp_endpoint:
        return "otlp"
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name in _MODES:
            return name
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return "otlp"
    return settings.telemetry


def default_instance_id(settings: MeshSettings) -> str:
    """`settings.instance_id`, or `host:pid` of this process.

    Example:
        ```python
        default_instance_id(MeshSettings())   # "web-1:4242"
        ```
    """
    return settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def tracer_provider_configured() -> bool:
    """True when something other than the API's default proxy/no-op tracer provider is global.

    Example:
        ```python
        if not tracer_provider_configured():
            ...  # meshlib's spans go nowhere until someone sets a provider
        ```
    """
    return is_real_provider(trace.get_tracer_provider())


def meter_provider_configured() -> bool:
    """True when something other than the API's default proxy/no-op meter provider is global.

    Example:
        ```python
        meter_provider_configured()   # False in a fresh process
        ```
    """
    return is_real_provider(metrics.get_meter_provider())


def httpx_instrumentation_active(client: Any = None) -> bool:
    """True when opentelemetry-instrumentation-httpx patches httpx in this process.

    `HTTPXClientInstrumentor().instrument()` wraps `httpx.HTTPTransport.handle_request`
    and `AsyncHTTPTransport.handle_async_request` with `wrapt`, so every
    attempt meshlib sends through its per-endpoint transports would get a
    second CLIENT span. meshlib's attempts run with OpenTelemetry's
    "suppress HTTP instrumentation" context key set, which that wrapper
    honours, so each attempt keeps exactly one CLIENT span: meshlib's, with
    `http.request.resend_count`. Plain httpx clients keep the instrumentor's spans.

    With `client`, also report `HTTPXClientInstrumentor.instrument_client(client)`
    on that one client: on a MeshClient this adds a CLIENT span around the
    whole call (retries included), which the HTTP semantic conventions do not
    describe; do not instrument a MeshClient that way.

    Example:
        ```python
        HTTPXClientInstrumentor().instrument()
        httpx_instrumentation_active()   # True
        ```
    """
    if client is not None and getattr(client, "_is_instrumented_by_opentelemetry", False):
        return True
    # wrapt leaves __wrapped__ on what it patches, whoever patched it.
    if hasattr(httpx.HTTPTransport.handle_request, "__wrapped__") or hasattr(
        httpx.AsyncHTTPTransport.handle_async_request, "__wrapped__"
    ):
        return True
    # Only an application that imported the instrumentor can have called it;
    # importing it here would cost every process that never uses it.
    module = sys.modules.get("opentelemetry.instrumentation.httpx")
    if module is None:
        return False
    return bool(module.HTTPXClientInstrumentor().is_instrumented_by_opentelemetry)


def configure_telemetry(settings: MeshSettings | None = None) -> TelemetryHandle:
    """Install tracer and meter providers built from `settings`, once per process.

    Signals the application already configured are left alone (listed in
    `handle.external`). `OTEL_SDK_DISABLED=true` turns everything off.
    The breaker-state and ejected-endpoint gauges of all mesh clients are
    registered on the global meter provider either way.
    Later calls return the first handle, whatever their settings.

    Example:
        ```python
        handle = configure_telemetry(MeshSettings(service_name="orders", otlp_endpoint="http://127.0.0.1:4318"))
        ```
    """
    global _handle
    with _lock:
        if _handle is not None:
            return _handle
        settings = settings if settings is not None else MeshSettings()
        _handle = _configure(settings)
        return _handle


def _configure(settings: MeshSettings) -> TelemetryHandle:
    mode = telemetry_mode(settings)
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        logger.info("OTEL_SDK_DISABLED is set: meshlib configures no telemetry")
        return TelemetryHandle("none")
    from meshlib.telemetry.state_metrics import observe_mesh_state

    observe_mesh_state()  # read at collection time, so registering early costs nothing
    external: set[Literal["traces", "metrics"]] = set()
    if tracer_provider_configured():
        external.add("traces")
    if meter_provider_configured():
        external.add("metrics")
    want_traces = mode != "none" and "traces" not in external
    want_metrics = (mode != "none" or settings.prometheus_port is not None) and (
        "metrics" not in external
    )
    if settings.prometheus_port is not None and "metrics" in external:
        logger.warning(
            "MESH_PROMETHEUS_PORT is set but the application configured its own MeterProvider: "
            "add meshlib.telemetry.prometheus.PrometheusEndpoint().reader to it to expose meshlib's metrics"
        )
    handle = TelemetryHandle(mode, external=frozenset(external))
    if not (want_traces or want_metrics):
        return handle
    _require_sdk(mode, settings)
    resource = _resource(settings)
    if want_traces:
        handle.tracer_provider = _tracer_provider(settings, mode, resource)
        trace.set_tracer_provider(handle.tracer_provider)
    if want_metrics:
        readers = _metric_readers(settings, mode)
        if settings.prometheus_port is not None:
            from meshlib.telemetry.prometheus import start_prometheus_server

            handle.prometheus = start_prometheus_server(settings.prometheus_port)
            readers.append(handle.prometheus.reader)
        handle.meter_provider = _meter_provider(resource, readers)
        metrics.set_meter_provider(handle.meter_provider)
    logger.info(
        "meshlib telemetry: mode=%s traces=%s metrics=%s",
        mode,
        "app" if "traces" in external else bool(want_traces),
        "app" if "metrics" in external else bool(want_metrics),
    )
    return handle


def _require_sdk(mode: Mode, settings: MeshSettings) -> None:
    """Fail with what to install when the SDK is missing (meshlib itself needs only the API)."""
    import importlib.util

    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        return
    from meshlib.extras import install_hint

    asked = f"MESH_TELEMETRY={mode}" if mode != "none" else "MESH_PROMETHEUS_PORT"
    raise SettingsError(
        f"{asked} needs the OpenTelemetry SDK, which meshlib does not install by itself "
        f"(a library depends on the OpenTelemetry API only): run `{install_hint('otel')}` "
        "(the otlp and prometheus extras include it), or configure OpenTelemetry in your "
        "application and leave MESH_TELEMETRY unset"
    )


def _resource(settings: MeshSettings) -> Resource:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str] = {SERVICE_INSTANCE_ID: default_instance_id(settings)}
    if settings.service_name:
        attributes[SERVICE_NAME] = settings.service_name
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME; ours win.
    return Resource.create(attributes)


def _tracer_provider(settings: MeshSettings, mode: Mode, resource: Resource) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if os.environ.get("OTEL_TRACES_SAMPLER"):
        # The standard variable wins; the SDK reads it (and OTEL_TRACES_SAMPLER_ARG) itself.
        if "trace_sample_ratio" in settings.model_fields_set:
            logger.warning("OTEL_TRACES_SAMPLER is set: MESH_TRACE_SAMPLE_RATIO is ignored")
        provider = TracerProvider(resource=resource)
    else:
        provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
    if mode == "console":
        # Synchronous, so a developer sees each span the moment it ends.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        exporter_module = _import_otlp("trace_exporter")
        endpoint = _otlp_url(settings, "traces")
        exporter = exporter_module.OTLPSpanExporter(**({"endpoint": endpoint} if endpoint else {}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _metric_readers(settings: MeshSettings, mode: Mode) -> list[MetricReader]:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    if mode == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter())]
    if mode == "otlp":
        exporter_module = _import_otlp("metric_exporter")
        endpoint = _otlp_url(settings, "metrics")
        exporter = exporter_module.OTLPMetricExporter(
            **({"endpoint": endpoint} if endpoint else {})
        )
        return [PeriodicExportingMetricReader(exporter)]
    return []


def _meter_provider(resource: Resource, readers: list[MetricReader]) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(resource=resource, metric_readers=readers)


def _otlp_url(settings: MeshSettings, signal: Literal["traces", "metrics"]) -> str | None:
    """`MESH_OTLP_ENDPOINT` is a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is (which wins)."""
    if not settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None  # the exporter reads OTEL_EXPORTER_OTLP_* itself
    return f"{settings.otlp_endpoint.rstrip('/')}/v1/{signal}"


def _import_otlp(name: Literal["trace_exporter", "metric_exporter"]) -> Any:
    import importlib

    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")
    except ImportError as exc:
        from meshlib.extras import install_hint

        raise SettingsError(
            f"MESH_TELEMETRY=otlp needs the OTLP exporter: run `{install_hint('otlp')}`"
        ) from exc
