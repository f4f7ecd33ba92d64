"""Client-side telemetry: a logical span per call, a CLIENT span per attempt, metrics, and the latency split.

Per the OpenTelemetry HTTP semantic conventions ("HTTP request retries and
redirects"), every attempt is its own CLIENT span carrying
``http.request.resend_count`` (0 for the first), children of one INTERNAL
span named ``meshlib.call <METHOD>`` that covers the whole call, retries and
backoff included. Resilience decisions are events on the call span (names in
:mod:`meshlib.telemetry.names`). Spans end when the response body is done,
streamed bodies included. W3C trace context is injected into every attempt.

The latency split (:mod:`meshlib.telemetry.latency`) of a *sampled* call is
set on its call span as ``meshlib.latency.*`` attributes and recorded per
edge in the split histograms. Every call, sampled or not, adds its split to
its destination's :class:`~meshlib.telemetry.latency.SplitTotals`, which
observable instruments read at collection time.

The unsampled hot path with an SDK installed is kept to what it must do:
the sampling decision and ``traceparent`` without building a span when the
sampler and propagator are the SDK's standard ones
(:mod:`meshlib.telemetry.quicktrace`), one ``http.client.request.duration``
point per attempt with an attribute dict reused per (endpoint, method,
outcome), no httpcore ``trace`` hook, and a few float additions for the
split sums. When no SDK provider is configured and no trace context came
in, a call costs a cached provider check and one context look-up::

    telemetry = ClientTelemetry(tracer_provider=provider, meter_provider=meter_provider)
"""

from __future__ import annotations

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
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from meshlib.clock import Clock
from meshlib.telemetry import names
from meshlib.telemetry.bodies import AsyncBody, SyncBody, server_timing
from meshlib.telemetry.latency import (
    AttemptMarks,
    LatencySplit,
    SplitTotals,
    parse_server_timing,
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
    ) -> None:
        from meshlib import __version__

        self.tracer = trace.get_tracer(names.SCOPE, __version__, tracer_provider=tracer_provider)
        self.quick = QuickTrace(self.tracer)
        meter = metrics.get_meter(names.SCOPE, __version__, meter_provider=meter_provider)
        self.metrics_on = ProviderGate(meter_provider, metrics.get_meter_provider)
        """Whether a real meter provider is in place (so the latency split is worth measuring)."""
        self.tracing_on = ProviderGate(tracer_provider, trace.get_tracer_provider)
        """Whether a real tracer provider is in place."""
        self.caller = caller
        self._duration_attributes: dict[tuple[str, str, int | str | None], dict[str, Any]] = {}
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

    def duration_attributes(
        self, request: httpx.Request, endpoint: str, outcome: int | str | None
    ) -> dict[str, Any]:
        """The ``http.client.request.duration`` attributes of an attempt, built once per key.

        ``outcome`` is the status code, an exception's qualified name, or None.
        The dict is shared: the SDK copies what it keeps, nobody may change it.
        """
        key = (endpoint, request.method, outcome)
        attributes = self._duration_attributes.get(key)
        if attributes is not None:
            return attributes
        url = request.url
        attributes = {
            HTTP_REQUEST_METHOD: request.method,
            SERVER_ADDRESS: url.host,
            SERVER_PORT: url.port or (443 if url.scheme == "https" else 80),
        }
        if isinstance(outcome, int):
            attributes[HTTP_RESPONSE_STATUS_CODE] = outcome
            if outcome >= 500:
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
        totals: SplitTotals | None = None,
    ) -> CallTelemetry | None:
        """Begin a call's telemetry; None when nothing records and there is no context to pass on.

        ``totals`` receives the call's latency split while a meter provider is in place.
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
            if not parent.is_valid and not self.metrics_on(start):
                return None
            span = trace.NonRecordingSpan(parent)
            recording = False
        measure = totals is not None and self.metrics_on(start)
        propagates = traceparent is not None or span.get_span_context().is_valid
        if not (recording or measure or propagates):
            return None
        call = CallTelemetry(self, span, recording, measure, destination, route, start, clock)
        call.is_async = is_async
        call.totals = totals
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

    ``recording``: the call span is sampled; attempts get CLIENT spans, the
    httpcore ``trace`` hook marks the wire window, and the split goes on the
    span and into the split histograms. ``measure``: a meter provider is in
    place; the split (wire window = each attempt's transport call) is added
    to the destination's :class:`~meshlib.telemetry.latency.SplitTotals`.
    """

    __slots__ = (
        "_attempt",
        "_attempt_start",
        "_endpoint",
        "_headers_at",
        "_marks",
        "_suppress_token",
        "attempt_time",
        "attempt_wall",
        "clock",
        "destination",
        "is_async",
        "measure",
        "propagates",
        "recording",
        "route",
        "service",
        "span",
        "start",
        "tel",
        "totals",
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
        self.totals: SplitTotals | None = None
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self.propagates = False
        self.attempt_time = 0.0
        self.attempt_wall = 0.0
        self.waits = 0.0
        self.service: float | None = None
        self._attempt: Span | None = None
        self._attempt_start = 0.0
        self._endpoint = ""
        self._headers_at = 0.0
        self._marks: AttemptMarks | None = None
        self._suppress_token: object | None = None

    # -- attempts ----------------------------------------------------------------------------

    def before_attempt(self, request: httpx.Request, endpoint: str, resend_count: int) -> None:
        """Start the attempt's CLIENT span, pass trace context on, hook httpx's trace events."""
        self._endpoint = endpoint
        if _SUPPRESS_KEY is not None and _httpx_instrumented():
            # meshlib owns this attempt's trace context, sampled or not: the httpx
            # instrumentation would add a CLIENT span (a new root one when ours is not
            # sampled) and overwrite the traceparent we send.
            self._suppress_token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        if self.recording:
            url = request.url
            span = self.tel.tracer.start_span(
                request.method,
                context=trace.set_span_in_context(self.span),
                kind=SpanKind.CLIENT,
                attributes={
                    HTTP_REQUEST_METHOD: request.method,
                    SERVER_ADDRESS: url.host,
                    SERVER_PORT: url.port or (443 if url.scheme == "https" else 80),
                    URL_SCHEME: url.scheme,
                    URL_FULL: str(url.copy_with(username=None, password=None))
                    if url.userinfo
                    else str(url),
                    HTTP_REQUEST_RESEND_COUNT: resend_count,
                    names.ATTR_ENDPOINT: endpoint,
                    names.ATTR_DESTINATION: self.destination,
                },
            )
            self._attempt = span
            propagate.inject(request.headers, context=trace.set_span_in_context(span))
            if "trace" not in request.extensions:
                marks = self._marks = AttemptMarks(self.clock)
                request.extensions["trace"] = marks.async_hook if self.is_async else marks.sync_hook
        elif self.traceparent is not None:
            headers = request.headers
            headers["traceparent"] = self.traceparent
            if self.tracestate:
                headers["tracestate"] = self.tracestate
        elif self.propagates:
            propagate.inject(request.headers, context=trace.set_span_in_context(self.span))
        self._attempt_start = self.clock.monotonic()

    def after_attempt(
        self, request: httpx.Request, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        """Close the attempt's window; record its duration metric and outcome attributes."""
        now = self.clock.monotonic()
        wall = now - self._attempt_start
        self.attempt_wall += wall
        marks = self._marks
        if marks is not None:
            if self._suppress_token is not None:
                otel_context.detach(self._suppress_token)  # type: ignore[arg-type]
                self._suppress_token = None
            self.attempt_time += marks.done - marks.first if marks.first and marks.done else wall
            self._marks = None
            request.extensions.pop("trace", None)
        else:
            if self._suppress_token is not None:
                otel_context.detach(self._suppress_token)  # type: ignore[arg-type]
                self._suppress_token = None
            self.attempt_time += wall
        self._headers_at = now
        if response is not None:
            outcome: int | str | None = response.status_code
        elif error is not None:
            outcome = type(error).__qualname__
        else:
            outcome = None
        self.tel.duration.record(
            wall, self.tel.duration_attributes(request, self._endpoint, outcome)
        )
        span = self._attempt
        if span is not None:
            if response is not None:
                span.set_attribute(HTTP_RESPONSE_STATUS_CODE, response.status_code)
                if response.status_code >= 400:
                    span.set_attribute(ERROR_TYPE, str(response.status_code))
                    span.set_status(Status(StatusCode.ERROR))
            elif error is not None:
                span.set_attribute(ERROR_TYPE, type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))

    def discard_attempt(self) -> None:
        """End the span of an attempt whose outcome is thrown away (it is being retried)."""
        if self._suppress_token is not None:
            otel_context.detach(self._suppress_token)  # type: ignore[arg-type]
            self._suppress_token = None
        if self._attempt is not None:
            self._attempt.end()
            self._attempt = None

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """Add a resilience event to the call span (no-op unless recording)."""
        if self.recording:
            self.span.add_event(name, attributes)

    # -- the end of the call -----------------------------------------------------------------

    def finish_response(self, response: httpx.Response) -> None:
        """The final response's headers are in; the spans end (and the split closes) with its body."""
        if not (self.recording or self.measure):
            return  # only trace context was passed on: nothing waits for the body
        self.service = parse_server_timing(server_timing(response))
        if self.recording:
            self.span.set_attribute(HTTP_RESPONSE_STATUS_CODE, response.status_code)
            if response.status_code >= 400:
                self.span.set_status(Status(StatusCode.ERROR))
        stream = response.stream
        if self.is_async:
            response.stream = AsyncBody(stream, self.finish_body)  # type: ignore[arg-type]
        else:
            response.stream = SyncBody(stream, self.finish_body)  # type: ignore[arg-type]

    def finish_error(self, error: BaseException) -> None:
        """The call failed with ``error``: end its spans now."""
        if self.recording:
            self.span.set_attribute(ERROR_TYPE, type(error).__qualname__)
            self.span.set_status(Status(StatusCode.ERROR, str(error)))
        self.discard_attempt()
        self.span.end()

    def finish_cancelled(self) -> None:
        """The call was cancelled (task cancellation, KeyboardInterrupt): end its spans."""
        if self.recording:
            self.span.set_status(Status(StatusCode.ERROR, "cancelled"))
        self.discard_attempt()
        self.span.end()

    def finish_body(self) -> None:
        """The body is done (read or closed): compute the split, end the spans."""
        now = self.clock.monotonic()
        if self.measure and self.totals is not None:
            self.totals.add(self._split(now, self.attempt_wall))
        if self.recording:
            split = self._split(now, self.attempt_time)
            attributes = {names.ATTR_DESTINATION: self.destination}
            if self.tel.caller:
                attributes[names.ATTR_CALLER] = self.tel.caller
            if split.service is not None:
                self.tel.service_time.record(split.service, attributes)
            self.tel.network_time.record(split.network, attributes)
            self.tel.meshlib_time.record(split.meshlib, attributes)
            values = {
                names.ATTR_LATENCY_TOTAL: split.total,
                names.ATTR_LATENCY_NETWORK: split.network,
                names.ATTR_LATENCY_MESHLIB: split.meshlib,
            }
            if split.service is not None:
                values[names.ATTR_LATENCY_SERVICE] = split.service
            self.span.set_attributes(values)
            self.discard_attempt()
            self.span.end()

    def latency(self, now: float) -> LatencySplit | None:
        """The split as of ``now`` (body done), as the span shows it; None when not measured."""
        if not (self.recording or self.measure):
            return None
        return self._split(now, self.attempt_time)

    def _split(self, now: float, attempts: float) -> LatencySplit:
        total = now - self.start
        body = now - self._headers_at if self._headers_at else 0.0
        wire = attempts + body
        service = self.service
        network = max(0.0, wire - (service or 0.0))
        meshlib = max(0.0, total - wire - self.waits)
        return LatencySplit(total, service, network, meshlib, self.waits)
