"""WebSockets pass identity, authz, rate and concurrency limits: a real client against uvicorn.

The app accepts every WebSocket it sees and counts them, so a handshake the
middleware refused is one the app never accepted.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from meshlib.clock import FakeClock
from meshlib.inbound import MeshMiddleware
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.security.ca import DevCA
from meshlib.serve import uvicorn_server
from meshlib.settings import MeshSettings
from tests.support.servers import RunningServer, free_port, serve_asgi

ORDERS = "spiffe://example.org/orders"


class Echo:
    """A Starlette app with an echoing WebSocket at /ws/echo and GET /ws/plain; counts accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0

    def app(self) -> Starlette:
        async def echo(websocket: WebSocket) -> None:
            await websocket.accept()
            self.accepted += 1
            self.open += 1
            try:
                while True:
                    await websocket.send_text(await websocket.receive_text())
            except WebSocketDisconnect:
                pass
            finally:
                self.open -= 1

        async def plain(request: Any) -> PlainTextResponse:
            return PlainTextResponse("plain")

        return Starlette(routes=[WebSocketRoute("/ws/echo", echo), Route("/ws/plain", plain)])


def _store(inbound: dict[str, Any]) -> PolicyStore:
    doc = {"version": 1, "trust_domain": "example.org", "services": {"chat": {"inbound": inbound}}}
    return PolicyStore(Policy.model_validate(doc))


@contextmanager
def serve_chat(
    inbound: dict[str, Any], *, strip_extension: bool = False
) -> Iterator[tuple[RunningServer, Echo, list[dict[str, Any]]]]:
    """The echo app behind MeshMiddleware (clock frozen) under uvicorn; yields what the middleware sent.

    `strip_extension` plays a server without `websocket.http.response`.
    """
    echo = Echo()
    mesh = MeshMiddleware(
        echo.app(), policy=_store(inbound), service_name="chat", clock=FakeClock()
    )
    sent: list[dict[str, Any]] = []

    async def server_side(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and strip_extension:
            extensions = dict(scope.get("extensions") or {})
            extensions.pop("websocket.http.response", None)
            scope = {**scope, "extensions": extensions}

        async def recording(message: Any) -> None:
            sent.append(dict(message))
            await send(message)

        await mesh(scope, receive, recording)

    with serve_asgi(server_side, ws="websockets-sansio") as server:
        yield server, echo, sent


def _ws(url: str, **kwargs: Any) -> ClientConnection:
    return connect(url, proxy=None, open_timeout=10, **kwargs)


def _refused(url: str, **kwargs: Any) -> Any:
    """The HTTP response of a handshake the server refused."""
    with pytest.raises(InvalidStatus) as exc, _ws(url, **kwargs):
        pass
    return exc.value.response


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_denied_websocket_gets_403_before_the_app() -> None:
    """authz default deny: the anonymous handshake is an HTTP 403 with a body; nothing accepted."""
    with serve_chat({"authz": {"default": "deny"}}) as (server, echo, sent):
        response = _refused(f"ws://127.0.0.1:{server.port}/ws/echo")
        assert response.status_code == 403
        assert response.body == b"forbidden\n"
        assert echo.accepted == 0
        assert [m["type"] for m in sent] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]


def test_without_the_http_response_extension_a_denial_closes_with_1008() -> None:
    """On a server lacking websocket.http.response, the middleware closes with 1008 (HTTP 403)."""
    with serve_chat({"authz": {"default": "deny"}}, strip_extension=True) as (server, echo, sent):
        response = _refused(f"ws://127.0.0.1:{server.port}/ws/echo")
        assert response.status_code == 403
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "Forbidden"}]
        assert echo.accepted == 0


def test_allowed_websocket_reaches_the_app_and_echoes() -> None:
    """With nothing to deny, the WebSocket is accepted and works."""
    with serve_chat({}) as (server, echo, _), _ws(f"ws://127.0.0.1:{server.port}/ws/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        assert echo.accepted == 1


def test_rate_limit_applies_to_handshakes() -> None:
    """With a burst of 2 and a frozen clock, the third handshake gets 429 with Retry-After."""
    with serve_chat({"rate_limit": {"requests_per_second": 1, "burst": 2}}) as (server, echo, _):
        url = f"ws://127.0.0.1:{server.port}/ws/echo"
        for _ in range(2):
            with _ws(url):
                pass
        response = _refused(url)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert echo.accepted == 2


def test_concurrency_limit_holds_for_the_life_of_the_connection() -> None:
    """Limit 1: while one WebSocket is open a second is refused (503), even long after its handshake."""
    with serve_chat({"concurrency_limit": 1}) as (server, echo, _):
        url = f"ws://127.0.0.1:{server.port}/ws/echo"
        with _ws(url) as first:
            first.send("ping")
            assert first.recv(timeout=5) == "ping"
            for _ in range(3):
                response = _refused(url)
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
            first.send("still here")
            assert first.recv(timeout=5) == "still here"
        _wait(lambda: echo.open == 0)
        _wait(lambda: _try(url))
        assert echo.accepted == 2


def _try(url: str) -> bool:
    try:
        with _ws(url):
            pass
    except InvalidStatus:
        return False
    return True


def test_websocket_paths_are_judged_like_http_paths() -> None:
    """A dot-segment handshake path is refused with 400, as an HTTP request would be."""
    inbound = {
        "authz": {"default": "allow", "rules": [{"path_prefix": "/admin", "allow": [ORDERS]}]}
    }
    with serve_chat(inbound) as (server, echo, _):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"GET /admin/../ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
        assert echo.accepted == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev CA with certificates for the chat server, orders and billing."""
    directory = tmp_path_factory.mktemp("pki")
    ca = DevCA.create("example.org", directory)
    ca.issue("chat", ips=["127.0.0.1"])
    ca.issue("orders")
    ca.issue("billing")
    return directory


def _client(pki: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}.key"))
    return ctx


def test_wss_callers_are_identified_through_meshlib_serve(pki: Path) -> None:
    """Under meshlib.serve, a wss:// caller's certificate decides: orders is accepted, billing gets 403."""
    echo = Echo()
    inbound = {"authz": {"default": "deny", "rules": [{"path_prefix": "/ws", "allow": [ORDERS]}]}}
    app = MeshMiddleware(echo.app(), policy=_store(inbound), service_name="chat")
    settings = MeshSettings(
        tls_ca=pki / "ca.pem", tls_cert=pki / "chat.pem", tls_key=pki / "chat.key"
    )
    port = free_port()
    server = uvicorn_server(app, port=port, settings=settings, log_level="warning", lifespan="off")
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started, 10)
        url = f"wss://127.0.0.1:{port}/ws/echo"
        with _ws(url, ssl=_client(pki, "orders")) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        assert _refused(url, ssl=_client(pki, "billing")).status_code == 403
        assert echo.accepted == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
