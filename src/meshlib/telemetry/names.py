"""Every name meshlib's telemetry uses that is not an OpenTelemetry semantic convention.

One place for meshlib's instrument names, units and descriptions, its span
event names and its own attribute keys, so that a dashboard or an alert
written against one meshlib release keeps working, and so that the client,
server and policy modules cannot drift apart. Standard names come from the
`opentelemetry-semantic-conventions` package (`opentelemetry.semconv`),
never from here and never hand-typed.

Instruments are described by `Instrument` records and created with
`create_instrument`, at use time, from whatever meter is current:

```python
from opentelemetry import metrics
from meshlib.telemetry import names

meter = metrics.get_meter(names.SCOPE)
retries = names.create_instrument(meter, names.CLIENT_RETRIES)
retries.add(1, {names.ATTR_DESTINATION: "payments", names.ATTR_RETRY_REASON: "503"})
```

Span events carry the attribute keys below:

```python
span.add_event(names.EVENT_RETRY, {names.ATTR_RETRY_REASON: "503", names.ATTR_RETRY_BACKOFF: 0.025})
```

Units follow UCUM as OpenTelemetry asks: durations in seconds (`s`), counts
as `{thing}`. Duration *attributes* on spans are seconds too (floats).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final, Literal

from opentelemetry.metrics import Meter
from opentelemetry.semconv.metrics.http_metrics import (
    HTTP_CLIENT_REQUEST_DURATION,
    HTTP_SERVER_REQUEST_DURATION,
)

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_AUTHZ_DECISION",
    "ATTR_BREAKER_PREVIOUS_STATE",
    "ATTR_BREAKER_STATE",
    "ATTR_CALLER",
    "ATTR_DEADLINE_BUDGET",
    "ATTR_DENY_RULE",
    "ATTR_DESTINATION",
    "ATTR_EJECTION_DURATION",
    "ATTR_ENDPOINT",
    "ATTR_ENDPOINT_COUNT",
    "ATTR_FAULT_KIND",
    "ATTR_HEALTH",
    "ATTR_LATENCY_MESHLIB",
    "ATTR_LATENCY_NETWORK",
    "ATTR_LATENCY_PART",
    "ATTR_LATENCY_SERVICE",
    "ATTR_LATENCY_TOTAL",
    "ATTR_LATENCY_UNKNOWN",
    "ATTR_LATENCY_WAITS",
    "ATTR_LIMIT",
    "ATTR_OUTCOME",
    "ATTR_POLICY_REVISION",
    "ATTR_POLICY_SOURCE",
    "ATTR_REGISTRATION_EVENT",
    "ATTR_REJECT_REASON",
    "ATTR_RETRY_AFTER",
    "ATTR_RETRY_ATTEMPT",
    "ATTR_RETRY_BACKOFF",
    "ATTR_RETRY_REASON",
    "ATTR_ROUTE",
    "ATTR_SERVICE",
    "ATTR_SHADOW",
    "ATTR_SHED_REASON",
    "BREAKER_STATE_VALUES",
    "CLIENT_BREAKER_STATE",
    "CLIENT_BREAKER_TRANSITIONS",
    "CLIENT_BUDGET_REFUSALS",
    "CLIENT_DEADLINE_EXCEEDED",
    "CLIENT_EJECTED_ENDPOINTS",
    "CLIENT_EJECTIONS",
    "CLIENT_FAULTS_INJECTED",
    "CLIENT_LATENCY_CALLS",
    "CLIENT_LATENCY_MESHLIB",
    "CLIENT_LATENCY_NETWORK",
    "CLIENT_LATENCY_SERVICE",
    "CLIENT_LATENCY_TIME",
    "CLIENT_LATENCY_UNKNOWN",
    "CLIENT_REQUEST_DURATION",
    "CLIENT_RETRIES",
    "CONTROLPLANE_FETCH_FAILURES",
    "CONTROLPLANE_PUBLISHES_REFUSED",
    "DISCOVERY_DNS_RESOLUTIONS",
    "DISCOVERY_ENDPOINT_SET_CHANGES",
    "DISCOVERY_HEALTH_TRANSITIONS",
    "DISCOVERY_REGISTRATION_EVENTS",
    "DURATION_BUCKETS",
    "EVENT_BREAKER_STATE_CHANGE",
    "EVENT_BUDGET_REFUSED",
    "EVENT_DEADLINE_EXCEEDED",
    "EVENT_DENIED",
    "EVENT_EJECTION",
    "EVENT_FAULT_INJECTED",
    "EVENT_REJECTED",
    "EVENT_RETRY",
    "EVENT_SHED",
    "INSTRUMENTS",
    "POLICY_RELOAD_FAILURES",
    "POLICY_REVISION",
    "SCOPE",
    "SERVER_DENIED",
    "SERVER_REJECTED",
    "SERVER_REQUEST_DURATION",
    "SERVER_SHED",
    "SERVER_TIMING_APP",
    "SPAN_CALL_PREFIX",
    "Instrument",
    "InstrumentKind",
    "create_instrument",
    "error_type",
]

SCOPE: Final = "meshlib"
"""Instrumentation scope of every meshlib tracer and meter: `get_tracer(SCOPE, __version__)`."""

SERVER_TIMING_APP: Final = "app"
"""The Server-Timing metric name the inbound middleware writes (`app;dur=12.3`) and callers read."""

SPAN_CALL_PREFIX: Final = "meshlib.call"
"""Prefix of the logical (INTERNAL) span around one MeshClient call, e.g. `meshlib.call GET`."""

# --- span event names ---------------------------------------------------------

EVENT_RETRY: Final = "meshlib.retry"
"""An attempt failed and another follows; attributes: reason, backoff, attempt."""
EVENT_BUDGET_REFUSED: Final = "meshlib.budget_refused"
"""A retry was wanted but the destination's retry budget refused it."""
EVENT_BREAKER_STATE_CHANGE: Final = "meshlib.breaker_state_change"
"""An endpoint's circuit breaker changed state; attributes: endpoint, state, previous state."""
EVENT_EJECTION: Final = "meshlib.ejection"
"""Outlier detection ejected an endpoint; attributes: endpoint, ejection duration."""
EVENT_DEADLINE_EXCEEDED: Final = "meshlib.deadline_exceeded"
"""The call's deadline (policy total or propagated) ran out."""
EVENT_FAULT_INJECTED: Final = "meshlib.fault_injected"
"""The policy's fault injection aborted or delayed this call; attribute: fault kind."""
EVENT_SHED: Final = "meshlib.shed"
"""The inbound middleware shed a request (rate or concurrency limit); attribute: shed reason."""
EVENT_DENIED: Final = "meshlib.denied"
"""The inbound middleware denied a request by authz; attribute: the rule that decided."""
EVENT_REJECTED: Final = "meshlib.rejected"
"""The inbound middleware refused a request with 400 before the app; attribute: the reject reason."""

# --- meshlib's own attribute keys (standard ones come from opentelemetry.semconv) ---

ATTR_DESTINATION: Final = "meshlib.destination"
"""Destination service name from the policy (`payments`), or the host for non-mesh URLs."""
ATTR_CALLER: Final = "meshlib.caller"
"""Calling service name: the client's `service_name`, or the peer identity inbound."""
ATTR_ENDPOINT: Final = "meshlib.endpoint"
"""One endpoint of a destination, as written in the policy (`http://127.0.0.1:8001`)."""
ATTR_ROUTE: Final = "meshlib.route"
"""The policy route that matched (its path prefix), or `default`."""
ATTR_RETRY_REASON: Final = "meshlib.retry.reason"
"""Why an attempt was retried: a status code (`503`) or a failure kind (`connect-failure`, `reset`, `timeout`)."""
ATTR_RETRY_BACKOFF: Final = "meshlib.retry.backoff"
"""Seconds waited before the next attempt (float), Retry-After included."""
ATTR_RETRY_ATTEMPT: Final = "meshlib.retry.attempt"
"""Zero-based number of the attempt that failed (matches its span's `http.request.resend_count`)."""
ATTR_ATTEMPT: Final = "meshlib.attempt"
"""On a SERVER span: which try of its call a request is (1 for the first), from the caller's `x-mesh-attempt` (or Envoy's `x-envoy-attempt-count`) header."""
ATTR_BREAKER_STATE: Final = "meshlib.breaker.state"
"""A breaker state: `closed`, `open` or `half-open`."""
ATTR_BREAKER_PREVIOUS_STATE: Final = "meshlib.breaker.previous_state"
"""The breaker state before a change."""
ATTR_EJECTION_DURATION: Final = "meshlib.ejection.duration"
"""Seconds an ejected endpoint stays out (float)."""
ATTR_DEADLINE_BUDGET: Final = "meshlib.deadline.budget"
"""Seconds the call had when it started (float): policy total capped by a propagated deadline."""
ATTR_FAULT_KIND: Final = "meshlib.fault.kind"
"""Injected fault kind: `abort` or `delay`."""
ATTR_SHED_REASON: Final = "meshlib.shed.reason"
"""Why a request was shed: `rate_limit` or `concurrency_limit`."""
ATTR_REJECT_REASON: Final = "meshlib.reject.reason"
"""Why a request was refused with 400 before the app: its path is not in normal form (`dot-segment`, `empty-segment`, `escaped-slash`, `backslash`, `control-character`, `not-utf8`, `not-absolute`)."""
ATTR_DENY_RULE: Final = "meshlib.authz.rule"
"""The authz rule (or `default`) that decided an inbound request."""
ATTR_AUTHZ_DECISION: Final = "meshlib.authz.decision"
"""`allow` or `deny`: the authz decision on an inbound request (span attribute)."""
ATTR_LIMIT: Final = "meshlib.limit"
"""Where in the policy the limit that shed a request is set, e.g. `services.payments.inbound.rate_limit`."""
ATTR_RETRY_AFTER: Final = "meshlib.retry_after"
"""Seconds a shed caller was told to wait (float, span events only)."""
ATTR_SERVICE: Final = "meshlib.service"
"""A service named in the policy whose endpoints discovery manages."""
ATTR_HEALTH: Final = "meshlib.health"
"""An endpoint's active health check state: `healthy` or `unhealthy`."""
ATTR_OUTCOME: Final = "meshlib.outcome"
"""How a discovery operation ended, e.g. `ok`, `failed`, `empty` for a DNS resolution."""
ATTR_ENDPOINT_COUNT: Final = "meshlib.endpoints"
"""How many endpoints a service's routable set holds after a change (int)."""
ATTR_REGISTRATION_EVENT: Final = "meshlib.event"
"""A registration lease event: `registered`, `renewed`, `lost` or `deregistered`."""
ATTR_SHADOW: Final = "meshlib.shadow"
"""True when a policy in shadow mode only counted a decision without enforcing it."""
ATTR_POLICY_REVISION: Final = "meshlib.policy.revision"
"""Revision of the policy in force."""
ATTR_POLICY_SOURCE: Final = "meshlib.policy.source"
"""Where the policy in force came from (file path or control-plane URL)."""
ATTR_LATENCY_TOTAL: Final = "meshlib.latency.total"
"""Seconds from the call's start to its response body's end, as the caller saw it (float)."""
ATTR_LATENCY_SERVICE: Final = "meshlib.latency.service"
"""Seconds the callee reported as its own (`Server-Timing: app;dur=`, else `x-envoy-upstream-service-time`); absent when it reported none (float)."""
ATTR_LATENCY_NETWORK: Final = "meshlib.latency.network"
"""Seconds on the wire minus the service time, for attempts whose callee reported its time (float)."""
ATTR_LATENCY_UNKNOWN: Final = "meshlib.latency.unknown"
"""Seconds on the wire of attempts whose callee reported no service time: service and network together, not split (float)."""
ATTR_LATENCY_MESHLIB: Final = "meshlib.latency.meshlib"
"""Seconds in meshlib (and httpx inside the transport) outside the wire and the waits (float)."""
ATTR_LATENCY_WAITS: Final = "meshlib.latency.waits"
"""Seconds waited between attempts (backoff, Retry-After) and for injected fault delays (float)."""
ATTR_LATENCY_PART: Final = "meshlib.latency.part"
"""Which part of the latency split a `meshlib.client.latency.time` point sums: `total`, `service`, `network`, `unknown`, `meshlib` or `waits`."""

BREAKER_STATE_VALUES: Final = {"closed": 0, "half-open": 1, "open": 2}
"""The numeric value `CLIENT_BREAKER_STATE` records for each state."""

DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Histogram boundaries (seconds) the HTTP semantic conventions advise for request durations."""

InstrumentKind = Literal[
    "counter",
    "up_down_counter",
    "histogram",
    "gauge",
    "observable_counter",
    "observable_up_down_counter",
    "observable_gauge",
]


@dataclass(frozen=True, slots=True)
class Instrument:
    """Name, kind, unit and description of one instrument.

    Example:
        ```python
        names.create_instrument(meter, names.CLIENT_RETRIES).add(1, attributes)
        ```
    """

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None


CLIENT_REQUEST_DURATION: Final = Instrument(
    HTTP_CLIENT_REQUEST_DURATION,
    "histogram",
    "s",
    "Duration of HTTP client requests (one per attempt, as the HTTP semantic conventions define).",
    DURATION_BUCKETS,
)
SERVER_REQUEST_DURATION: Final = Instrument(
    HTTP_SERVER_REQUEST_DURATION,
    "histogram",
    "s",
    "Duration of HTTP server requests.",
    DURATION_BUCKETS,
)
CLIENT_RETRIES: Final = Instrument(
    "meshlib.client.retries",
    "counter",
    "{retry}",
    "Attempts made after the first, by destination, endpoint, route and reason.",
)
CLIENT_BUDGET_REFUSALS: Final = Instrument(
    "meshlib.client.budget_refusals",
    "counter",
    "{retry}",
    "Retries refused by the destination's retry budget.",
)
CLIENT_BREAKER_STATE: Final = Instrument(
    "meshlib.client.breaker.state",
    "observable_gauge",
    "1",
    "Circuit breaker state per destination and endpoint: 0 closed, 1 half-open, 2 open.",
)
CLIENT_BREAKER_TRANSITIONS: Final = Instrument(
    "meshlib.client.breaker.transitions",
    "counter",
    "{transition}",
    "Circuit breaker state changes per endpoint, by the state entered.",
)
CLIENT_EJECTED_ENDPOINTS: Final = Instrument(
    "meshlib.client.ejected_endpoints",
    "observable_up_down_counter",
    "{endpoint}",
    "Endpoints currently ejected by outlier detection, per destination.",
)
CLIENT_EJECTIONS: Final = Instrument(
    "meshlib.client.ejections",
    "counter",
    "{ejection}",
    "Outlier ejections, per destination and endpoint.",
)
CLIENT_DEADLINE_EXCEEDED: Final = Instrument(
    "meshlib.client.deadline_exceeded",
    "counter",
    "{call}",
    "Calls that ran out of deadline, per destination and route.",
)
CLIENT_FAULTS_INJECTED: Final = Instrument(
    "meshlib.client.faults_injected",
    "counter",
    "{call}",
    "Calls aborted or delayed by the policy's fault injection, by fault kind.",
)
CLIENT_LATENCY_SERVICE: Final = Instrument(
    "meshlib.client.service.duration",
    "histogram",
    "s",
    "Per sampled call, the callee application's own time (Server-Timing app;dur), per edge caller -> destination.",
    DURATION_BUCKETS,
)
CLIENT_LATENCY_NETWORK: Final = Instrument(
    "meshlib.client.network.duration",
    "histogram",
    "s",
    "Per sampled call, wire time minus the service time the callee reported, per edge.",
    DURATION_BUCKETS,
)
CLIENT_LATENCY_UNKNOWN: Final = Instrument(
    "meshlib.client.unknown.duration",
    "histogram",
    "s",
    "Per sampled call, wire time of attempts whose callee reported no service time (service and network not split), per edge.",
    DURATION_BUCKETS,
)
CLIENT_LATENCY_MESHLIB: Final = Instrument(
    "meshlib.client.meshlib.duration",
    "histogram",
    "s",
    "Per sampled call, time spent in meshlib itself outside the wire and the waits, per edge.",
    DURATION_BUCKETS,
)
CLIENT_LATENCY_TIME: Final = Instrument(
    "meshlib.client.latency.time",
    "observable_counter",
    "s",
    "Per edge caller -> destination, seconds summed over every call, sampled or not, by part "
    "(meshlib.latency.part); read at collection time, so calls pay no metric for it.",
)
CLIENT_LATENCY_CALLS: Final = Instrument(
    "meshlib.client.latency.calls",
    "observable_counter",
    "{call}",
    "Per edge, the calls summed in meshlib.client.latency.time (divide the two for a mean).",
)
SERVER_SHED: Final = Instrument(
    "meshlib.server.shed",
    "counter",
    "{request}",
    "Inbound requests shed with 503 by the rate or concurrency limit, by reason and route.",
)
SERVER_DENIED: Final = Instrument(
    "meshlib.server.denied",
    "counter",
    "{request}",
    "Inbound requests denied with 403 by authz, by caller and rule.",
)
SERVER_REJECTED: Final = Instrument(
    "meshlib.server.rejected",
    "counter",
    "{request}",
    "Inbound requests refused with 400 before the app because their path is not in normal form, by reason.",
)
DISCOVERY_ENDPOINT_SET_CHANGES: Final = Instrument(
    "meshlib.discovery.endpoint_set.changes",
    "counter",
    "{change}",
    "Changes of a service's routable endpoint set.",
)
DISCOVERY_HEALTH_TRANSITIONS: Final = Instrument(
    "meshlib.discovery.health.transitions",
    "counter",
    "{transition}",
    "Endpoints turning healthy or unhealthy under active health checks.",
)
DISCOVERY_DNS_RESOLUTIONS: Final = Instrument(
    "meshlib.discovery.dns.resolutions",
    "counter",
    "{resolution}",
    "DNS resolutions of discovered services by outcome.",
)
DISCOVERY_REGISTRATION_EVENTS: Final = Instrument(
    "meshlib.discovery.registration.events",
    "counter",
    "{event}",
    "Registration lease events of this instance.",
)
CONTROLPLANE_FETCH_FAILURES: Final = Instrument(
    "meshlib.controlplane.fetch_failures",
    "counter",
    "{failure}",
    "Policy fetches from the control plane that failed (unreachable, too slow, too large, garbage, an older version), by outcome; the last good policy stayed in force.",
)
CONTROLPLANE_PUBLISHES_REFUSED: Final = Instrument(
    "meshlib.controlplane.publishes_refused",
    "counter",
    "{publish}",
    "On the control plane, publishes and rollbacks refused, by outcome (invalid, conflict, denied, too_large, unavailable).",
)
POLICY_REVISION: Final = Instrument(
    "meshlib.policy.revision",
    "observable_gauge",
    "1",
    "Always 1; the policy revision in force and its source are attributes (an info metric).",
)
POLICY_RELOAD_FAILURES: Final = Instrument(
    "meshlib.policy.reload_failures",
    "observable_counter",
    "{failure}",
    "Policy documents rejected since start; the last good policy stayed in force.",
)

INSTRUMENTS: Final = (
    CLIENT_REQUEST_DURATION,
    SERVER_REQUEST_DURATION,
    CLIENT_RETRIES,
    CLIENT_BUDGET_REFUSALS,
    CLIENT_BREAKER_STATE,
    CLIENT_BREAKER_TRANSITIONS,
    CLIENT_EJECTED_ENDPOINTS,
    CLIENT_EJECTIONS,
    CLIENT_DEADLINE_EXCEEDED,
    CLIENT_FAULTS_INJECTED,
    CLIENT_LATENCY_SERVICE,
    CLIENT_LATENCY_NETWORK,
    CLIENT_LATENCY_UNKNOWN,
    CLIENT_LATENCY_MESHLIB,
    CLIENT_LATENCY_TIME,
    CLIENT_LATENCY_CALLS,
    SERVER_SHED,
    SERVER_DENIED,
    SERVER_REJECTED,
    DISCOVERY_ENDPOINT_SET_CHANGES,
    DISCOVERY_HEALTH_TRANSITIONS,
    DISCOVERY_DNS_RESOLUTIONS,
    DISCOVERY_REGISTRATION_EVENTS,
    CONTROLPLANE_FETCH_FAILURES,
    CONTROLPLANE_PUBLISHES_REFUSED,
    POLICY_REVISION,
    POLICY_RELOAD_FAILURES,
)
"""Every instrument meshlib creates, for docs and for tests that check the catalogue."""


def error_type(error: BaseException) -> str:
    """The `error.type` of an exception: its fully qualified class name (builtins unqualified).

    One spelling for client and server spans and metrics, as the semantic
    conventions ask: `error_type(httpx.ConnectError("x")) == "httpx.ConnectError"`.
    """
    cls = type(error)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_"):  # httpx._exceptions.ConnectError is httpx.ConnectError to users
            public = ".".join(parts[:index])
            if public and getattr(sys.modules.get(public), cls.__qualname__, None) is cls:
                module = public
            break
    return f"{module}.{cls.__qualname__}"


def create_instrument(meter: Meter, spec: Instrument, callbacks: Any = None) -> Any:
    """Create the synchronous or observable instrument `spec` describes on `meter`.

    `callbacks` is required for observable kinds and refused for the others.
    The result is typed `Any` because its type depends on `spec.kind`.

    Example:
        ```python
        histogram = create_instrument(meter, CLIENT_LATENCY_SERVICE)
        histogram.record(0.012, {ATTR_DESTINATION: "payments"})
        ```
    """
    observable = spec.kind.startswith("observable_")
    if observable != (callbacks is not None):
        need = "needs" if observable else "takes no"
        raise TypeError(f"instrument {spec.name!r} of kind {spec.kind} {need} callbacks")
    if spec.kind == "histogram":
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=spec.buckets,
        )
    factory = getattr(meter, f"create_{spec.kind}")
    if observable:
        return factory(spec.name, callbacks, unit=spec.unit, description=spec.description)
    return factory(spec.name, unit=spec.unit, description=spec.description)
