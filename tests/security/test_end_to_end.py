"""MeshClient -> meshlib.serve -> MeshMiddleware over mutual TLS: authz allows orders, denies billing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from meshlib.errors import PeerIdentityError
from meshlib.inbound.asgi import MeshMiddleware
from meshlib.inbound.wsgi import MeshWSGIMiddleware
from meshlib.outbound.client import AsyncMeshClient, MeshClient
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.security.ca import IssuedCert
from tests.security.conftest import (
    ORDERS,
    PAYMENTS,
    PKI,
    identity_app,
    identity_wsgi,
    run_uvicorn,
    run_werkzeug,
)


def _policy(pki: PKI, port: int, caller: IssuedCert, identity: str = PAYMENTS) -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "trust_domain": "example.org",
            "defaults": {"retry": {"attempts": 1}},
            "services": {
                "payments": {
                    "endpoints": [f"https://127.0.0.1:{port}"],
                    "identity": identity,
                    "tls": {
                        "mode": "mutual",
                        "ca": str(pki.ca.cert_path),
                        "cert": str(caller.cert_path),
                        "key": str(caller.key_path),
                    },
                    "inbound": {
                        "authz": {
                            "default": "deny",
                            "rules": [{"path_prefix": "/v1/", "allow": [ORDERS]}],
                        }
                    },
                }
            },
        }
    )


@contextmanager
def _payments(pki: PKI, kind: str) -> Iterator[int]:
    # The server's own policy only needs its inbound section; endpoints are the caller's business.
    store = PolicyStore(_policy(pki, 1, pki.client))
    if kind == "uvicorn":
        with run_uvicorn(
            MeshMiddleware(identity_app, policy=store, service_name="payments"), pki.settings()
        ) as s:
            yield s.port
    else:
        with run_werkzeug(
            MeshWSGIMiddleware(identity_wsgi, policy=store, service_name="payments"), pki.settings()
        ) as s:
            yield s.port


def test_authz_allows_orders_and_denies_billing(pki: PKI, server_kind: str) -> None:
    """orders (allowed by the rule) gets 200 with its identity echoed; billing gets 403 from the middleware."""
    billing = pki.ca.issue("billing")
    with _payments(pki, server_kind) as port:
        with MeshClient(_policy(pki, port, pki.client), service_name="orders") as client:
            allowed = client.get("http://payments/v1/charges")
        with MeshClient(_policy(pki, port, billing), service_name="billing") as client:
            denied = client.get("http://payments/v1/charges")
    assert (allowed.status_code, allowed.text) == (200, ORDERS)
    assert denied.status_code == 403


def test_async_mesh_client_round_trip(pki: PKI) -> None:
    """AsyncMeshClient over mutual TLS reaches the ASGI app as orders."""

    async def main(port: int) -> httpx.Response:
        async with AsyncMeshClient(_policy(pki, port, pki.client), service_name="orders") as client:
            return await client.get("http://payments/v1/charges")

    with _payments(pki, "uvicorn") as port:
        response = asyncio.run(main(port))
    assert (response.status_code, response.text) == (200, ORDERS)


def test_mesh_client_refuses_an_impostor(pki: PKI, server_kind: str) -> None:
    """A MeshClient expecting spiffe://example.org/ledger refuses the payments server, naming both."""
    with _payments(pki, server_kind) as port:
        policy = _policy(pki, port, pki.client, identity="spiffe://example.org/ledger")
        with (
            MeshClient(policy, service_name="orders") as client,
            pytest.raises(PeerIdentityError) as info,
        ):
            client.get("http://payments/v1/charges")
    assert info.value.expected == "spiffe://example.org/ledger"
    assert info.value.presented == (PAYMENTS,)
