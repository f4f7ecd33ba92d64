"""Hand the verified client certificate to a WSGI app as `environ["SSL_CLIENT_CERT"]` (PEM).

`SSL_CLIENT_CERT` is the key Apache's mod_ssl, nginx and werkzeug's
development server use; `meshlib.security.identity.identity_from_environ`
reads it. werkzeug sets it from its TLS socket; gunicorn does not, so
`PeerCertMiddleware` sets it from the socket gunicorn puts in the
environ (`gunicorn.socket`, or `werkzeug.socket`), and removes it when
the connection is not TLS. Client headers arrive as `HTTP_*` keys, so a
caller cannot forge it.

`MeshWSGIServer` is werkzeug's threaded server with two changes: the
listening socket stays plain and each accepted socket is wrapped with the
server's *current* context (so rotated certificates apply to new
connections), and the TLS handshake runs in the connection's own thread
with a timeout, not in the accept loop, so a slow or hostile client cannot
stall the server.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from meshlib.security.identity import WSGI_CLIENT_CERT

__all__ = ["MeshRequestHandler", "MeshWSGIServer", "PeerCertMiddleware"]

logger = logging.getLogger("meshlib.security")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PeerCertMiddleware:
    """Sets `environ["SSL_CLIENT_CERT"]` from the server's TLS socket, never from a header.

    ```pycon
    >>> app = PeerCertMiddleware(flask_app.wsgi_app)   # doctest: +SKIP
    ```
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Replace the key with the socket's verified peer certificate, then call the app."""
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if der:
            environ[WSGI_CLIENT_CERT] = ssl.DER_cert_to_PEM_cert(der)
        else:
            environ.pop(WSGI_CLIENT_CERT, None)
        return self.app(environ, start_response)


class MeshRequestHandler(WSGIRequestHandler):
    """werkzeug's handler, finishing the TLS handshake (with a timeout) before reading the request."""

    server: MeshWSGIServer

    def handle(self) -> None:
        """Handshake, then serve the connection; a failed handshake ends only this connection."""
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            previous = conn.gettimeout()
            conn.settimeout(self.server.handshake_timeout)
            try:
                conn.do_handshake()
            except (OSError, ValueError) as exc:
                # MeshSSLSocket already logged certificate problems with the peer address.
                logger.debug("TLS handshake from %s failed: %s", self.client_address, exc)
                return
            conn.settimeout(previous)
        super().handle()


class MeshWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server, wrapping each accepted connection with `ssl_context`'s current material.

    ```pycon
    >>> server = MeshWSGIServer("127.0.0.1", 8443, app, ssl_context=server_context())  # doctest: +SKIP
    >>> server.serve_forever()                                                         # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: WSGIApp,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float = 10.0,
        handler: type[WSGIRequestHandler] = MeshRequestHandler,
    ) -> None:
        super().__init__(host, port, app, handler)  # plain listening socket
        # werkzeug reads this to set wsgi.url_scheme and SSL_CLIENT_CERT.
        self.ssl_context: ssl.SSLContext | None = ssl_context
        self.handshake_timeout = handshake_timeout

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and wrap it with the current TLS material; no handshake yet."""
        sock, address = self.socket.accept()
        assert self.ssl_context is not None
        try:
            wrapped = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        return wrapped, address
