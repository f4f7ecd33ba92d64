"""Hand the verified client certificate to an ASGI app: the `tls` extension for uvicorn.

uvicorn (up to at least 0.54) does not fill the ASGI TLS extension
(`scope["extensions"]["tls"]`; upstream PRs Kludex/uvicorn#3132/#3133 are
open). The smallest correct bridge is per connection, where the certificate
is known: uvicorn's HTTP protocol gets `connection_made(transport)` after
the TLS handshake, reads `self.app` for every request it parses, and the
transport exposes the `ssl_object`. `bridged_protocol` subclasses
uvicorn's protocol class (h11 or httptools) so that `connection_made` wraps
`self.app`, for that connection only, in `TLSExtensionApp`, which
adds the extension to each HTTP scope:

```text
config = uvicorn.Config(app, http=bridged_protocol(H11Protocol), ...)
```

The extension follows the ASGI TLS spec (v0.2): `client_cert_chain` holds
the client's certificate as PEM (only the leaf: Python before 3.13 cannot
read the rest of the chain), `tls_version` the protocol number
(`0x0304` for TLS 1.3); `server_cert`, `client_cert_name`,
`client_cert_error` and `cipher_suite` are None. The certificate was
verified during the handshake; no header is ever read. A scope that already
carries a `tls` extension (a server that fills it itself) is left alone.
uvicorn hands an upgraded WebSocket connection to a separate protocol class
that reads the app from its config, not from the HTTP protocol; the same
mixin applies to it (`ws=bridged_protocol(WebSocketsSansIOProtocol)`), so
`wss://` callers carry their identity too ([`meshlib.serve.uvicorn_server`][meshlib.serve.uvicorn_server]
bridges both).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["TLSExtensionApp", "bridged_protocol", "tls_extension"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    r"""The ASGI `tls` extension for an established TLS connection.

    ```pycon
    >>> tls_extension(transport.get_extra_info("ssl_object"))["client_cert_chain"]  # doctest: +SKIP
    ('-----BEGIN CERTIFICATE-----\\n...',)
    ```
    """
    der = ssl_object.getpeercert(binary_form=True)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": (ssl.DER_cert_to_PEM_cert(der),) if der else (),
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


class TLSExtensionApp:
    """Wraps an ASGI app for one connection, adding `extension` as `scope["extensions"]["tls"]`.

    ```pycon
    >>> app = TLSExtensionApp(app, tls_extension(ssl_object))  # doctest: +SKIP
    ```
    """

    __slots__ = ("app", "extension")

    def __init__(self, app: ASGIApp, extension: dict[str, Any]) -> None:
        self.app = app
        self.extension = extension

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Add the extension to http and websocket scopes, then call the app."""
        if scope["type"] in ("http", "websocket"):
            extensions = scope.get("extensions") or {}
            if "tls" not in extensions:
                scope["extensions"] = {**extensions, "tls": self.extension}
        await self.app(scope, receive, send)


class _PeerCertBridge:
    """Mixin for uvicorn HTTP and WebSocket protocols: per-connection `self.app` carrying the tls extension."""

    app: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = TLSExtensionApp(self.app, tls_extension(ssl_object))


_bridged: dict[type[Any], type[Any]] = {}


def bridged_protocol(base: type[Any]) -> type[Any]:
    """A subclass of the uvicorn HTTP or WebSocket protocol `base` that fills the ASGI tls extension.

    ```pycon
    >>> from uvicorn.protocols.http.h11_impl import H11Protocol   # doctest: +SKIP
    >>> uvicorn.Config(app, http=bridged_protocol(H11Protocol))    # doctest: +SKIP
    ```
    """
    cls = _bridged.get(base)
    if cls is None:
        cls = _bridged[base] = type(f"PeerCert{base.__name__}", (_PeerCertBridge, base), {})
    return cls
