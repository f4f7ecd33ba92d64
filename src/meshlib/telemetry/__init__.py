"""OpenTelemetry tracing and metrics for meshlib.

Importing this package configures nothing. Modules:

- `meshlib.telemetry.names`: every meshlib instrument, span event and attribute name.
- `meshlib.telemetry.setup`: `configure_telemetry(settings)`, providers from MeshSettings.
- `meshlib.telemetry.client` / `meshlib.telemetry.server`: spans and metrics per call and request.
- `meshlib.telemetry.quicktrace`: the trace context of an unsampled call or request without building a span.
- `meshlib.telemetry.providers`: whether a real (SDK) tracer or meter provider is in place, asked cheaply.
- `meshlib.telemetry.bodies`: response-body pass-throughs that report the body's end.
- `meshlib.telemetry.latency`: a call's and each attempt's time split into service, network, unknown, meshlib and waits.
- `meshlib.telemetry.requestid`: `x-request-id`, accepted or made inbound and passed on by every call.
- `meshlib.telemetry.oplog`: the log lines of breaker, ejection and retry-budget changes.
- `meshlib.telemetry.policy_metrics`: the policy revision in force and reload failures.
- `meshlib.telemetry.state_metrics`: breaker states, ejected endpoints and per-edge split sums of live clients.
- `meshlib.telemetry.prometheus`: a Prometheus scrape endpoint.
- `meshlib.telemetry.reference`: the reference docs page, rendered from `names`.
"""

from __future__ import annotations

__all__: list[str] = []
