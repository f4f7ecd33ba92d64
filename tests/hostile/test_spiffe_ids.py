"""SPIFFE IDs are validated per the SPIFFE ID specification, with py-spiffe as the oracle.

meshlib agrees with py-spiffe on every ID below, except where it is
stricter on purpose: upper case in the scheme or trust domain (the
specification allows only lowercase; py-spiffe lower-cases silently, go-spiffe
refuses), a trust-domain ID without a path (it names no workload), and IDs
longer than the specification's limits. A certificate carrying an invalid ID
proves no identity, so not even an `allow: ["*"]` rule lets it in.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from cryptography import x509
from spiffe import SpiffeId

from meshlib.policy.model import Policy, validate_spiffe_id
from meshlib.policy.store import PolicyStore
from meshlib.security.identity import peer_identity_from_cert
from tests.inbound.certs import Issued, TestCA

from .apps import Service, raw_request, serve_service

AGREED = [
    "spiffe://example.org/payments",
    "spiffe://example.org/ns/prod/sa/payments",
    "spiffe://ex_ample-1.org/a.b-c_D9",
    "spiffe://example.org/..a/a..",
    "spiffe://example.org/a/../b",
    "spiffe://example.org/a/./b",
    "spiffe://example.org/..",
    "spiffe://example.org/.",
    "spiffe://example.org//a",
    "spiffe://example.org/a/",
    "spiffe://example.org/",
    "spiffe://example.org/a%20b",
    "spiffe://example.org/a%2Fb",
    "spiffe://example.org/%2e%2e",
    "spiffe://ex%61mple.org/a",
    "spiffe://example.org/a b",
    "spiffe://example.org/a?x=1",
    "spiffe://example.org/a#frag",
    "spiffe://example.org:8443/a",
    "spiffe://user@example.org/a",
    "spiffe:///a",
    "spiffe://exa mple.org/a",
    "spiffe://example.org/caf\u00e9",
    "spiffe://example.org/a~b",
    "spiffe://example.org/a:b",
    "spiffe://example.org/a\\b",
    "spiffe://example.org/a\x00",
    "https://example.org/a",
    "spiffe:example.org/a",
    "",
]
STRICTER = [
    "spiffe://Example.org/a",
    "SPIFFE://example.org/a",
    "Spiffe://example.org/a",
    "spiffe://example.org",
    "spiffe://" + "a" * 256 + "/x",
    "spiffe://example.org/" + "a" * 2100,
]


def _oracle(value: str) -> bool:
    try:
        SpiffeId(value)
    except Exception:  # py-spiffe raises its own error types, and ValueError for some
        return False
    return True


def _ours(value: str) -> bool:
    try:
        validate_spiffe_id(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", AGREED, ids=repr)
def test_meshlib_agrees_with_py_spiffe(value: str) -> None:
    """Valid and invalid alike, meshlib's verdict is py-spiffe's."""
    assert _ours(value) == _oracle(value)


@pytest.mark.parametrize("value", STRICTER, ids=lambda v: repr(v[:40]))
def test_meshlib_is_stricter_where_the_spec_says_must(value: str) -> None:
    """Upper case, trust-domain-only and over-long IDs are refused (py-spiffe accepts them)."""
    assert _oracle(value)
    assert not _ours(value)


def test_policy_identities_are_validated_with_the_field_named() -> None:
    """A policy naming an invalid ID is refused at the field holding it."""
    from meshlib import load_policy

    doc = {
        "version": 1,
        "services": {
            "payments": {
                "endpoints": ["http://127.0.0.1:8001"],
                "identity": "spiffe://example.org/a/../admin",
            }
        },
    }
    with pytest.raises(ValueError, match=r"services\.payments\.identity") as exc:
        load_policy(doc)
    assert "'..' segment" in str(exc.value)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/orders/../admin",
        "spiffe://example.org/orders%2f..%2fadmin",
        "spiffe://EXAMPLE.org/orders",
        "spiffe://example.org/orders/",
        "spiffe://example.org",
    ],
)
def test_certificates_with_invalid_ids_prove_no_identity(uri: str) -> None:
    """peer_identity_from_cert returns None for a URI SAN that is not a valid SPIFFE ID."""
    assert peer_identity_from_cert({"subjectAltName": (("URI", uri),)}) is None
    good = "spiffe://example.org/orders"
    assert peer_identity_from_cert({"subjectAltName": (("URI", good),)}) == good


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA the server trusts, which (carelessly) signs whatever SANs it is asked for."""
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def service(ca: TestCA) -> Iterator[tuple[Service, TestCA]]:
    """Starlette behind the mesh: any caller with a verified identity may call /v1/."""
    inbound = {"authz": {"default": "deny", "rules": [{"path_prefix": "/v1/", "allow": ["*"]}]}}
    store = PolicyStore(
        Policy.model_validate({"version": 1, "services": {"payments": {"inbound": inbound}}})
    )
    with serve_service("starlette", store, ca, ca.server()) as running:
        yield running, ca


def _context(ca: TestCA, issued: Issued) -> ssl.SSLContext:
    return ca.client_context(issued)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/orders/../admin",
        "spiffe://example.org/a%20b",
        "spiffe://Example.org/orders",
        "spiffe://example.org//orders",
    ],
)
def test_an_invalid_id_in_a_signed_certificate_is_not_any_identity(
    service: tuple[Service, TestCA], uri: str
) -> None:
    """Even `allow: ["*"]` refuses a caller whose certificate's SPIFFE ID breaks the spec."""
    running, ca = service
    bad = ca.issue("bad", x509.UniformResourceIdentifier(uri))
    status, _ = raw_request(running, _context(ca, bad), b"/v1/x")
    assert status == 403
    good = ca.issue("good", x509.UniformResourceIdentifier("spiffe://example.org/orders"))
    assert raw_request(running, _context(ca, good), b"/v1/x")[0] == 200
