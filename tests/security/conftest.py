"""Fixtures for the security tests: a dev CA with leaves, and mTLS servers on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlib.policy.model import TLS
from meshlib.security.ca import DevCA, IssuedCert
from meshlib.security.identity import identity_from_environ, identity_from_scope
from meshlib.security.tls import clear_context_cache
from meshlib.serve import uvicorn_server, werkzeug_server
from meshlib.settings import MeshSettings

PAYMENTS = "spiffe://example.org/payments"
ORDERS = "spiffe://example.org/orders"


@dataclass
class PKI:
    """A CA, the server's leaf (payments) and a client's leaf (orders)."""

    ca: DevCA
    server: IssuedCert
    client: IssuedCert
    directory: Path

    def settings(self, server: IssuedCert | None = None, ca: Path | None = None) -> MeshSettings:
        """Server settings: its cert/key and the CA that signs clients."""
        server = server or self.server
        return MeshSettings(
            tls_cert=server.cert_path, tls_key=server.key_path, tls_ca=ca or self.ca.cert_path
        )

    def client_tls(self, client: IssuedCert | None = None, ca: Path | None = None) -> TLS:
        """A mutual-TLS policy section for `client`."""
        client = client or self.client
        return TLS(
            mode="mutual",
            ca=str(ca or self.ca.cert_path),
            cert=str(client.cert_path),
            key=str(client.key_path),
        )


def issue_server(ca: DevCA, name: str = "payments", **kwargs: Any) -> IssuedCert:
    """A payments-style leaf usable on 127.0.0.1."""
    return ca.issue("payments", name=name, dns=["localhost"], ips=["127.0.0.1"], **kwargs)


def past(days: float) -> dt.datetime:
    """A moment `days` ago, in UTC."""
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)


@pytest.fixture(autouse=True)
def _fresh_contexts() -> Iterator[None]:
    """Each test builds its own client contexts (the cache is process-wide)."""
    clear_context_cache()
    yield
    clear_context_cache()


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """A fresh dev CA for example.org with a payments server leaf and an orders client leaf."""
    ca = DevCA.create("example.org", tmp_path / "certs")
    return PKI(ca, issue_server(ca), ca.issue("orders"), tmp_path / "certs")


async def identity_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app answering with the caller's SPIFFE ID as the server sees it."""
    assert scope["type"] == "http"
    body = str(identity_from_scope(scope)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def identity_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """WSGI app answering with the caller's SPIFFE ID as the server sees it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(identity_from_environ(environ)).encode()]


@dataclass
class Running:
    """A server running in a thread."""

    port: int
    context: ssl.SSLContext

    @property
    def url(self) -> str:
        """https://127.0.0.1:<port>."""
        return f"https://127.0.0.1:{self.port}"


@contextmanager
def run_uvicorn(app: Any, settings: MeshSettings, **kwargs: Any) -> Iterator[Running]:
    """Run `app` under meshlib.serve's uvicorn with mTLS on a free port until the block ends."""
    server = uvicorn_server(
        app, port=0, settings=settings, log_level="warning", lifespan="off", **kwargs
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(port, server.config.ssl)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def run_werkzeug(app: Any, settings: MeshSettings, **kwargs: Any) -> Iterator[Running]:
    """Run a WSGI `app` under meshlib.serve's werkzeug server with mTLS until the block ends."""
    server = werkzeug_server(app, port=0, settings=settings, **kwargs)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        assert server.ssl_context is not None
        yield Running(server.server_port, server.ssl_context)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


RUNNERS = {"uvicorn": (run_uvicorn, identity_app), "werkzeug": (run_werkzeug, identity_wsgi)}


@pytest.fixture(params=sorted(RUNNERS))
def server_kind(request: pytest.FixtureRequest) -> str:
    """Each test runs against uvicorn (ASGI) and werkzeug (WSGI)."""
    return str(request.param)


@contextmanager
def serve_identity(kind: str, settings: MeshSettings) -> Iterator[Running]:
    """The identity-echo app of `kind` served with `settings`."""
    runner, app = RUNNERS[kind]
    with runner(app, settings) as running:
        yield running


@contextmanager
def raw_tls_server(context: ssl.SSLContext) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS server recording every byte each client sent after the handshake (one buffer per connection)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(5)
            data = b""
            try:
                with context.wrap_socket(sock, server_side=True) as tls:
                    while chunk := tls.recv(65536):
                        data += chunk
                        if b"\r\n\r\n" in data:
                            tls.sendall(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            )
                            break
            except (OSError, ValueError):
                pass
            finally:
                sock.close()
            received.append(data)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
