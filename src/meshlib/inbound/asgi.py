"""MeshMiddleware: the pure ASGI driver of the inbound core (FastAPI, Starlette, any ASGI app).

A plain `(scope, receive, send)` class rather than Starlette's
`BaseHTTPMiddleware`, which stops `ContextVar` changes from reaching the
app and would lose the trace context and the deadline. Per-request state
lives in `__call__` locals.

Every scope that carries a caller goes through the core: `http` and
`websocket` alike (identity, path, authz, rate and concurrency limits). A
refused WebSocket handshake is answered before the app sees it: with the
HTTP status (403, 429, 503) through the ASGI `websocket.http.response`
extension where the server offers it (uvicorn does), else by closing with
1008 (policy violation) or 1013 (try again later), which the server turns
into an HTTP 403. An accepted WebSocket holds its concurrency slot until the
app returns, for the life of the connection. Other scopes (`lifespan`)
pass through untouched:

```python
app = FastAPI()
app.add_middleware(MeshMiddleware, service_name="payments", policy="mesh.yaml")
# or: app = MeshMiddleware(app, service_name="payments")
```
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meshlib.inbound.config import MiddlewareBase
from meshlib.inbound.core import Exchange, RequestInfo
from meshlib.inbound.health import MeshResponse
from meshlib.inbound.timing import SERVER_TIMING
from meshlib.inbound.tracecontext import ASGIHeaders
from meshlib.telemetry.requestid import REQUEST_ID_HEADER

__all__ = ["ASGIApp", "MeshMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SERVER_TIMING = SERVER_TIMING.encode()
# ASGI servers send header names lower-cased; each wanted header maps to a RequestInfo field.
_WANTED = {
    b"host": "host",
    b"user-agent": "user_agent",
    b"x-mesh-deadline-ms": "deadline_ms",
    b"grpc-timeout": "grpc_timeout",
    b"x-envoy-expected-rq-timeout-ms": "envoy_timeout_ms",
    b"x-mesh-attempt": "attempt",
    b"x-envoy-attempt-count": "attempt",
    b"x-request-id": "request_id",
}
_HEADERS = ASGIHeaders()
_REQUEST_ID = REQUEST_ID_HEADER.encode()


def request_info(scope: Scope) -> RequestInfo:
    """A `RequestInfo` from an ASGI `http` or `websocket` scope (a WebSocket is a GET)."""
    info = RequestInfo(scope.get("method", "GET"), scope["path"], scope.get("scheme") or "http")
    traceparent: list[str] = []
    tracestate: list[str] = []
    headers = scope["headers"]
    for name, value in headers:
        if name == b"traceparent":
            traceparent.append(value.decode("latin-1"))
        elif name == b"tracestate":
            tracestate.append(value.decode("latin-1"))
        elif name == b"baggage":
            info.baggage = (*info.baggage, value.decode("latin-1"))
        else:
            field = _WANTED.get(name)
            if field is not None:
                setattr(info, field, value.decode("latin-1"))
    info.traceparent = traceparent
    info.tracestate = tracestate
    info.headers = headers
    info.getter = _HEADERS
    query = scope.get("query_string")
    if query:
        info.query = query.decode("latin-1")
    info.raw_path = scope.get("raw_path")
    info.http_version = scope.get("http_version") or "1.1"
    client = scope.get("client")
    if client:
        info.client = (client[0], client[1])
    extensions = scope.get("extensions")
    if extensions:
        tls = extensions.get("tls")
        if tls and tls.get("client_cert_error") is None:
            chain = tls.get("client_cert_chain")
            if chain:
                info.peer_cert = next(iter(chain), None)
    return info


def route_template(scope: Scope, root_path: str) -> str | None:
    """The route template Starlette/FastAPI matched (`scope["route"].path`), if known.

    Under a `Mount` only the inner route's template is known, which would
    mislead, so no template is reported there.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path and scope.get("root_path", "") == root_path:
        return path
    return None


async def _send_reply(send: Send, reply: MeshResponse, timing: str, head: bool) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    headers.append((_SERVER_TIMING, timing.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, reply: MeshResponse
) -> None:
    """Answer a WebSocket handshake the core refused, without the app ever seeing it."""
    message = await receive()
    if message["type"] != "websocket.connect":  # the client left already
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        await send(
            {"type": "websocket.http.response.start", "status": reply.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": reply.body})
        return
    code = 1013 if reply.status in (429, 503) else 1008  # try again later / policy violation
    await send({"type": "websocket.close", "code": code, "reason": reply.reason})


class MeshMiddleware(MiddlewareBase[ASGIApp]):
    """Trace context, Server-Timing, deadlines, authz, admission and health for an ASGI app.

    Configured from `services.<service_name>.inbound` in the policy,
    re-read on every request so policy reloads apply at once:

    ```python
    app = MeshMiddleware(app, service_name="payments", policy=policy)
    app.drain()   # /readyz answers 503 from now on
    ```

    `tracer_provider` and `meter_provider` default to the global ones.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        core = self.core
        health = core.health(scope["path"])
        if health is not None:
            await _send_reply(send, health, "app;dur=0.0", scope["method"] == "HEAD")
            return
        info = request_info(scope)
        exchange = core.begin(info)
        reply = exchange.reply
        if reply is not None:
            try:
                await _send_reply(send, reply, exchange.server_timing(), info.method == "HEAD")
            finally:
                exchange.finish(reply.status, None, None)
            return
        await self._run_app(scope, receive, send, exchange)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = self.core.begin(request_info(scope))
        reply = exchange.reply
        if reply is not None:
            try:
                await _refuse_websocket(scope, receive, send, reply)
            finally:
                exchange.finish(reply.status, None, None)
            return
        status = [0]

        async def send_watching(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                status[0] = 101
            elif kind == "websocket.http.response.start":
                status[0] = message["status"]
            elif kind == "websocket.close" and not status[0]:
                status[0] = (
                    403  # closed before accepting: the server answers the handshake with 403
                )
            await send(message)

        await self._drive(scope, receive, send_watching, exchange, status, 101)

    async def _run_app(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        status = [0]

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((_SERVER_TIMING, exchange.server_timing().encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        if exchange.request_id_made:  # the app sees the id its calls pass on, as behind Envoy
            scope = dict(scope)
            scope["headers"] = [*scope["headers"], (_REQUEST_ID, exchange.request_id.encode())]
        await self._drive(scope, receive, send_with_timing, exchange, status, 0)

    async def _drive(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        status: list[int],
        default: int,
    ) -> None:
        """Run the app inside the exchange; `status[0]` is what the app's messages said."""
        root_path = scope.get("root_path", "")
        exchange.enter()
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            exchange.exit()
            exchange.finish(status[0] or 500, route_template(scope, root_path), exc)
            raise
        exchange.exit()
        exchange.finish(status[0] or default, route_template(scope, root_path), None)
