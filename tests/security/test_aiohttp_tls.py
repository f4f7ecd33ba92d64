"""Mutual TLS on AsyncMeshClient's default pool (aiohttp): rotation and SPIFFE identity pinning hold."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from meshlib.errors import PeerIdentityError
from meshlib.outbound.aiohttp_transport import AiohttpTransport
from meshlib.outbound.client import AsyncMeshClient
from meshlib.policy.model import Policy
from meshlib.security.tls import client_context, server_context
from tests.security.conftest import ORDERS, PAYMENTS, PKI, raw_tls_server, serve_identity
from tests.security.test_end_to_end import _policy as end_to_end_policy
from tests.security.test_rotation import _install

NO_KEEPALIVE = httpx.Limits(max_connections=10, max_keepalive_connections=0)


def _policy(pki: PKI, port: int, cert: Path, key: Path, identity: str = PAYMENTS) -> Policy:
    """The end-to-end tests' policy, with the client's certificate and key at ``cert``/``key``."""
    files = SimpleNamespace(cert_path=cert, key_path=key)
    return end_to_end_policy(pki, port, files, identity)  # type: ignore[arg-type]


def test_client_certificate_rotation_reaches_new_connections(pki: PKI, tmp_path: Path) -> None:
    """Rotating the client's leaf files: new aiohttp connections present it, no request fails."""
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    _install(pki.client, cert, key)
    inventory = pki.ca.issue("inventory")

    async def main(port: int) -> tuple[list[str], list[str]]:
        seen: list[str] = []
        failures: list[str] = []
        policy = _policy(pki, port, cert, key)
        async with AsyncMeshClient(policy, service_name="orders", limits=NO_KEEPALIVE) as client:
            pools = client.mesh_transport.outbound.pools
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and inventory.identity not in seen:
                try:
                    seen.append((await client.get("http://payments/")).text)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                if len(seen) == 3:
                    _install(inventory, cert, key)
                await asyncio.sleep(0.05)
            assert all(isinstance(p, AiohttpTransport) for p in pools._pools.values())
        return seen, failures

    with serve_identity("uvicorn", pki.settings()) as server:
        seen, failures = asyncio.run(main(server.port))
    assert failures == []
    assert seen[0] == ORDERS
    assert seen[-1] == inventory.identity


def test_pinned_identity_refuses_an_impostor_before_sending(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """A server proving another SPIFFE ID: PeerIdentityError, no request byte sent, no asyncio error log."""
    context = server_context(pki.settings(), require_client_cert=False)
    cert, key = pki.client.cert_path, pki.client.key_path

    async def main(port: int) -> PeerIdentityError:
        policy = _policy(pki, port, cert, key, identity="spiffe://example.org/ledger")
        async with AsyncMeshClient(policy, service_name="orders") as client:
            with pytest.raises(PeerIdentityError) as info:
                await client.get("http://payments/v1/charges")
            return info.value

    with (
        caplog.at_level(logging.DEBUG, logger="asyncio"),
        raw_tls_server(context) as (
            port,
            received,
        ),
    ):
        error = asyncio.run(main(port))
    assert (error.expected, error.presented) == ("spiffe://example.org/ledger", (PAYMENTS,))
    assert all(data == b"" for data in received)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_transport_takes_the_rotating_context_as_is(pki: PKI) -> None:
    """A RotatingSSLContext given as verify= is used itself (not copied), so rotation reaches aiohttp."""
    context = client_context(pki.client_tls(), identity=PAYMENTS)
    assert context is not None
    assert AiohttpTransport(verify=context)._ssl is context
