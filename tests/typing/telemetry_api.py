"""Type-checked (never run): the telemetry API as users call it; mypy --strict must accept it."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

import meshlib
from meshlib.telemetry import names
from meshlib.telemetry.policy_metrics import PolicyMetrics, observe_policy
from meshlib.telemetry.prometheus import PrometheusEndpoint, start_prometheus_server
from meshlib.telemetry.setup import (
    TelemetryHandle,
    configure_telemetry,
    httpx_instrumentation_active,
)
from meshlib.telemetry.state_metrics import MeshStateMetrics, observe_mesh_state

handle: TelemetryHandle = configure_telemetry(meshlib.MeshSettings(service_name="orders"))
handle = configure_telemetry()
tracer_provider: TracerProvider | None = handle.tracer_provider
meter_provider: MeterProvider | None = handle.meter_provider
external: bool = "traces" in handle.external
handle.shutdown()
active: bool = httpx_instrumentation_active()

endpoint = PrometheusEndpoint()
provider = MeterProvider(metric_readers=[endpoint.reader])
port: int | None = endpoint.port
endpoint.close()
served: PrometheusEndpoint = start_prometheus_server(0)

store = meshlib.PolicyStore(meshlib.load_policy({"version": 1}))
watched: PolicyMetrics = observe_policy(store, meter_provider=provider, attributes={"team": "a"})
state: MeshStateMetrics = observe_mesh_state(meter_provider=provider)
watched.close()
state.close()

spec: names.Instrument = names.CLIENT_RETRIES
event: str = names.EVENT_RETRY
retries = names.create_instrument(provider.get_meter(names.SCOPE), spec)
retries.add(1, {names.ATTR_DESTINATION: "payments"})
