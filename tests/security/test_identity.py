"""SPIFFE ID parsing and a peer's identity from a certificate in every form a server hands over."""

from __future__ import annotations

import ssl

import pytest

from meshlib.errors import CertificateError
from meshlib.security.identity import (
    SpiffeID,
    identity_from_environ,
    identity_from_scope,
    peer_identity_from_cert,
    spiffe_ids,
)
from tests.security.conftest import ORDERS, PKI


def test_parse_spiffe_id() -> None:
    """A SPIFFE ID splits into trust domain and path; the service is the last segment."""
    sid = SpiffeID.parse("spiffe://example.org/ns/prod/payments")
    assert (sid.trust_domain, sid.path, sid.service) == (
        "example.org",
        "/ns/prod/payments",
        "payments",
    )
    assert str(sid) == "spiffe://example.org/ns/prod/payments"
    assert SpiffeID.for_service("example.org", "orders") == SpiffeID.parse(ORDERS)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://example.org/a", "is not a SPIFFE ID"),
        ("spiffe://Example.org/a", "only lowercase letters"),
        ("spiffe://example.org", "needs a path"),
        ("spiffe://example.org/a?x=1", "no percent-encoding, query or fragment"),
    ],
)
def test_bad_spiffe_ids_are_explained(value: str, message: str) -> None:
    """Malformed SPIFFE IDs raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        SpiffeID.parse(value)


def test_identity_from_every_certificate_form(pki: PKI) -> None:
    """The same identity comes out of a PEM string, DER bytes and a getpeercert() dict."""
    pem = pki.client.chain[0]
    der = ssl.PEM_cert_to_DER_cert(pem)
    as_dict = {"subjectAltName": (("URI", ORDERS),)}
    assert peer_identity_from_cert(pem) == ORDERS
    assert peer_identity_from_cert(der) == ORDERS
    assert peer_identity_from_cert(as_dict) == ORDERS


def test_no_or_several_spiffe_ids_mean_no_identity() -> None:
    """Only exactly one spiffe:// URI SAN is an identity; other URIs and DNS names do not count."""
    assert peer_identity_from_cert(None) is None
    assert peer_identity_from_cert({}) is None  # getpeercert() of an unverified peer
    assert peer_identity_from_cert({"subjectAltName": (("DNS", "orders"),)}) is None
    two = {"subjectAltName": (("URI", ORDERS), ("URI", "spiffe://example.org/x"))}
    assert peer_identity_from_cert(two) is None
    mixed = {"subjectAltName": (("URI", "https://orders"), ("URI", ORDERS))}
    assert spiffe_ids(mixed) == (ORDERS,)


def test_garbage_is_a_certificate_error() -> None:
    """Bytes or text that are not a certificate raise CertificateError."""
    with pytest.raises(CertificateError, match=r"not an X\.509 certificate"):
        peer_identity_from_cert("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError):
        peer_identity_from_cert(b"\x30\x03\x02\x01\x00")
    with pytest.raises(TypeError):
        spiffe_ids(42)  # type: ignore[arg-type]


def test_identity_from_asgi_scope_and_wsgi_environ(pki: PKI) -> None:
    """The ASGI tls extension and SSL_CLIENT_CERT both yield the caller; garbage and absence yield None."""
    pem = pki.client.chain[0]
    scope = {"type": "http", "extensions": {"tls": {"client_cert_chain": (pem,)}}}
    assert identity_from_scope(scope) == ORDERS
    assert identity_from_scope({"type": "http"}) is None
    assert (
        identity_from_scope({"type": "http", "extensions": {"tls": {"client_cert_chain": ()}}})
        is None
    )
    assert identity_from_environ({"SSL_CLIENT_CERT": pem}) == ORDERS
    assert identity_from_environ({"SSL_CLIENT_CERT": "garbage"}) is None
    assert identity_from_environ({"HTTP_SSL_CLIENT_CERT": pem}) is None  # a header is never trusted
