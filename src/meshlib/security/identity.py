"""SPIFFE identities: parse and match them, and read a peer's identity from its certificate.

A service's identity is the one `spiffe://<trust-domain>/<path>` URI in the
subject alternative names of its X.509 certificate (an X509-SVID). meshlib
compares identities as exact strings: `spiffe://example.org/pay` is not
`spiffe://example.org/payments`, and a DNS name never stands in for one.
IDs are validated per the SPIFFE ID specification
(`meshlib.policy.model.validate_spiffe_id`) wherever they come from: a
certificate whose URI is not a valid SPIFFE ID (`/../`, `%2e`, upper
case, an empty segment) proves no identity at all:

```python
peer_identity_from_cert(ssl_sock.getpeercert())          # dict: stdlib only
peer_identity_from_cert(scope_tls["client_cert_chain"][0])  # PEM: needs cryptography
identity_from_scope(scope)                                # ASGI, via meshlib.serve's bridge
identity_from_environ(environ)                            # WSGI, environ["SSL_CLIENT_CERT"]
```

Parsing PEM or DER needs the `cryptography` package; results are cached per
certificate, so the cost is paid once per peer certificate, not per request.
The certificate handed to the app was verified by the server's TLS stack
against the mesh CA during the handshake; nothing here trusts a header.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshlib.errors import CertificateError
from meshlib.policy.model import validate_spiffe_id

__all__ = [
    "WSGI_CLIENT_CERT",
    "SpiffeID",
    "identity_from_environ",
    "identity_from_scope",
    "peer_identity_from_cert",
    "spiffe_ids",
]

logger = logging.getLogger("meshlib.security")

WSGI_CLIENT_CERT = "SSL_CLIENT_CERT"
"""The WSGI environ key holding the verified client certificate as PEM (Apache, nginx, werkzeug)."""

CertLike = Mapping[str, Any] | bytes | str


@dataclass(frozen=True, slots=True)
class SpiffeID:
    """A parsed SPIFFE ID.

    ```pycon
    >>> sid = SpiffeID.parse("spiffe://example.org/payments")
    >>> sid.trust_domain, sid.path, sid.service
    ('example.org', '/payments', 'payments')
    ```
    """

    trust_domain: str
    path: str

    @classmethod
    def parse(cls, value: str) -> SpiffeID:
        """Parse `value`; raises ValueError naming what is wrong with it."""
        trust_domain, _, path = validate_spiffe_id(value)[len("spiffe://") :].partition("/")
        return cls(trust_domain, "/" + path)

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeID:
        """The conventional identity of `service`: `spiffe://<trust_domain>/<service>`."""
        return cls.parse(f"spiffe://{trust_domain}/{service}")

    @property
    def service(self) -> str:
        """The last path segment, by meshlib's convention the service name."""
        return self.path.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def _uris_from_dict(cert: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(value for kind, value in cert.get("subjectAltName", ()) if kind == "URI")


@functools.lru_cache(maxsize=1024)
def _uris_from_encoded(cert: bytes | str) -> tuple[str, ...]:
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - cryptography is installed wherever tests run
        from meshlib.extras import install_hint

        raise ImportError(
            "reading an identity from a PEM or DER certificate needs the cryptography "
            f"package: run `{install_hint('ca')}`"
        ) from None
    try:
        if isinstance(cert, str):
            parsed = x509.load_pem_x509_certificate(cert.encode("ascii"))
        else:
            parsed = x509.load_der_x509_certificate(cert)
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateError(f"not an X.509 certificate: {exc}") from None
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_ids(cert: CertLike) -> tuple[str, ...]:
    """Every `spiffe://` URI SAN of `cert`, in certificate order.

    `cert` is a `getpeercert()` dict, DER bytes or a PEM string. An
    X509-SVID carries exactly one; callers treat anything else as no identity.

    ```pycon
    >>> spiffe_ids({"subjectAltName": (("URI", "spiffe://example.org/a"), ("DNS", "a"))})
    ('spiffe://example.org/a',)
    ```
    """
    if isinstance(cert, Mapping):
        uris = _uris_from_dict(cert)
    elif isinstance(cert, bytes | str):
        uris = _uris_from_encoded(cert)
    else:
        raise TypeError(f"expected a getpeercert() dict, DER bytes or PEM str, got {type(cert)}")
    return tuple(uri for uri in uris if uri[:9].lower() == "spiffe://")


def peer_identity_from_cert(cert: CertLike | None) -> str | None:
    """The SPIFFE ID a certificate proves, or None when it carries none, several or an invalid one.

    Accepts `SSLSocket.getpeercert()` (a dict; empty when the peer was not
    verified), DER bytes, or a PEM string (`SSL_CLIENT_CERT`, the ASGI
    `tls` extension's `client_cert_chain[0]`).

    ```pycon
    >>> peer_identity_from_cert({"subjectAltName": (("URI", "spiffe://example.org/orders"),)})
    'spiffe://example.org/orders'
    ```

    Raises:
        CertificateError: `cert` is bytes or text that is not a certificate.
    """
    if not cert:
        return None
    ids = spiffe_ids(cert)
    if len(ids) != 1:
        return None
    return ids[0] if _valid_id(ids[0]) else None


@functools.lru_cache(maxsize=1024)
def _valid_id(uri: str) -> bool:
    try:
        validate_spiffe_id(uri)
    except ValueError as exc:
        logger.warning("ignoring a certificate's identity: %s", exc)
        return False
    return True


def _first(chain: Iterable[str] | None) -> str | None:
    if not chain:
        return None
    return next(iter(chain), None)


def _safe_identity(pem: str | None, where: str) -> str | None:
    if not pem:
        return None
    try:
        return peer_identity_from_cert(pem)
    except CertificateError as exc:
        logger.warning("ignoring the client certificate in %s: %s", where, exc)
        return None


def identity_from_scope(scope: Mapping[str, Any]) -> str | None:
    """The caller's SPIFFE ID from an ASGI scope's `tls` extension, or None.

    uvicorn fills the extension when run through [`meshlib.serve.serve`][meshlib.serve.serve]
    (or its [`uvicorn_server`][meshlib.serve.uvicorn_server]); other servers that
    implement the ASGI TLS extension work the same way.

    ```pycon
    >>> identity_from_scope({"type": "http", "extensions": {}}) is None
    True
    ```
    """
    tls = (scope.get("extensions") or {}).get("tls")
    if not tls:
        return None
    return _safe_identity(_first(tls.get("client_cert_chain")), "the ASGI tls extension")


def identity_from_environ(environ: Mapping[str, Any]) -> str | None:
    """The caller's SPIFFE ID from a WSGI environ's `SSL_CLIENT_CERT` (PEM), or None.

    werkzeug's server sets it from the TLS socket; under gunicorn,
    `meshlib.serve.PeerCertMiddleware` does. Client headers arrive
    as `HTTP_*` keys, so a caller cannot forge this key.

    ```pycon
    >>> identity_from_environ({}) is None
    True
    ```
    """
    return _safe_identity(environ.get(WSGI_CLIENT_CERT), f"environ[{WSGI_CLIENT_CERT!r}]")
