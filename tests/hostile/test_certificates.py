"""A server whose certificate fails verification: the error names service and endpoint, no retry.

Expired, foreign-CA and wrong-identity servers, called through MeshClient,
AsyncMeshClient on aiohttp (the default) and on httpcore, with a policy
that retries connect failures three times: each call makes one attempt and
raises `TLSVerificationError` (`PeerIdentityError` for the identity).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import AsyncMeshClient, MeshClient, PeerIdentityError, TLSVerificationError
from meshlib.policy.model import Policy
from meshlib.security.ca import DevCA, IssuedCert
from meshlib.security.tls import clear_context_cache
from tests.security.conftest import (  # the fixtures too: a fresh CA, fresh client contexts
    PKI,
    _fresh_contexts,
    identity_app,
    issue_server,
    past,
    pki,
    run_uvicorn,
)

__all__ = ["_fresh_contexts", "pki"]

CLIENTS = ("sync", "async-aiohttp", "async-httpcore")


def _policy(pki: PKI, url: str, **payments: Any) -> Policy:
    tls = pki.client_tls().model_dump()
    return Policy.model_validate(
        {
            "version": 1,
            "trust_domain": "example.org",
            "defaults": {
                "tls": tls,
                "retry": {
                    "attempts": 3,
                    "retry_on": ["connect-failure", "reset"],
                    "backoff": {"base": "1ms", "max": "2ms"},
                },
            },
            "services": {"payments": {"endpoints": [url], **payments}},
        }
    )


def _call(kind: str, policy: Policy, url: str = "http://payments/whoami") -> httpx.Response:
    if kind == "sync":
        with MeshClient(policy, service_name="orders") as client:
            return client.get(url)

    async def main() -> httpx.Response:
        extra: dict[str, Any] = {}
        if kind == "async-httpcore":
            extra["endpoint_transport"] = httpx.AsyncHTTPTransport
        async with AsyncMeshClient(policy, service_name="orders", **extra) as client:
            return await client.get(url)

    return asyncio.run(main())


def _other_ca(tmp_path: Path) -> DevCA:
    return DevCA.create("example.org", tmp_path / "other-ca")


BAD_SERVERS = {
    "expired": (
        "certificate has expired",
        lambda pki, tmp: issue_server(pki.ca, "old", not_before=past(3)),
    ),
    "wrong-ca": ("not signed by a CA in", lambda pki, tmp: issue_server(_other_ca(tmp))),
}


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("case", sorted(BAD_SERVERS))
def test_a_rejected_server_certificate_names_the_destination_and_is_not_retried(
    pki: PKI, tmp_path: Path, kind: str, case: str
) -> None:
    """One attempt, a TLSVerificationError naming payments, its endpoint and why."""
    reason, make = BAD_SERVERS[case]
    bad: IssuedCert = make(pki, tmp_path)
    with (
        run_uvicorn(identity_app, pki.settings(server=bad)) as server,
        pytest.raises(TLSVerificationError) as info,
    ):
        _call(kind, _policy(pki, server.url))
    error = info.value
    assert not isinstance(error, PeerIdentityError)
    assert isinstance(error, httpx.ConnectError)
    assert (error.destination, error.endpoint) == ("payments", server.url)
    assert str(error).startswith(f"payments at {server.url}: ")
    assert reason in str(error)
    assert len(error.attempts) == 1


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_server_proving_another_identity_is_named_and_not_retried(pki: PKI, kind: str) -> None:
    """Under mutual TLS the server must prove spiffe://example.org/payments; a billing leaf is refused once."""
    billing = pki.ca.issue("billing", ips=["127.0.0.1"])
    with (
        run_uvicorn(identity_app, pki.settings(server=billing)) as server,
        pytest.raises(PeerIdentityError) as info,
    ):
        _call(kind, _policy(pki, server.url))
    error = info.value
    assert (error.destination, error.endpoint) == ("payments", server.url)
    assert error.expected == "spiffe://example.org/payments"
    assert error.presented == ("spiffe://example.org/billing",)
    assert str(error).startswith(f"payments at {server.url}: ")
    assert len(error.attempts) == 1


@pytest.mark.parametrize("kind", CLIENTS)
def test_the_right_server_still_answers(pki: PKI, kind: str) -> None:
    """Control: the payments leaf passes, and the callee sees orders' identity."""
    with run_uvicorn(identity_app, pki.settings()) as server:
        response = _call(kind, _policy(pki, server.url))
    assert response.status_code == 200
    assert response.text == "spiffe://example.org/orders"


def test_under_tls_mode_without_identity_the_host_name_is_checked(pki: PKI, tmp_path: Path) -> None:
    """`tls` without `identity` checks the host name, as any HTTPS client: SAN 127.0.0.1 passes, none fails."""
    named = pki.ca.issue("billing", ips=["127.0.0.1"])
    unnamed = pki.ca.issue("ledger")  # a SPIFFE ID only, no IP or DNS name
    tls = {"mode": "tls", "ca": str(pki.ca.cert_path)}
    for leaf, ok in ((named, True), (unnamed, False)):
        with run_uvicorn(
            identity_app, pki.settings(server=leaf), require_client_cert=False
        ) as server:
            policy = Policy.model_validate(
                {
                    "version": 1,
                    "trust_domain": "example.org",
                    "services": {"payments": {"endpoints": [server.url], "tls": tls}},
                }
            )
            if ok:
                assert _call("sync", policy).status_code == 200
            else:
                with pytest.raises(TLSVerificationError, match="does not name the IP address"):
                    _call("sync", policy)
        clear_context_cache()
