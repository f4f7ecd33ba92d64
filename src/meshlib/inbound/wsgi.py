"""MeshWSGIMiddleware: the native WSGI driver of the inbound core (Flask, any WSGI app).

The same `meshlib.inbound.core` as the ASGI middleware, driven through
PEP 3333: `start_response` is wrapped to learn the status and add
`Server-Timing`, and the response body is wrapped so the request ends (span,
duration, concurrency slot) when the server closes it:

```python
app = Flask(__name__)
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, service_name="payments")
```

The caller's certificate is read from `environ["SSL_CLIENT_CERT"]` (PEM),
which werkzeug's server sets from the TLS socket; under gunicorn,
`meshlib.serve` bridges it. Request headers arrive as `HTTP_*` keys, so a
header cannot pose as it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from meshlib.inbound.config import MiddlewareBase
from meshlib.inbound.core import Exchange, RequestInfo
from meshlib.inbound.health import MeshResponse
from meshlib.inbound.tracecontext import EnvironHeaders

__all__ = ["MeshWSGIMiddleware", "WSGIApp"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_State = list[Any]  # [status code (0: not started), route template or None]


_HEADERS = EnvironHeaders()


def request_info(environ: Environ) -> RequestInfo:
    """A `RequestInfo` from a WSGI environ.

    Servers join repeated header fields with commas (werkzeug does), so a
    duplicated `traceparent` arrives as one invalid value and starts a new
    trace, as the W3C recommendation asks.
    """
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not path.isascii():  # PEP 3333 carries the raw path bytes as latin-1
        with contextlib.suppress(UnicodeError):
            path = path.encode("latin-1").decode("utf-8")
    info = RequestInfo(
        environ["REQUEST_METHOD"], path or "/", environ.get("wsgi.url_scheme", "http")
    )
    traceparent = environ.get("HTTP_TRACEPARENT")
    if traceparent is not None:
        info.traceparent = (traceparent,)
        tracestate = environ.get("HTTP_TRACESTATE")
        if tracestate is not None:
            info.tracestate = (tracestate,)
    baggage = environ.get("HTTP_BAGGAGE")
    if baggage is not None:
        info.baggage = (baggage,)
    info.request_id = environ.get("HTTP_X_REQUEST_ID")
    info.headers = environ
    info.getter = _HEADERS
    info.query = environ.get("QUERY_STRING", "")
    protocol = environ.get("SERVER_PROTOCOL", "")
    info.http_version = protocol[5:] if protocol.startswith("HTTP/") else "1.1"
    info.host = environ.get("HTTP_HOST")
    info.user_agent = environ.get("HTTP_USER_AGENT")
    info.deadline_ms = environ.get("HTTP_X_MESH_DEADLINE_MS")
    info.grpc_timeout = environ.get("HTTP_GRPC_TIMEOUT")
    info.envoy_timeout_ms = environ.get("HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS")
    info.attempt = environ.get("HTTP_X_MESH_ATTEMPT") or environ.get("HTTP_X_ENVOY_ATTEMPT_COUNT")
    address = environ.get("REMOTE_ADDR")
    if address:
        port = environ.get("REMOTE_PORT")
        info.client = (address, int(port) if port and str(port).isdigit() else 0)
    info.peer_cert = environ.get("SSL_CLIENT_CERT") or None
    # werkzeug sets REQUEST_URI and RAW_URI, gunicorn RAW_URI: the target as sent, for %2F checks.
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        info.raw_path = raw.partition("?")[0]
    return info


def route_template(environ: Environ) -> str | None:
    """The URL rule Flask/werkzeug matched (`request.url_rule.rule`), if known."""
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) and rule else None


def _reply(
    start_response: StartResponse, reply: MeshResponse, timing: str, head: bool
) -> list[bytes]:
    headers = [*reply.headers, ("server-timing", timing)]
    start_response(f"{reply.status} {reply.reason}", headers)
    return [] if head else [reply.body]


class _Body:
    """The app's response iterable, ending the exchange when the server closes it."""

    __slots__ = ("_environ", "_error", "_exchange", "_result", "_state")

    def __init__(
        self, result: Iterable[bytes], exchange: Exchange, environ: Environ, state: _State
    ) -> None:
        self._result = result
        self._exchange = exchange
        self._environ = environ
        self._state = state
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        exchange, self._exchange = self._exchange, None  # type: ignore[assignment]
        if exchange is None:
            return
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            exchange.exit()
            status, route = self._state
            exchange.finish(status or 500, route or route_template(self._environ), self._error)


class MeshWSGIMiddleware(MiddlewareBase[WSGIApp]):
    """Trace context, Server-Timing, deadlines, authz, admission and health for a WSGI app.

    Same arguments and behaviour as [`meshlib.MeshMiddleware`][meshlib.MeshMiddleware]:

    ```python
    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, service_name="payments", policy=policy)
    ```
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one WSGI request."""
        core = self.core
        head = environ.get("REQUEST_METHOD") == "HEAD"
        health = core.health(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        if health is not None:
            return _reply(start_response, health, "app;dur=0.0", head)
        info = request_info(environ)
        exchange = core.begin(info)
        reply = exchange.reply
        if reply is not None:
            try:
                return _reply(start_response, reply, exchange.server_timing(), head)
            finally:
                exchange.finish(reply.status, None, None)
        state: _State = [0, None]

        def start_with_timing(
            status_line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # Flask forgets the request (and its url_rule) once the app returns: read it now.
            state[0] = int(status_line[:3])
            state[1] = route_template(environ)
            headers = [*headers, ("Server-Timing", exchange.server_timing())]
            if exc_info is None:
                return start_response(status_line, headers)
            return start_response(status_line, headers, exc_info)

        if exchange.request_id_made:  # the app sees the id its calls pass on, as behind Envoy
            environ["HTTP_X_REQUEST_ID"] = exchange.request_id
        exchange.enter()
        try:
            result = self.app(environ, start_with_timing)
        except BaseException as exc:
            exchange.exit()
            exchange.finish(state[0] or 500, state[1] or route_template(environ), exc)
            raise
        return _Body(result, exchange, environ, state)
