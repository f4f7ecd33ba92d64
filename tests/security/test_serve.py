"""meshlib.serve: mutual TLS round trips with the caller's verified identity visible to the app."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.security.asgi_bridge import TLSExtensionApp
from meshlib.security.identity import identity_from_environ
from meshlib.security.wsgi_bridge import PeerCertMiddleware
from meshlib.serve import _is_asgi, serve, uvicorn_server
from tests.security.conftest import ORDERS, PAYMENTS, PKI, run_uvicorn, run_werkzeug, serve_identity
from tests.support.servers import free_port


def _client(pki: PKI) -> httpx.Client:
    from meshlib.security.tls import client_context

    return httpx.Client(verify=client_context(pki.client_tls(), identity=PAYMENTS))  # type: ignore[arg-type]


def test_asgi_app_sees_the_tls_extension(pki: PKI) -> None:
    """Under uvicorn, scope["extensions"]["tls"] carries the verified client certificate (PEM) and TLS version."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["extensions"]["tls"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with run_uvicorn(app, pki.settings()) as server, _client(pki) as client:
        assert client.get(server.url).status_code == 204
        assert client.get(server.url).status_code == 204  # same connection, same extension
    tls = seen[0]
    assert tls["client_cert_chain"] == (pki.client.chain[0],)
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304
    assert seen[1] is tls


def test_round_trip_identity_visible(pki: PKI, server_kind: str) -> None:
    """ASGI (uvicorn) and WSGI (werkzeug) apps both see the caller as spiffe://example.org/orders."""
    with serve_identity(server_kind, pki.settings()) as server, _client(pki) as client:
        response = client.get(
            server.url, headers={"ssl-client-cert": "forged", "x-client-cert": "forged"}
        )
    assert response.text == ORDERS


def test_wsgi_environ_from_werkzeug(pki: PKI) -> None:
    """werkzeug sets SSL_CLIENT_CERT from the socket and wsgi.url_scheme https; a look-alike header stays a header."""
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(dict(environ))
        start_response("204 No Content", [])
        return []

    with run_werkzeug(app, pki.settings()) as server, _client(pki) as client:
        client.get(server.url, headers={"SSL-Client-Cert": "forged"})
    environ = seen[0]
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SSL_CLIENT_CERT"] == pki.client.chain[0]
    assert environ["HTTP_SSL_CLIENT_CERT"] == "forged"
    assert identity_from_environ(environ) == ORDERS


def test_werkzeug_handshake_runs_off_the_accept_loop(pki: PKI) -> None:
    """A client that connects and never handshakes does not stall the server for others."""
    with (
        run_werkzeug(identity_app_wsgi, pki.settings(), handshake_timeout=5) as server,
        socket.create_connection(("127.0.0.1", server.port)),
        _client(pki) as client,
    ):
        assert client.get(server.url).text == ORDERS


def identity_app_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """WSGI app answering with the caller's identity."""
    start_response("200 OK", [])
    return [str(identity_from_environ(environ)).encode()]


class _FakeSSLSocket(ssl.SSLSocket):
    def __init__(self, der: bytes | None) -> None:  # no real socket behind it
        self._der = der

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._der


def test_peer_cert_middleware_sets_or_removes_the_key(pki: PKI) -> None:
    """Under gunicorn the middleware sets SSL_CLIENT_CERT from gunicorn.socket, and drops it on plain sockets."""
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("SSL_CLIENT_CERT"))
        return []

    wrapped = PeerCertMiddleware(app)
    der = ssl.PEM_cert_to_DER_cert(pki.client.chain[0])
    wrapped({"gunicorn.socket": _FakeSSLSocket(der)}, lambda *a: None)
    with socket.socket() as plain:
        wrapped({"gunicorn.socket": plain, "SSL_CLIENT_CERT": "stale"}, lambda *a: None)
    wrapped({"SSL_CLIENT_CERT": "from somewhere"}, lambda *a: None)
    assert seen == [pki.client.chain[0], None, None]


def test_existing_tls_extension_is_kept() -> None:
    """A server that fills the tls extension itself wins; other scope types pass untouched."""
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get("extensions"))

    wrapped = TLSExtensionApp(app, {"client_cert_chain": ("mine",)})
    own = {"tls": {"client_cert_chain": ("server's",)}}
    asyncio.run(wrapped({"type": "http", "extensions": own}, None, None))
    asyncio.run(wrapped({"type": "lifespan"}, None, None))
    asyncio.run(wrapped({"type": "http"}, None, None))
    assert seen == [own, None, {"tls": {"client_cert_chain": ("mine",)}}]


def test_interface_detection() -> None:
    """serve() tells ASGI from WSGI apps the way uvicorn does."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None: ...

    class AsgiApp:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    class WsgiApp:
        def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
            return []

    assert _is_asgi(asgi)
    assert _is_asgi(AsgiApp())
    assert not _is_asgi(identity_app_wsgi)
    assert not _is_asgi(WsgiApp())


def test_launcher_refuses_conflicting_options(pki: PKI) -> None:
    """TLS comes from MESH_TLS_* settings, so uvicorn's ssl_* options are refused, as is an unknown server."""
    with pytest.raises(TypeError, match=r"ssl_certfile: meshlib\.serve takes TLS from MESH_TLS_"):
        uvicorn_server(identity_app_wsgi, settings=pki.settings(), ssl_certfile="x.pem")
    with pytest.raises(ValueError, match="unknown server 'nginx'"):
        serve(identity_app_wsgi, settings=pki.settings(), server="nginx")  # type: ignore[arg-type]


def test_gunicorn_round_trip(pki: PKI, tmp_path: Path) -> None:
    """A WSGI app under gunicorn (sync worker) sees the caller's identity through PeerCertMiddleware."""
    port = free_port()
    script = tmp_path / "run_gunicorn.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from meshlib.security.identity import identity_from_environ
            from meshlib.serve import serve
            from meshlib.settings import MeshSettings

            def app(environ, start_response):
                start_response("200 OK", [])
                return [str(identity_from_environ(environ)).encode()]

            settings = MeshSettings(tls_cert={str(pki.server.cert_path)!r}, tls_key={str(pki.server.key_path)!r},
                                    tls_ca={str(pki.ca.cert_path)!r})
            serve(app, port={port}, settings=settings, server="gunicorn", workers=1, loglevel="warning")
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        with _client(pki) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    response = client.get(f"https://127.0.0.1:{port}/")
                    break
                except httpx.ConnectError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            proc.stdout.read().decode() if proc.stdout else ""
                        ) from None
                    time.sleep(0.1)
        assert response.text == ORDERS
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
