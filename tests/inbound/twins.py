"""The same small service as a FastAPI app and as a Flask app, each behind its mesh middleware.

Endpoints (identical behaviour in both):

* `GET /items/{item_id}`: the current trace id, span id and remaining deadline as JSON;
* `GET /call`: calls the downstream echo server through a MeshClient and returns what it saw;
* `GET /block`: signals `entered` and waits for `gate` (concurrency tests);
* `GET /boom`: raises.

Every handler counts its calls in `hits`, to prove when the app was not reached.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from flask import Flask
from opentelemetry import trace

from meshlib.clock import SYSTEM_CLOCK
from meshlib.deadline import current_deadline
from meshlib.inbound import MeshMiddleware, MeshWSGIMiddleware
from meshlib.outbound import MeshClient
from meshlib.policy.store import PolicyStore
from tests.support.servers import RunningServer, serve_asgi, serve_wsgi

from .conftest import Telemetry

KINDS = ("asgi", "wsgi")
ITEM_ROUTE = {"asgi": "/items/{item_id}", "wsgi": "/items/<int:item_id>"}


@dataclass
class Twin:
    """A running twin: its URL, middleware, and the handles its handlers share with the test."""

    kind: str
    server: RunningServer
    middleware: MeshMiddleware | MeshWSGIMiddleware
    state: State

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return self.server.url

    @property
    def item_route(self) -> str:
        """The framework's route template for /items/7."""
        return ITEM_ROUTE[self.kind]


@dataclass
class State:
    """What handlers share with the test."""

    client: MeshClient | None = None
    hits: int = 0
    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def item(self, item_id: int) -> dict[str, Any]:
        self.hits += 1
        context = trace.get_current_span().get_span_context()
        deadline = current_deadline.get()
        return {
            "id": item_id,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "sampled": context.trace_flags.sampled,
            "tracestate": context.trace_state.to_header(),
            "deadline_ms": None if deadline is None else deadline.remaining(SYSTEM_CLOCK) * 1000,
        }

    def call(self) -> dict[str, Any]:
        self.hits += 1
        assert self.client is not None
        response = self.client.get("http://downstream/echo")
        seen: dict[str, Any] = response.json()
        return seen

    def block(self) -> str:
        self.hits += 1
        self.entered.set()
        self.gate.wait(10)
        return "done"

    def boom(self) -> str:
        self.hits += 1
        raise RuntimeError("boom")


def fastapi_app(state: State) -> FastAPI:
    app = FastAPI()
    app.get("/items/{item_id}")(state.item)
    app.get("/call")(state.call)
    app.get("/block")(state.block)
    app.get("/boom")(state.boom)
    return app


def flask_app(state: State) -> Flask:
    app = Flask(__name__)
    app.get("/items/<int:item_id>")(state.item)
    app.get("/call")(state.call)
    app.get("/block")(state.block)
    app.get("/boom")(state.boom)
    return app


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A downstream that answers with the request headers it received, as JSON."""
    if scope["type"] != "http":
        return
    body = json.dumps({k.decode(): v.decode() for k, v in scope["headers"]}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serve_twin(
    kind: str,
    store: PolicyStore,
    telemetry: Telemetry,
    *,
    downstream: str | None = None,
    tls: tuple[str, str, str] | None = None,
    wsgi_ssl: ssl.SSLContext | None = None,
) -> Iterator[Twin]:
    """Serve the `kind` twin with `store`'s policy as service `payments`.

    `tls` = (cert, key, ca) files for uvicorn (client certificate optional,
    bridged into the ASGI tls extension); `wsgi_ssl` the werkzeug context.
    """
    state = State()
    options: dict[str, Any] = {
        "policy": store,
        "service_name": "payments",
        "tracer_provider": telemetry.tracer_provider,
        "meter_provider": telemetry.meter_provider,
    }
    if downstream is not None:
        state.client = MeshClient(policy=store, service_name="payments")
    try:
        if kind == "asgi":
            asgi = MeshMiddleware(fastapi_app(state), **options)
            config: dict[str, Any] = {}
            if tls is not None:
                from uvicorn.protocols.http.h11_impl import H11Protocol

                from meshlib.security.asgi_bridge import bridged_protocol

                config = {
                    "http": bridged_protocol(H11Protocol),
                    "ssl_certfile": tls[0],
                    "ssl_keyfile": tls[1],
                    "ssl_ca_certs": tls[2],
                    "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                }
            with serve_asgi(asgi, **config) as server:
                yield Twin(kind, server, asgi, state)
        else:
            flask = flask_app(state)
            wsgi = MeshWSGIMiddleware(flask.wsgi_app, **options)
            flask.wsgi_app = wsgi  # type: ignore[method-assign]
            with serve_wsgi(flask, ssl_context=wsgi_ssl) as server:
                yield Twin(kind, server, wsgi, state)
    finally:
        state.gate.set()
        if state.client is not None:
            state.client.close()


def get(url: str, **kwargs: Any) -> httpx.Response:
    """One GET with a fresh client, closed at once."""
    with httpx.Client(timeout=10) as client:
        return client.get(url, **kwargs)
