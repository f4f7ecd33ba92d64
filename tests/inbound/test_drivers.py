"""Driver edge cases called in-process: exceptions, streaming bodies, HEAD, odd paths and hosts."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import StatusCode

from meshlib.inbound import MeshMiddleware, MeshWSGIMiddleware
from meshlib.inbound.wsgi import request_info
from meshlib.policy.model import Policy
from meshlib.telemetry.server import split_host

from .conftest import Telemetry

POLICY = Policy.model_validate({"version": 1})


def environ(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        **extra,
    }


def recorder(into: list[Any] | None = None, *, exc_into: list[Any] | None = None) -> Any:
    """A WSGI start_response that records headers (and exc_info) and returns a write callable."""

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        if into is not None:
            into.extend(headers)
        if exc_into is not None:
            exc_into.append(exc_info)
        return lambda data: None

    return start_response


def wsgi(app: Any, telemetry: Telemetry) -> MeshWSGIMiddleware:
    return MeshWSGIMiddleware(
        app, policy=POLICY, service_name="payments", tracer_provider=telemetry.tracer_provider
    )


def test_wsgi_app_exception_is_recorded_and_reraised(telemetry: Telemetry) -> None:
    """An app that raises: the exception propagates, the span is an error with error.type."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        wsgi(app, telemetry)(environ(), recorder())
    (span,) = telemetry.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[ERROR_TYPE] == "ValueError"


def test_wsgi_streaming_body_error_ends_the_span(telemetry: Telemetry) -> None:
    """A body that fails mid-iteration ends the exchange on close() with the error."""
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            raise OSError("disk")

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    headers: list[Any] = []
    body = wsgi(app, telemetry)(environ(), recorder(headers))
    with pytest.raises(OSError, match="disk"):
        list(body)
    assert telemetry.spans() == []
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]
    (span,) = telemetry.spans()
    assert (span.attributes or {})[ERROR_TYPE] == "OSError"
    assert "Server-Timing" in dict(headers)


def test_wsgi_exc_info_is_passed_on(telemetry: Telemetry) -> None:
    """start_response(..., exc_info) reaches the server's start_response."""
    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            raise RuntimeError("late")
        except RuntimeError as exc:
            start_response("500 Internal Server Error", [], (type(exc), exc, exc.__traceback__))
        return [b"oops"]

    body = wsgi(app, telemetry)(environ(), recorder(exc_into=seen))
    assert list(body) == [b"oops"]
    body.close()  # type: ignore[attr-defined]
    assert seen[0][0] is RuntimeError


def test_wsgi_head_reply_has_no_body(telemetry: Telemetry) -> None:
    """HEAD on a health path gets headers only."""
    app = wsgi(lambda e, s: [b"never"], telemetry)
    assert list(app(environ("/healthz", "HEAD"), recorder())) == []


def test_wsgi_request_info_decodes_paths_and_ports() -> None:
    """PEP 3333 latin-1 paths become UTF-8; a missing or odd REMOTE_PORT is tolerated."""
    raw = "/caf\u00c3\u00a9"  # b"/caf\xc3\xa9" as latin-1
    info = request_info(environ(raw, REMOTE_ADDR="10.0.0.1", REMOTE_PORT="x", SCRIPT_NAME="/app"))
    assert info.path == "/app/caf\u00e9"
    assert info.client == ("10.0.0.1", 0)
    assert request_info(environ("/\u00ff")).path == "/\u00ff"  # not UTF-8: kept as is


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("example.org", "http", ("example.org", 80)),
        ("example.org", "https", ("example.org", 443)),
        ("example.org:8443", "https", ("example.org", 8443)),
        ("[::1]:8080", "http", ("::1", 8080)),
        ("[::1]", "https", ("::1", 443)),
        ("[::1", "http", (None, None)),
        ("example.org:99999999", "http", ("example.org", None)),
        ("example.org:65536", "http", ("example.org", None)),
        (None, "http", (None, None)),
    ],
)
def test_split_host(host: str | None, scheme: str, expected: tuple[Any, Any]) -> None:
    """server.address and server.port come from the Host header, IPv6 included."""
    assert split_host(host, scheme) == expected


def test_asgi_app_exception_after_start_keeps_the_status(telemetry: Telemetry) -> None:
    """An ASGI app failing after its response started: the span keeps the status and the error."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise KeyError("late")

    middleware = MeshMiddleware(
        app, policy=POLICY, service_name="payments", tracer_provider=telemetry.tracer_provider
    )
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "extensions": {"tls": {"client_cert_error": "bad"}},
    }
    with pytest.raises(KeyError):
        asyncio.run(middleware(scope, receive, send))
    middleware.close()
    (span,) = telemetry.spans()
    assert (span.attributes or {})["http.response.status_code"] == 200
    assert (span.attributes or {})[ERROR_TYPE] == "KeyError"
    assert b"server-timing" in dict(sent[0]["headers"])


def test_fastapi_add_middleware_and_flask_wsgi_app_wiring(telemetry: Telemetry) -> None:
    """The documented one-liners work: app.add_middleware(...) and app.wsgi_app = ...(app.wsgi_app)."""
    from fastapi import FastAPI
    from flask import Flask

    from tests.support.servers import serve_asgi

    from .twins import get

    fastapi = FastAPI()
    fastapi.get("/ping")(lambda: {"ok": True})
    fastapi.add_middleware(
        MeshMiddleware,
        policy=POLICY,
        service_name="payments",
        tracer_provider=telemetry.tracer_provider,
    )
    with serve_asgi(fastapi) as server:
        response = get(f"{server.url}/ping")
        assert response.headers["server-timing"].startswith("app;dur=")
        assert get(f"{server.url}/readyz").status_code == 200
    flask = Flask(__name__)
    flask.get("/ping")(lambda: {"ok": True})
    flask.wsgi_app = wsgi(flask.wsgi_app, telemetry)  # type: ignore[method-assign]
    flask_response = flask.test_client().get("/ping")
    assert flask_response.headers["Server-Timing"].startswith("app;dur=")
    flask_response.close()  # the WSGI exchange ends when the body is closed (PEP 3333)
    deadline = time.monotonic() + 5
    while len(telemetry.spans()) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(s.name for s in telemetry.spans()) == ["GET /ping", "GET /ping"]
