"""Authenticator: separate read and publish rights, constant-time token checks, clear refusals."""

from __future__ import annotations

import pytest

from meshlib.controlplane.auth import ANONYMOUS, Authenticator, Denied, Right, parse_token


def test_token_names() -> None:
    """'name=secret' names the token for the history; a bare token gets a numbered name."""
    assert parse_token("alice=s3cret", 1) == ("alice", b"s3cret")
    assert parse_token("c2VjcmV0==", 2) == ("token-2", b"c2VjcmV0==")


def test_publish_token_may_read_and_publish_read_token_only_reads() -> None:
    """A publish token holds both rights; a read token only reading."""
    auth = Authenticator(read_tokens=["r"], publish_tokens=["alice=p"])
    alice = auth.authenticate({"authorization": "Bearer p"})
    assert alice.name == "alice"
    auth.require(alice, Right.PUBLISH)
    reader = auth.authenticate({"authorization": "Bearer r"})
    auth.require(reader, Right.READ)
    with pytest.raises(Denied) as info:
        auth.require(reader, Right.PUBLISH)
    assert info.value.status == 403


def test_unknown_or_malformed_tokens_are_401_and_not_echoed() -> None:
    """A wrong token or a non-bearer header is refused with 401; the message never repeats it."""
    auth = Authenticator(publish_tokens=["p"])
    for header in ("Bearer wrong-secret", "Basic d3Jvbmc=", "Bearer "):
        with pytest.raises(Denied) as info:
            auth.authenticate({"authorization": header})
        assert info.value.status == 401
        assert "wrong" not in info.value.message
        assert "d3Jvbmc" not in info.value.message


def test_anonymous_reads_only_when_no_read_credentials_are_configured() -> None:
    """Reading is open without read tokens; publishing always needs a token."""
    open_auth = Authenticator(publish_tokens=["p"])
    open_auth.require(ANONYMOUS, Right.READ)
    with pytest.raises(Denied) as info:
        open_auth.require(ANONYMOUS, Right.PUBLISH)
    assert info.value.status == 401
    closed = Authenticator(read_tokens=["r"], publish_tokens=["p"])
    with pytest.raises(Denied):
        closed.require(ANONYMOUS, Right.READ)


def test_publishing_disabled_without_publish_credentials() -> None:
    """With no publish token or identity configured, publish is refused and says how to enable it."""
    auth = Authenticator()
    with pytest.raises(Denied, match="--publish-token") as info:
        auth.require(ANONYMOUS, Right.PUBLISH)
    assert info.value.status == 403


def test_mtls_identity_grants_its_rights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified client certificate whose SPIFFE ID is configured may publish."""
    import meshlib.security.identity as identity

    monkeypatch.setattr(
        identity, "peer_identity_from_cert", lambda cert: "spiffe://example.org/deployer"
    )
    auth = Authenticator(publish_identities=["spiffe://example.org/deployer"])
    principal = auth.authenticate({}, {"client_cert_chain": ["-----BEGIN CERTIFICATE-----"]})
    assert principal.name == "spiffe://example.org/deployer"
    auth.require(principal, Right.PUBLISH)
    assert auth.authenticate({}, {"client_cert_chain": []}) is ANONYMOUS


def test_only_read_credentials_close_reading() -> None:
    """Publish tokens or identities alone leave reading open; a read identity closes it."""
    assert Authenticator(publish_tokens=["p"], publish_identities=["spiffe://e.org/d"]).open_read
    assert not Authenticator(read_identities=["spiffe://e.org/r"]).open_read
