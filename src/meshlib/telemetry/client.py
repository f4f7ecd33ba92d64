"""Client-side telemetry: a logical span per call, a CLIENT span per attempt, metrics, and the latency split.

Per the OpenTelemetry HTTP semantic conventions ("HTTP request retries and
redirects"), every attempt is its own CLIENT span carrying
`http.request.resend_count` (absent on the first, 1, 2, ... on resends),
children of one INTERNAL span named `meshlib.call <METHOD>` that covers the
whole call, retries and backoff included. Resilience decisions are events on
the call span (names in `meshlib.telemetry.names`). Spans end when the
response body is done, streamed bodies included. Trace context is injected
into every attempt, each with its own parent span id, sampled or not.

The latency split (`meshlib.telemetry.latency`) is measured per attempt
and per call whenever the call is sampled, a meter provider is in place,
a control-plane reporter runs, or the request asks for it
(`extensions={"meshlib.latency": True}`). It goes on the response
(`response.extensions["meshlib.latency"]` and each attempt's `split`),
on the call and attempt spans of a sampled call, into the split histograms
(sampled calls), and into the process-wide per-edge sums
(`edge_latency`) that the all-calls counters read.

The unsampled hot path with an SDK installed is kept to what it must do:
the sampling decision and `traceparent` without building a span when the
sampler and propagator are the SDK's standard ones
(`meshlib.telemetry.quicktrace`), one `http.client.request.duration`
point per attempt with an attribute dict reused per (endpoint, method,
outcome), no httpcore `trace` hook, a few monotonic clock reads and float
additions for the split. When no SDK provider is configured and no trace context came
in, a call costs a cached provider check and one context look-up:

```python
telemetry = ClientTelemetry(tracer_provider=provider, meter_provider=meter_provider)
```
"""

from __future__ import annotations

import random
from typing import Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL, URL_SCHEME
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from meshlib.clock import Clock
from meshlib.headers import set_header
from meshlib.telemetry import latency, names
from meshlib.telemetry.bodies import AsyncBody, SyncBody
from meshlib.telemetry.latency import (
    ATTEMPTS_EXTENSION,
    LATENCY_EXTENSION,
    AttemptMarks,
    EdgeLatency,
    LatencySplit,
    edge_latency,
    parse_service_time,
)
from meshlib.telemetry.providers import ProviderGate
from meshlib.telemetry.quicktrace import QuickTrace

__all__ = ["CallTelemetry", "ClientTelemetry"]

_SUPPRESS_KEY: str | None
try:  # the key opentelemetry-instrumentation-httpx checks to stay out of our way
    from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY as _SUPPRESS_KEY
except ImportError:  # pragma: no cover - older opentelemetry-api
    _SUPPRESS_KEY = None


def _httpx_instrumented() -> bool:
    """Whether opentelemetry-instrumentation-httpx patched httpx's transports (wrapt leaves __wrapped__)."""
    return hasattr(httpx.HTTPTransport.handle_request, "__wrapped__") or hasattr(
        httpx.AsyncHTTPTransport.handle_async_request, "__wrapped__"
    )


_ATTRIBUTE_CACHE_SIZE = 4096


class ClientTelemetry:
    """Tracer and instruments for one mesh transport, taken from the given or global providers."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        caller: str | None = None,
        endpoint_attribute: bool = False,
    ) -> None:
        from meshlib import __version__
        from meshlib.telemetry.state_metrics import observe_mesh_state

        self.tracer = trace.get_tracer(names.SCOPE, __version__, tracer_provider=tracer_provider)
        self.quick = QuickTrace(self.tracer)
        meter = metrics.get_meter(names.SCOPE, __version__, meter_provider=meter_provider)
        self.metrics_on = ProviderGate(meter_provider, metrics.get_meter_provider)
        """Whether a real meter provider is in place (so the latency split is worth measuring)."""
        self.tracing_on = ProviderGate(tracer_provider, trace.get_tracer_provider)
        """Whether a real tracer provider is in place."""
        self.caller = caller
        self.endpoint_attribute = endpoint_attribute
        """Whether `http.client.request.duration` and retries carry `meshlib.endpoint` (off: per-pod cardinality)."""
        self._duration_attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._edges: dict[str, EdgeLatency] = {}
        make = names.create_instrument
        self.duration = make(meter, names.CLIENT_REQUEST_DURATION)
        self.retries = make(meter, names.CLIENT_RETRIES)
        self.budget_refusals = make(meter, names.CLIENT_BUDGET_REFUSALS)
        self.breaker_transitions = make(meter, names.CLIENT_BREAKER_TRANSITIONS)
        self.ejections = make(meter, names.CLIENT_EJECTIONS)
        self.deadline_exceeded = make(meter, names.CLIENT_DEADLINE_EXCEEDED)
        self.faults = make(meter, names.CLIENT_FAULTS_INJECTED)
        self.service_time = make(meter, names.CLIENT_LATENCY_SERVICE)
        self.network_time = make(meter, names.CLIENT_LATENCY_NETWORK)
        self.meshlib_time = make(meter, names.CLIENT_LATENCY_MESHLIB)
        self.unknown_time = make(meter, names.CLIENT_LATENCY_UNKNOWN)
        # The all-calls split counters exist whenever a meter provider is (or later is) in place.
        observe_mesh_state(meter_provider=meter_provider)

    def edge(self, destination: str) -> EdgeLatency:
        """The process-wide split record of this caller's edge to `destination`."""
        found = self._edges.get(destination)
        if found is None:
            if len(self._edges) >= 1024:
                self._edges.clear()
            found = self._edges[destination] = edge_latency(self.caller or "", destination)
        return found

    def duration_attributes(self, call: CallTelemetry, outcome: int | str | None) -> dict[str, Any]:
        """The `http.client.request.duration` attributes of an attempt, built once per key.

        `server.address`/`server.port` are the URL the caller wrote (the
        logical destination, `payments:80`), not the endpoint picked, and
        `meshlib.destination` names the service: one series per
        destination, not per pod. `meshlib.endpoint` is added only when
        `endpoint_attribute` is on. `outcome` is the status code, an
        `error.type` value, or None. The dict is shared: the SDK copies
        what it keeps, nobody may change it.
        """
        endpoint = call.endpoint if self.endpoint_attribute else None
        key = (call.destination, call.host, call.port, call.method, outcome, endpoint)
        attributes = self._duration_attributes.get(key)
        if attributes is not None:
            return attributes
        attributes = {
            HTTP_REQUEST_METHOD: call.method,
            SERVER_ADDRESS: call.host,
            SERVER_PORT: call.port,
            names.ATTR_DESTINATION: call.destination,
        }
        if endpoint is not None:
            attributes[names.ATTR_ENDPOINT] = endpoint
        if isinstance(outcome, int):
            attributes[HTTP_RESPONSE_STATUS_CODE] = outcome
            if outcome >= 400:
                attributes[ERROR_TYPE] = str(outcome)
        elif outcome is not None:
            attributes[ERROR_TYPE] = outcome
        if len(self._duration_attributes) >= _ATTRIBUTE_CACHE_SIZE:
            self._duration_attributes.clear()  # endpoints churned a lot: start over
        self._duration_attributes[key] = attributes
        return attributes

    def start_call(
        self,
        request: httpx.Request,
        destination: str,
        route: str | None,
        start: float,
        clock: Clock,
        is_async: bool,
    ) -> CallTelemetry | None:
        """Begin a call's telemetry; None when nothing records, measures or propagates.

        `request` still has the URL the caller wrote (before an endpoint is picked).
        """
        traceparent: str | None = None
        tracestate: str | None = None
        if self.tracing_on(start):
            quick = self.quick.unsampled()
            if quick is None:
                span: Span = self.tracer.start_span(
                    f"{names.SPAN_CALL_PREFIX} {request.method}", kind=SpanKind.INTERNAL
                )
                recording = span.is_recording()
            else:
                traceparent, tracestate = quick.traceparent, quick.tracestate
                span = quick.span or trace.INVALID_SPAN
                recording = False
        else:
            # No SDK: skip the no-op span, but still pass on a context that came in.
            parent = trace.get_current_span().get_span_context()
            if not parent.is_valid and not (
                self.metrics_on(start)
                or latency.measure_all
                or LATENCY_EXTENSION in request.extensions
            ):
                return None
            span = trace.NonRecordingSpan(parent)
            recording = False
        measure = (
            recording
            or self.metrics_on(start)
            or latency.measure_all
            or LATENCY_EXTENSION in request.extensions
        )
        propagates = traceparent is not None or span.get_span_context().is_valid
        if not (measure or propagates):
            return None
        call = CallTelemetry(self, span, recording, measure, destination, route, start, clock)
        call.is_async = is_async
        url = request.url
        call.method = request.method
        call.host = url.host
        call.port = url.port or (443 if url.scheme == "https" else 80)
        call.traceparent = traceparent
        call.tracestate = tracestate
        call.propagates = traceparent is None and span.get_span_context().is_valid
        if recording:
            span.set_attributes(
                {
                    HTTP_REQUEST_METHOD: request.method,
                    names.ATTR_DESTINATION: destination,
                    names.ATTR_ROUTE: route or "default",
                }
            )
            if self.caller:
                span.set_attribute(names.ATTR_CALLER, self.caller)
        return call


class CallTelemetry:
    """One call's spans and timings (only built when something records, measures or propagates).

    `recording`: the call span is sampled; attempts get CLIENT spans and
    the httpcore `trace` hook marks each attempt's wire window. `measure`:
    the latency split is computed (see the module docstring). The flow tells
    it where each attempt and each wait begins and ends; the attempts and
    waits tile the call, so the parts add up to its total.
    """

    __slots__ = (
        "_attempt",
        "_attempt_begin",
        "_body_from",
        "_closed",
        "_marks",
        "_open",
        "_service",
        "_suppress_token",
        "_wait_from",
        "_wire",
        "_wire_from",
        "clock",
        "destination",
        "endpoint",
        "host",
        "is_async",
        "measure",
        "method",
        "port",
        "propagates",
        "recording",
        "response",
        "route",
        "span",
        "start",
        "tel",
        "traceparent",
        "tracestate",
        "waits",
    )

    def __init__(
        self,
        tel: ClientTelemetry,
        span: Span,
        recording: bool,
        measure: bool,
        destination: str,
        route: str | None,
        start: float,
        clock: Clock,
    ) -> None:
        self.tel = tel
        self.span = span
        self.recording = recording
        self.measure = measure
        self.destination = destination
        self.route = route
        self.start = start
        self.clock = clock
        self.is_async = False
        self.method = ""
        self.host = ""
        self.port = 0
        self.endpoint = ""
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self.propagates = False
        self.waits = 0.0
        self.response: httpx.Response | None = None
        self._attempt: Span | None = None
        self._attempt_begin = start
        self._open = False
        self._wire_from = 0.0
        self._wire = 0.0
        self._service: float | None = None
        self._body_from = 0.0
        self._wait_from = 0.0
        self._closed: list[LatencySplit] = []
        self._marks: AttemptMarks | None = None
        self._suppress_token: object | None = None

    # -- attempts ----------------------------------------------------------------------------

    def before_attempt(self, request: httpx.Request, endpoint: str, resend_count: int) -> None:
        """Start the attempt's CLIENT span and pass trace context on (a new parent id per attempt)."""
        self.endpoint = endpoint
        self._open = True
        if _SUPPRESS_KEY is not None and _httpx_instrumented():
            # meshlib owns this attempt's trace context, sampled or not: the httpx
            # instrumentation would add a CLIENT span (a new root one when ours is not
            # sampled) and overwrite the traceparent we send.
            self._suppress_token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        if self.recording:
            url = request.url
            attributes: dict[str, Any] = {
                HTTP_REQUEST_METHOD: request.method,
                SERVER_ADDRESS: url.host,
                SERVER_PORT: url.port or (443 if url.scheme == "https" else 80),
                URL_SCHEME: url.scheme,
                URL_FULL: str(url.copy_with(username=None, password=None))
                if url.userinfo
                else str(url),
                names.ATTR_ENDPOINT: endpoint,
                names.ATTR_DESTINATION: self.destination,
            }
            if resend_count:  # recommended only when the request is a resend
                attributes[HTTP_REQUEST_RESEND_COUNT] = resend_count
            span = self.tel.tracer.start_span(
                request.method,
                context=trace.set_span_in_context(self.span),
                kind=SpanKind.CLIENT,
                attributes=attributes,
            )
            self._attempt = span
            propagate.inject(request.headers, context=trace.set_span_in_context(span))
            if "trace" not in request.extensions:
                marks = self._marks = AttemptMarks(self.clock)
                request.extensions["trace"] = marks.async_hook if self.is_async else marks.sync_hook
        elif self.traceparent is not None:
            traceparent = self.traceparent
            if resend_count:  # 00-<trace id>-<parent id>-<flags>: a new parent id per attempt
                traceparent = f"{traceparent[:36]}{_new_span_id():016x}{traceparent[52:]}"
            headers = request.headers
            set_header(headers, b"traceparent", traceparent)
            if self.tracestate:
                set_header(headers, b"tracestate", self.tracestate)
        elif self.propagates:
            span = self.span
            if resend_count:
                parent = span.get_span_context()
                span = trace.NonRecordingSpan(
                    SpanContext(
                        parent.trace_id,
                        _new_span_id(),
                        is_remote=False,
                        trace_flags=parent.trace_flags,
                        trace_state=parent.trace_state,
                    )
                )
            propagate.inject(request.headers, context=trace.set_span_in_context(span))
        self._wire_from = self.clock.monotonic()

    def after_attempt(
        self, request: httpx.Request, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        """The attempt's response headers (or error) are in: note its wire time, record its duration."""
        now = self.clock.monotonic()
        wall = now - self._wire_from
        if self._suppress_token is not None:
            otel_context.detach(self._suppress_token)  # type: ignore[arg-type]
            self._suppress_token = None
        marks = self._marks
        if marks is not None:
            self._marks = None
            request.extensions.pop("trace", None)
            if marks.first and marks.done:
                wall = marks.done - marks.first
        self._wire = wall
        if response is not None:
            outcome: int | str | None = response.status_code
            if self.measure:
                self._service = parse_service_time(response.headers.raw)
        elif error is not None:
            outcome = names.error_type(error)
            self._service = None
        else:
            outcome = None
        self.tel.duration.record(now - self._wire_from, self.tel.duration_attributes(self, outcome))
        span = self._attempt
        if span is not None:
            if response is not None:
                span.set_attribute(HTTP_RESPONSE_STATUS_CODE, response.status_code)
                if response.status_code >= 400:
                    span.set_attribute(ERROR_TYPE, str(response.status_code))
                    span.set_status(Status(StatusCode.ERROR))
            elif error is not None:
                span.set_attribute(ERROR_TYPE, str(outcome))
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))

    def _close_attempt(self, now: float, body: float = 0.0) -> None:
        """The open attempt ends at `now`: split it, and end its span with the split on it."""
        if self._suppress_token is not None:
            otel_context.detach(self._suppress_token)  # type: ignore[arg-type]
            self._suppress_token = None
        if not self._open:
            return
        self._open = False
        span = self._attempt
        self._attempt = None
        if not self.measure:
            if span is not None:
                span.end()
            return
        wire = self._wire + body
        duration = now - self._attempt_begin
        service = self._service
        if service is None:
            split = LatencySplit(duration, None, None, max(0.0, duration - wire), 0.0, wire)
        else:
            service = min(service, wire)
            split = LatencySplit(duration, service, wire - service, max(0.0, duration - wire))
        self._closed.append(split)
        if span is not None:
            span.set_attributes(_span_values(split))
            span.end()

    def begin_wait(self, discard: httpx.Response | None = None) -> None:
        """A wait starts (backoff, Retry-After, injected delay): the attempt before it, if any, ends.

        `discard` is the retried attempt's response, which the driver reads
        and closes before it sleeps: that read is the attempt's wire time,
        and the wait starts when it is done.
        """
        now = self._wait_from = self.clock.monotonic()
        if discard is None or not self.measure:
            self._close_attempt(now)
            return
        if self.is_async:
            discard.stream = AsyncBody(discard.stream, self._discarded)  # type: ignore[arg-type]
        else:
            discard.stream = SyncBody(discard.stream, self._discarded)  # type: ignore[arg-type]

    def _discarded(self) -> None:
        now = self.clock.monotonic()
        self._close_attempt(now, now - self._wait_from)
        self._wait_from = now

    def end_wait(self) -> None:
        """The wait is over; the next attempt begins now."""
        now = self.clock.monotonic()
        if self._open:  # the discarded body was never closed: the wait began with the decision
            self._close_attempt(self._wait_from)
        self.waits += now - self._wait_from
        self._attempt_begin = now

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """Add a resilience event to the call span (no-op unless recording)."""
        if self.recording:
            self.span.add_event(name, attributes)

    # -- the end of the call -----------------------------------------------------------------

    def finish_response(self, response: httpx.Response) -> None:
        """The final response's headers are in; the spans end (and the split closes) with its body."""
        if not self.measure:
            return  # only trace context was passed on: nothing waits for the body
        if self.recording:
            self.span.set_attribute(HTTP_RESPONSE_STATUS_CODE, response.status_code)
            if response.status_code >= 400:
                self.span.set_attribute(ERROR_TYPE, str(response.status_code))
                self.span.set_status(Status(StatusCode.ERROR))
        self.response = response
        self._body_from = self.clock.monotonic()
        stream = response.stream
        if self.is_async:
            response.stream = AsyncBody(stream, self.finish_body)  # type: ignore[arg-type]
        else:
            response.stream = SyncBody(stream, self.finish_body)  # type: ignore[arg-type]

    def finish_error(self, error: BaseException) -> None:
        """The call failed with `error`: close its split and end its spans now."""
        if self.recording:
            self.span.set_attribute(ERROR_TYPE, names.error_type(error))
            self.span.set_status(Status(StatusCode.ERROR, str(error)))
        split = self._finish(self.clock.monotonic(), 0.0)
        if split is not None:
            attempts = getattr(error, "__meshlib_attempts__", None)
            if attempts is not None:
                error.__meshlib_attempts__ = _with_splits(attempts, split)  # type: ignore[attr-defined]
            error.__meshlib_latency__ = split  # type: ignore[attr-defined]

    def finish_cancelled(self) -> None:
        """The call was cancelled (task cancellation, KeyboardInterrupt): end its spans."""
        if self.recording:
            self.span.set_status(Status(StatusCode.ERROR, "cancelled"))
        self.measure = False  # a cancelled call's time says nothing about the edge
        self._close_attempt(self.clock.monotonic())
        self.span.end()

    def finish_body(self) -> None:
        """The body is done (read or closed): close the split, put it on the response, end the spans."""
        now = self.clock.monotonic()
        split = self._finish(now, now - self._body_from if self._body_from else 0.0)
        response = self.response
        if split is not None and response is not None:
            response.extensions[LATENCY_EXTENSION] = split
            attempts = response.extensions.get(ATTEMPTS_EXTENSION)
            if attempts:
                response.extensions[ATTEMPTS_EXTENSION] = _with_splits(attempts, split)
        self.response = None

    def _finish(self, now: float, body: float) -> LatencySplit | None:
        """Close the last attempt (its wire time includes `body`), sum the call, end the call span."""
        self._close_attempt(now, body)
        split: LatencySplit | None = None
        if self.measure:
            split = _call_split(now - self.start, self.waits, tuple(self._closed))
            self.tel.edge(self.destination).add(split)
            if self.recording:
                self._record_histograms(split)
                self.span.set_attributes(_span_values(split))
        self.span.end()
        return split

    def _record_histograms(self, split: LatencySplit) -> None:
        tel = self.tel
        attributes = {names.ATTR_DESTINATION: self.destination}
        if tel.caller:
            attributes[names.ATTR_CALLER] = tel.caller
        if split.service is not None:
            tel.service_time.record(split.service, attributes)
        if split.network is not None:
            tel.network_time.record(split.network, attributes)
        if split.unknown:
            tel.unknown_time.record(split.unknown, attributes)
        tel.meshlib_time.record(split.meshlib, attributes)


def _new_span_id() -> int:
    # What the SDK's RandomIdGenerator does; 0 is the invalid span id.
    return random.getrandbits(64) or 1


def _call_split(total: float, waits: float, attempts: tuple[LatencySplit, ...]) -> LatencySplit:
    """The call's split: service, network and unknown summed over attempts; meshlib is the rest."""
    service: float | None = None
    network: float | None = None
    unknown = 0.0
    for attempt in attempts:
        if attempt.service is not None:
            service = (service or 0.0) + attempt.service
            network = (network or 0.0) + (attempt.network or 0.0)
        unknown += attempt.unknown
    wire = (service or 0.0) + (network or 0.0) + unknown
    meshlib = max(0.0, total - wire - waits)
    return LatencySplit(total, service, network, meshlib, waits, unknown, attempts)


def _span_values(split: LatencySplit) -> dict[str, float]:
    values = {
        names.ATTR_LATENCY_TOTAL: split.total,
        names.ATTR_LATENCY_MESHLIB: split.meshlib,
    }
    if split.service is not None:
        values[names.ATTR_LATENCY_SERVICE] = split.service
        values[names.ATTR_LATENCY_NETWORK] = split.network or 0.0
    if split.unknown:
        values[names.ATTR_LATENCY_UNKNOWN] = split.unknown
    if split.waits:
        values[names.ATTR_LATENCY_WAITS] = split.waits
    return values


def _with_splits(attempts: tuple[Any, ...], split: LatencySplit) -> tuple[Any, ...]:
    """The attempt history with each attempt's split filled in."""
    splits = split.attempts
    if len(splits) != len(attempts):
        return attempts
    # Built as tuple.__new__ does, without _replace's field-by-field keyword pass (once per call).
    return tuple(
        tuple.__new__(type(a), (*a[:-1], s)) for a, s in zip(attempts, splits, strict=True)
    )
