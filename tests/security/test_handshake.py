"""The client's SPIFFE identity check runs inside the handshake, on the sync and the async path."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib.errors import PeerIdentityError
from meshlib.policy.model import TLS
from meshlib.security.handshake import MeshSSLObject, MeshSSLSocket
from meshlib.security.tls import client_context, server_context
from meshlib.settings import MeshSettings
from tests.security.conftest import ORDERS, PAYMENTS, PKI, raw_tls_server


def _get(ctx: ssl.SSLContext, url: str, driver: str) -> httpx.Response:
    if driver == "sync":
        with httpx.Client(verify=ctx) as client:
            return client.get(url)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(verify=ctx) as client:
            return await client.get(url)

    return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> str:
    """httpx.Client (wrap_socket) and httpx.AsyncClient (anyio, wrap_bio)."""
    return str(request.param)


def test_pinned_identity_accepted(pki: PKI, driver: str) -> None:
    """The server proving exactly the pinned SPIFFE ID gets the request."""
    ctx = client_context(pki.client_tls(), identity=PAYMENTS)
    assert ctx is not None
    with raw_tls_server(server_context(pki.settings())) as (port, received):
        assert _get(ctx, f"https://127.0.0.1:{port}/", driver).text == "ok"
    assert received[0].startswith(b"GET / HTTP/1.1")


def test_wrong_identity_fails_before_any_request_byte(pki: PKI, driver: str) -> None:
    """A server with another identity fails the handshake; it never receives a request byte."""
    ctx = client_context(pki.client_tls(), identity=ORDERS)
    assert ctx is not None
    with raw_tls_server(server_context(pki.settings())) as (port, received):
        with pytest.raises(PeerIdentityError) as info:
            _get(ctx, f"https://127.0.0.1:{port}/", driver)
        for _ in range(100):
            if received:
                break
            time.sleep(0.01)
    assert received == [b""]
    assert info.value.expected == ORDERS
    assert info.value.presented == (PAYMENTS,)
    assert f"is not {ORDERS}: its certificate presents {PAYMENTS}" in str(info.value)
    assert isinstance(info.value, httpx.ConnectError)


def test_prefix_is_not_a_match(pki: PKI, driver: str) -> None:
    """spiffe://example.org/pay does not match a server proving spiffe://example.org/payments."""
    ctx = client_context(pki.client_tls(), identity="spiffe://example.org/pay")
    assert ctx is not None
    with (
        raw_tls_server(server_context(pki.settings())) as (port, _),
        pytest.raises(PeerIdentityError),
    ):
        _get(ctx, f"https://127.0.0.1:{port}/", driver)


def test_certificate_without_spiffe_id_is_refused(pki: PKI) -> None:
    """A server whose certificate names only a host and IP (no SPIFFE ID) fails a pinned identity."""
    settings = _custom_leaf(
        pki, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    ctx = client_context(pki.client_tls(), identity=PAYMENTS)
    assert ctx is not None
    with (
        raw_tls_server(server_context(settings)) as (port, _),
        pytest.raises(PeerIdentityError, match="its certificate presents no SPIFFE ID") as info,
    ):
        _get(ctx, f"https://127.0.0.1:{port}/", "sync")
    assert info.value.presented == ()


def test_both_paths_use_the_mesh_classes(pki: PKI) -> None:
    """wrap_socket and wrap_bio on the shared context create the overriding socket/object classes."""
    ctx = client_context(pki.client_tls(), identity=PAYMENTS)
    assert ctx is not None
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1")
    assert isinstance(obj, MeshSSLObject)
    with socket.socket() as raw:
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        assert isinstance(sock, MeshSSLSocket)
        sock.close()


def test_without_identity_the_host_name_is_verified(pki: PKI, driver: str) -> None:
    """With no pinned identity, a certificate that does not name the dialled host is refused."""
    no_ip = pki.ca.issue("payments", name="payments-dns", dns=["payments.internal"])
    ctx = client_context(TLS(mode="tls", ca=str(pki.ca.cert_path)), identity=None)
    assert ctx is not None
    with (
        raw_tls_server(server_context(pki.settings(server=no_ip))) as (port, _),
        pytest.raises(httpx.ConnectError, match="does not name the IP address dialled"),
    ):
        _get(ctx, f"https://127.0.0.1:{port}/", driver)


def test_identity_pinned_ignores_the_host_name(pki: PKI) -> None:
    """With an identity pinned, the SPIFFE ID decides even if the dialled IP is not in the cert."""
    no_ip = pki.ca.issue("payments", name="payments-dns", dns=["payments.internal"])
    ctx = client_context(pki.client_tls(), identity=PAYMENTS)
    assert ctx is not None
    with raw_tls_server(server_context(pki.settings(server=no_ip))) as (port, _):
        assert _get(ctx, f"https://127.0.0.1:{port}/", "sync").text == "ok"


def _custom_leaf(pki: PKI, sans: list[x509.GeneralName]) -> MeshSettings:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom")]))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.server.not_before)
        .not_valid_after(pki.server.not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(pki.ca.key, hashes.SHA256())
    )
    cert_path, key_path = pki.directory / "custom.pem", pki.directory / "custom.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki.settings().model_copy(update={"tls_cert": cert_path, "tls_key": key_path})


def test_server_with_two_spiffe_ids_is_refused(pki: PKI) -> None:
    """A certificate carrying two SPIFFE IDs is not an SVID and fails even if one matches."""
    settings = _custom_leaf(
        pki, [x509.UniformResourceIdentifier(PAYMENTS), x509.UniformResourceIdentifier(ORDERS)]
    )
    ctx = client_context(pki.client_tls(), identity=PAYMENTS)
    assert ctx is not None
    with (
        raw_tls_server(server_context(settings)) as (port, _),
        pytest.raises(PeerIdentityError, match="several SPIFFE IDs") as info,
    ):
        _get(ctx, f"https://127.0.0.1:{port}/", "sync")
    assert info.value.presented == (PAYMENTS, ORDERS)
