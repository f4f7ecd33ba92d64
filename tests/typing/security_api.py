"""Type-checked (never run): the security API as users call it; mypy --strict must accept it."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

import meshlib
from meshlib.policy.model import TLS
from meshlib.security.ca import DevCA, IssuedCert
from meshlib.security.identity import (
    SpiffeID,
    identity_from_environ,
    identity_from_scope,
    peer_identity_from_cert,
)
from meshlib.security.tls import RotatingSSLContext, client_context, server_context
from meshlib.serve import serve, uvicorn_server, werkzeug_server

settings = meshlib.MeshSettings(tls_cert="payments.pem", tls_key="payments.key", tls_ca="ca.pem")

ctx: ssl.SSLContext | None = client_context(
    TLS(mode="mutual"), identity="spiffe://example.org/payments", settings=settings
)
client = httpx.Client(verify=ctx or True)
server_ctx: RotatingSSLContext = server_context(settings, require_client_cert=True)
generation: int = server_ctx.material.generation

ca: DevCA = DevCA.create("example.org", "certs", force=True)
issued: IssuedCert = ca.issue("payments", dns=["localhost"], ips=["127.0.0.1"])
who: str | None = peer_identity_from_cert(issued.chain[0])
who = peer_identity_from_cert({"subjectAltName": (("URI", issued.identity),)})
who = identity_from_scope({"type": "http"}) or identity_from_environ({})
service: str = SpiffeID.parse(issued.identity).service

try:
    client.get("https://payments")
except meshlib.PeerIdentityError as exc:
    expected: str = exc.expected
    presented: tuple[str, ...] = exc.presented


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None: ...


uvicorn_server(app, port=8443, settings=settings, log_level="warning").run()
werkzeug_server(lambda environ, start_response: [], port=0, settings=settings).serve_forever()
serve(app, host="127.0.0.1", port=8443, settings=settings, server="uvicorn")
