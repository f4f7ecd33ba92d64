"""One small service as a Starlette, a FastAPI and a Flask app, over mutual TLS, behind the mesh.

Handlers (same in all three): `/v1` and `/v1/<anything>` answer `v1`,
`/admin` and `/admin/<anything>` answer `admin`, and a catch-all
answers `other`; each counts its calls, so a test can prove which handler
a hostile request reached. A raw TLS socket sends request lines exactly as
written (httpx would resolve dot segments before sending).
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from meshlib.inbound import MeshMiddleware, MeshWSGIMiddleware
from meshlib.policy.store import PolicyStore
from meshlib.security.asgi_bridge import bridged_protocol
from tests.inbound.certs import Issued, TestCA
from tests.support.servers import RunningServer, serve_asgi, serve_wsgi

FRAMEWORKS = ("starlette", "fastapi", "flask")


@dataclass
class Service:
    """A running app: where it listens and which handlers ran."""

    framework: str
    server: RunningServer
    hits: Counter[str] = field(default_factory=Counter)


ROUTES = [
    ("/v1", "v1"),
    ("/v1/{rest:path}", "v1"),
    ("/admin", "admin"),
    ("/admin/{rest:path}", "admin"),
    ("/{rest:path}", "other"),
]


def _handler(hits: Counter[str], name: str) -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        hits[name] += 1
        return PlainTextResponse(f"{name} {request.url.path}")

    return endpoint


def _starlette(hits: Counter[str]) -> Starlette:
    return Starlette(
        routes=[Route(path, _handler(hits, name), methods=["GET", "POST"]) for path, name in ROUTES]
    )


def _fastapi(hits: Counter[str]) -> FastAPI:
    app = FastAPI()
    for path, name in ROUTES:
        app.api_route(path, methods=["GET", "POST"])(_handler(hits, name))
    return app


def _flask(hits: Counter[str]) -> Flask:
    app = Flask(__name__)

    def handler(name: str) -> Any:
        def endpoint(**_: str) -> tuple[str, int]:
            from flask import request

            hits[name] += 1
            return f"{name} {request.path}", 200

        endpoint.__name__ = f"endpoint_{name}_{len(app.url_map._rules)}"
        return endpoint

    for path, name in ROUTES:
        flask_path = path.replace("{rest:path}", "<path:rest>")
        app.route(flask_path, methods=["GET", "POST"])(handler(name))
    return app


@contextmanager
def serve_service(
    framework: str, store: PolicyStore, ca: TestCA, server_cert: Issued, **options: Any
) -> Iterator[Service]:
    """Serve `framework`'s app as service `payments` under `store`, over TLS on 127.0.0.1."""
    hits: Counter[str] = Counter()
    options = {"policy": store, "service_name": "payments", **options}
    if framework == "flask":
        flask = _flask(hits)
        flask.wsgi_app = MeshWSGIMiddleware(flask.wsgi_app, **options)  # type: ignore[method-assign]
        with serve_wsgi(flask, ssl_context=ca.server_context(server_cert)) as server:
            yield Service(framework, server, hits)
        return
    app = _starlette(hits) if framework == "starlette" else _fastapi(hits)
    config = {
        "http": bridged_protocol(H11Protocol),
        "ssl_certfile": str(server_cert.cert),
        "ssl_keyfile": str(server_cert.key),
        "ssl_ca_certs": str(ca.path),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
    }
    with serve_asgi(MeshMiddleware(app, **options), **config) as server:
        yield Service(framework, server, hits)


def raw_request(
    service: Service, context: ssl.SSLContext, target: bytes, method: bytes = b"GET"
) -> tuple[int, str]:
    """Send one request line exactly as given over TLS; (status, body) of the answer."""
    with (
        socket.create_connection(("127.0.0.1", service.server.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body.decode("utf-8", "replace")


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out
