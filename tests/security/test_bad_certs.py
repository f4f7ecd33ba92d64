"""Each bad certificate is refused with a message naming the problem; servers keep serving."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from meshlib.errors import CertificateError, PeerIdentityError
from meshlib.policy.model import TLS
from meshlib.security.ca import DevCA, IssuedCert
from meshlib.security.tls import client_context, server_context
from tests.security.conftest import ORDERS, PAYMENTS, PKI, issue_server, past, serve_identity


def _call(tls: TLS, url: str, identity: str | None = PAYMENTS) -> httpx.Response:
    with httpx.Client(verify=client_context(tls, identity=identity)) as client:  # type: ignore[arg-type]
        return client.get(url)


def _other_ca(tmp_path: Path) -> DevCA:
    return DevCA.create("example.org", tmp_path / "other-ca")


SERVER_CASES = {
    "expired": (
        "certificate has expired",
        lambda pki, tmp: issue_server(pki.ca, "old", not_before=past(3)),
    ),
    "not-yet-valid": (
        "it is not valid yet",
        lambda pki, tmp: issue_server(pki.ca, "future", not_before=past(-2)),
    ),
    "wrong-ca": ("it is not signed by a CA in", lambda pki, tmp: issue_server(_other_ca(tmp))),
}


@pytest.mark.parametrize("case", sorted(SERVER_CASES))
def test_bad_server_certificate_is_refused_by_the_client(
    pki: PKI, tmp_path: Path, server_kind: str, case: str
) -> None:
    """Expired, not-yet-valid and foreign-CA server certificates fail the client's handshake clearly."""
    message, make = SERVER_CASES[case]
    bad: IssuedCert = make(pki, tmp_path)
    with (
        serve_identity(server_kind, pki.settings(server=bad)) as server,
        pytest.raises(httpx.ConnectError, match=message) as info,
    ):
        _call(pki.client_tls(), server.url)
    assert "server's certificate was rejected" in str(info.value)
    if case == "wrong-ca":
        assert str(pki.ca.cert_path) in str(info.value)  # names the CA bundle it trusted


def test_wrong_server_identity_is_refused(pki: PKI, server_kind: str) -> None:
    """A real server proving payments fails a client expecting orders, naming both."""
    with serve_identity(server_kind, pki.settings()) as server:
        with pytest.raises(
            PeerIdentityError, match=f"is not {ORDERS}: its certificate presents {PAYMENTS}"
        ):
            _call(pki.client_tls(), server.url, identity=ORDERS)
        assert _call(pki.client_tls(), server.url).text == ORDERS


def _wait_for(caplog: pytest.LogCaptureFixture, text: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.name == "meshlib.security" and text in record.getMessage():
                return record.getMessage()
        time.sleep(0.02)
    raise AssertionError(f"no meshlib.security log containing {text!r}: {caplog.messages}")


def test_bad_client_certificates_are_refused_and_the_server_keeps_serving(
    pki: PKI, tmp_path: Path, server_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Expired, not-yet-valid, foreign-CA and missing client certificates are refused and logged; good clients still pass after each."""
    caplog.set_level(logging.INFO, logger="meshlib.security")
    other = _other_ca(tmp_path)
    cases = [
        (
            "certificate has expired",
            pki.client_tls(pki.ca.issue("orders", name="old", not_before=past(3))),
        ),
        (
            "certificate is not yet valid",
            pki.client_tls(pki.ca.issue("orders", name="new", not_before=past(-2))),
        ),
        ("it is not signed by a CA in", pki.client_tls(other.issue("orders"))),
        ("peer did not return a certificate", TLS(mode="tls", ca=str(pki.ca.cert_path))),
    ]
    with serve_identity(server_kind, pki.settings()) as server:
        for message, tls in cases:
            caplog.clear()
            with pytest.raises(httpx.TransportError):
                _call(tls, server.url)
            logged = _wait_for(caplog, message)
            assert "TLS handshake with" in logged
            assert _call(pki.client_tls(), server.url).text == ORDERS


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_unparsable_files_are_refused_at_build_time(pki: PKI, tmp_path: Path, which: str) -> None:
    """A garbage certificate, key or CA file raises CertificateError naming the file."""
    garbage = tmp_path / f"garbage-{which}.pem"
    garbage.write_text("not a PEM file\n")
    tls = pki.client_tls().model_copy(update={which: str(garbage)})
    with pytest.raises(CertificateError, match=str(garbage)):
        client_context(tls, identity=PAYMENTS)
    settings = pki.settings().model_copy(update={f"tls_{which}": garbage})
    with pytest.raises(CertificateError, match=f"{garbage} \\(MESH_TLS_{which.upper()}\\)"):
        server_context(settings)


def test_key_that_does_not_match_is_explained(pki: PKI) -> None:
    """A certificate paired with another service's key is refused with the reason in words."""
    tls = pki.client_tls().model_copy(update={"key": str(pki.server.key_path)})
    with pytest.raises(
        CertificateError, match="the private key does not belong to the certificate"
    ):
        client_context(tls, identity=PAYMENTS)


def test_missing_files_and_settings_are_named(pki: PKI, tmp_path: Path) -> None:
    """Missing files and unset settings are errors that say which one."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(
        CertificateError, match=f"certificate {missing} \\(policy tls.cert\\): no such file"
    ):
        client_context(pki.client_tls().model_copy(update={"cert": str(missing)}), identity=None)
    with pytest.raises(
        CertificateError, match=f"CA bundle {missing} \\(policy tls.ca\\): no such file"
    ):
        client_context(pki.client_tls().model_copy(update={"ca": str(missing)}), identity=None)
    with pytest.raises(CertificateError, match=r"tls\.cert / MESH_TLS_CERT is not set"):
        client_context(TLS(mode="mutual", ca=str(pki.ca.cert_path)), identity=None)
    with pytest.raises(CertificateError, match="set MESH_TLS_CERT and MESH_TLS_KEY"):
        server_context(pki.settings().model_copy(update={"tls_cert": None}))
    with pytest.raises(CertificateError, match="set MESH_TLS_CA"):
        server_context(pki.settings().model_copy(update={"tls_ca": None}))


def test_tls_mode_without_a_ca_uses_certifi(pki: PKI) -> None:
    """mode tls with no CA anywhere verifies against certifi's bundle, as httpx does, and says so."""
    import certifi

    ctx = client_context(TLS(mode="tls"), identity=None)
    assert ctx is not None
    assert certifi.where() in ctx.ca_description  # type: ignore[attr-defined]
    with (
        serve_identity("uvicorn", pki.settings()) as server,
        pytest.raises(
            httpx.ConnectError,
            match=r"(CA that is not|not signed by a CA) in certifi's bundle",
        ),
    ):
        _call(TLS(mode="tls"), server.url, identity=None)


def test_contexts_are_shared_per_files_and_identity(pki: PKI) -> None:
    """One context per (mode, files, identity): equal policies share it; another identity does not."""
    a = client_context(pki.client_tls(), identity=PAYMENTS)
    assert client_context(pki.client_tls(), identity=PAYMENTS) is a
    assert client_context(pki.client_tls(), identity=ORDERS) is not a
    assert client_context(TLS(mode="disabled"), identity=PAYMENTS) is None
    with pytest.raises(CertificateError, match="cannot pin the server identity"):
        client_context(pki.client_tls(), identity="payments")


def test_settings_fill_in_what_the_policy_leaves_out(pki: PKI) -> None:
    """Without paths in the policy, MESH_TLS_* settings supply the CA, certificate and key."""
    settings = pki.settings(server=pki.client)  # orders' cert/key as this process's identity
    ctx = client_context(TLS(mode="mutual"), identity=PAYMENTS, settings=settings)
    assert ctx is not None
    with serve_identity("werkzeug", pki.settings()) as server, httpx.Client(verify=ctx) as client:
        assert client.get(server.url).text == ORDERS
