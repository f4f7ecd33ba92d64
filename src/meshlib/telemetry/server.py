"""Server-side telemetry: one SERVER span per request and `http.server.request.duration`.

Names and attributes follow the stable OpenTelemetry HTTP semantic
conventions (constants from `opentelemetry.semconv`, never typed by hand):
the span is named `"{method} {http.route}"` when the framework knows the
route template, else `"{method}"` (`"HTTP"` for unknown methods); 5xx
responses and exceptions mark it as an error, 4xx do not.

meshlib's own decisions use the names in `meshlib.telemetry.names`:
span attributes and events (only when the span records) and counters a user
can alert on:

* `meshlib.server.denied` {`meshlib.authz.rule`, `meshlib.caller`, `meshlib.shadow`}
  and the span attributes `meshlib.authz.decision` / `meshlib.authz.rule` on every
  decision, allow included;
* `meshlib.server.shed` {`meshlib.shed.reason` (`rate_limit`, `concurrency_limit`,
  `deadline`, `no_policy`), `meshlib.limit` (where in the policy), `meshlib.shadow`};
* `meshlib.server.rejected` {`meshlib.reject.reason`, `meshlib.shadow`}: a path not in
  normal form, refused with 400 (`meshlib.inbound.paths`).

The tracer and meter come from the providers passed in, or the global ones
through OpenTelemetry's proxies, so providers configured after the
middleware was built are honoured:

```python
telemetry = ServerTelemetry(tracer_provider=provider)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    NETWORK_PROTOCOL_VERSION,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_QUERY, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from meshlib.telemetry import names
from meshlib.telemetry.quicktrace import QuickTrace

if TYPE_CHECKING:
    from meshlib.inbound.authz import AuthzDecision
    from meshlib.inbound.core import RequestInfo

__all__ = ["ServerTelemetry", "known_method", "split_host"]

_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


def known_method(method: str) -> str:
    """The semconv method value: the method itself if standard, else `_OTHER`."""
    return method if method in _METHODS else "_OTHER"


_HOSTS: dict[tuple[str | None, str], tuple[str | None, int | None]] = {}


def _server_address(host: str | None, scheme: str) -> tuple[str | None, int | None]:
    # Most requests carry the same few Host values: remember them (bounded).
    key = (host, scheme)
    found = _HOSTS.get(key)
    if found is None:
        found = split_host(host, scheme)
        if len(_HOSTS) >= 256:
            _HOSTS.clear()
        _HOSTS[key] = found
    return found


def split_host(host: str | None, scheme: str) -> tuple[str | None, int | None]:
    """`server.address` and `server.port` from a Host header (`"[::1]:8080"` -> `("::1", 8080)`)."""
    if not host:
        return None, None
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None, None
        name, rest = host[1:end], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if port:
        valid = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535
        return name, int(port) if valid else None
    return name, 443 if scheme == "https" else 80


def _attempt(value: str) -> int:
    """The attempt number a caller's header gives (1 for a first try), or 0 when it is garbage."""
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 4:
        return int(value)
    return 0


class ServerTelemetry:
    """The tracer and instruments of the inbound middleware; one per middleware."""

    __slots__ = ("_denied", "_duration", "_rejected", "_shed", "quick", "tracer")

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        from meshlib import __version__

        if tracer_provider is None:
            self.tracer = trace.get_tracer(names.SCOPE, __version__)
        else:
            self.tracer = tracer_provider.get_tracer(names.SCOPE, __version__)
        if meter_provider is None:
            meter = metrics.get_meter(names.SCOPE, __version__)
        else:
            meter = meter_provider.get_meter(names.SCOPE, __version__)
        self._duration = names.create_instrument(meter, names.SERVER_REQUEST_DURATION)
        self._denied = names.create_instrument(meter, names.SERVER_DENIED)
        self._shed = names.create_instrument(meter, names.SERVER_SHED)
        self._rejected = names.create_instrument(meter, names.SERVER_REJECTED)
        self.quick = QuickTrace(self.tracer)

    def start(self, info: RequestInfo, parent: Context) -> trace.Span:
        """Start the SERVER span of a request, a child of `parent` (the caller's context).

        When one of the SDK's own samplers surely drops it, the span is the
        `NonRecordingSpan` the SDK would have made, built without the sampler
        call and the attribute dict (`meshlib.telemetry.quicktrace`).
        """
        dropped = self.quick.unsampled(parent, as_span=True)
        if dropped is not None and dropped.span is not None:
            return dropped.span
        method = known_method(info.method)
        attributes: dict[str, AttributeValue] = {
            HTTP_REQUEST_METHOD: method,
            URL_PATH: info.path,
            URL_SCHEME: info.scheme,
            NETWORK_PROTOCOL_VERSION: info.http_version,
        }
        if method == "_OTHER":
            attributes[HTTP_REQUEST_METHOD_ORIGINAL] = info.method
        if info.query:
            attributes[URL_QUERY] = info.query
        address, port = _server_address(info.host, info.scheme)
        if address:
            attributes[SERVER_ADDRESS] = address
            if port is not None:
                attributes[SERVER_PORT] = port
        if info.client is not None:
            attributes[CLIENT_ADDRESS] = info.client[0]
            attributes[NETWORK_PEER_ADDRESS] = info.client[0]
            attributes[NETWORK_PEER_PORT] = info.client[1]
        if info.user_agent:
            attributes[USER_AGENT_ORIGINAL] = info.user_agent
        if info.attempt is not None:
            attempt = _attempt(info.attempt)
            if attempt:
                attributes[names.ATTR_ATTEMPT] = attempt
        name = "HTTP" if method == "_OTHER" else method
        return self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def authz(
        self, span: trace.Span, decision: AuthzDecision, identity: str | None, shadow: bool
    ) -> None:
        """Record an authz decision: span attributes always, an event and a count when denied."""
        if span.is_recording():
            span.set_attribute(names.ATTR_AUTHZ_DECISION, "allow" if decision.allowed else "deny")
            span.set_attribute(names.ATTR_DENY_RULE, decision.rule)
            if identity is not None:
                span.set_attribute(names.ATTR_CALLER, identity)
        if decision.allowed:
            return
        attributes: dict[str, AttributeValue] = {
            names.ATTR_DENY_RULE: decision.rule,
            names.ATTR_SHADOW: shadow,
            names.ATTR_CALLER: identity if identity is not None else "",
        }
        if span.is_recording():
            span.add_event(names.EVENT_DENIED, attributes)
        self._denied.add(1, attributes)

    def shed(
        self,
        span: trace.Span,
        reason: str,
        where: str,
        shadow: bool,
        retry_after: float | None = None,
    ) -> None:
        """Record a request shed (or, in shadow mode, one that would have been)."""
        attributes: dict[str, AttributeValue] = {
            names.ATTR_SHED_REASON: reason,
            names.ATTR_LIMIT: where,
            names.ATTR_SHADOW: shadow,
        }
        if span.is_recording():
            event = dict(attributes)
            if retry_after is not None:
                event[names.ATTR_RETRY_AFTER] = retry_after
            span.add_event(names.EVENT_SHED, event)
        self._shed.add(1, attributes)

    def rejected(self, span: trace.Span, reason: str, shadow: bool) -> None:
        """Record a request refused with 400 before the app (or, `shadow`, one that would have been)."""
        attributes: dict[str, AttributeValue] = {
            names.ATTR_REJECT_REASON: reason,
            names.ATTR_SHADOW: shadow,
        }
        if span.is_recording():
            span.add_event(names.EVENT_REJECTED, attributes)
        self._rejected.add(1, attributes)

    def finish(
        self,
        span: trace.Span,
        info: RequestInfo,
        status: int,
        route: str | None,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        """End the span and record `http.server.request.duration`."""
        method = known_method(info.method)
        attributes: dict[str, AttributeValue] = {
            HTTP_REQUEST_METHOD: method,
            URL_SCHEME: info.scheme,
            NETWORK_PROTOCOL_VERSION: info.http_version,
        }
        if status:
            attributes[HTTP_RESPONSE_STATUS_CODE] = status
        if route:
            attributes[HTTP_ROUTE] = route
        if error is not None:
            attributes[ERROR_TYPE] = names.error_type(error)
        elif status >= 500:
            attributes[ERROR_TYPE] = str(status)
        if span.is_recording():
            if route:
                span.update_name(f"{'HTTP' if method == '_OTHER' else method} {route}")
            span.set_attributes(attributes)
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, names.error_type(error)))
            elif status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        self._duration.record(seconds, attributes)
        span.end()
