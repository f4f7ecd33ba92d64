"""What happens at the end of every TLS handshake meshlib makes or accepts.

`MeshSSLContext` is an `ssl.SSLContext` whose `sslsocket_class` and
`sslobject_class` override `do_handshake`. Every connection goes through
one of them: blocking sockets (`wrap_socket`: httpcore's sync backend,
werkzeug, gunicorn) and memory BIOs (`wrap_bio`: anyio, asyncio, uvloop,
uvicorn). Right after the handshake, before the caller can send a byte:

- a client with a pinned identity checks that the server's certificate
  carries exactly that SPIFFE URI SAN, else raises
  [`PeerIdentityError`][meshlib.errors.PeerIdentityError] naming the expected and the
  presented identities;
- a certificate the chain check rejected is re-raised with what it means
  for a mesh (expired, not yet valid, signed by another CA) and which CA
  bundle was used;
- a server logs why it refused a client (no certificate, expired, wrong CA)
  on the `meshlib.security` logger, since servers otherwise drop those
  handshakes silently.

A failing handshake raises into the one connection attempt; the serving
process and its other connections carry on.
"""

from __future__ import annotations

import logging
import ssl

from meshlib.errors import PeerIdentityError
from meshlib.security.identity import spiffe_ids

__all__ = ["MeshSSLContext", "MeshSSLObject", "MeshSSLSocket"]

logger = logging.getLogger("meshlib.security")

# OpenSSL X509_V_ERR_* codes and what they mean in a mesh.
_HINTS = {
    9: "it is not valid yet (check the clocks, or wait for its notBefore)",
    10: "it has expired; issue a fresh one (`meshlib ca issue`) and let rotation pick it up",
    2: "it is not signed by a CA in {ca}",
    18: "it is self-signed and not in {ca}",
    19: "its chain ends in a CA that is not in {ca}",
    20: "it is not signed by a CA in {ca}",
    21: "it is not signed by a CA in {ca}",
    62: "it does not name the host dialled; pin the service's SPIFFE identity to verify by identity instead",
    64: "it does not name the IP address dialled; pin the service's SPIFFE identity to verify by identity instead",
}
_QUIET = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class MeshSSLContext(ssl.SSLContext):
    """An SSLContext that checks the peer's SPIFFE identity at the end of each handshake.

    `expected_identity` (client side) is the SPIFFE ID the server must
    prove; `ca_description` names the CA bundle in error messages.

    ```pycon
    >>> ctx = MeshSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    >>> ctx.expected_identity = "spiffe://example.org/payments"
    ```
    """

    expected_identity: str | None = None
    ca_description: str = "the system trust store"

    sslsocket_class: type[ssl.SSLSocket]
    sslobject_class: type[ssl.SSLObject]


class _BioPeerIdentityError(PeerIdentityError, OSError):
    """A PeerIdentityError that asyncio's TLS transport treats as the failed handshake it is.

    asyncio (`sslproto`, under aiohttp and uvicorn) logs any exception from a
    handshake that is not an `OSError` as a fatal transport error, with its
    traceback; an `OSError` it closes quietly and hands to the caller. anyio
    (under httpcore) lets it through unchanged, so callers still catch
    `PeerIdentityError`. Only memory-BIO connections raise it: httpcore's sync
    backend would turn an `OSError` from a blocking socket into a plain `ConnectError`.
    """


def _check_identity(
    conn: ssl.SSLSocket | ssl.SSLObject,
    expected: str,
    error: type[PeerIdentityError] = PeerIdentityError,
) -> None:
    presented = spiffe_ids(conn.getpeercert() or {})
    if presented == (expected,):
        return
    if not presented:
        shown = "no SPIFFE ID"
    elif len(presented) > 1:
        shown = f"several SPIFFE IDs ({', '.join(presented)}), which an X509-SVID must not carry"
    else:
        shown = presented[0]
    raise error(
        f"the server at {conn.server_hostname or 'the remote address'} is not {expected}: "
        f"its certificate presents {shown}",
        expected=expected,
        presented=presented,
    )


def _explain(conn: ssl.SSLSocket | ssl.SSLObject, exc: ssl.SSLCertVerificationError) -> Exception:
    context = conn.context
    ca = getattr(context, "ca_description", "the trusted CA bundle")
    hint = _HINTS.get(exc.verify_code or 0)
    if hint is None:
        return exc
    whose = "the client's" if conn.server_side else "the server's"
    message = (
        f"{whose} certificate was rejected: {exc.verify_message}: "
        f"{hint.format(ca=ca)} (SSL: CERTIFICATE_VERIFY_FAILED)"
    )
    err = ssl.SSLCertVerificationError(1, message)
    err.verify_code = exc.verify_code
    err.verify_message = exc.verify_message
    err.reason = exc.reason
    err.library = exc.library
    return err


def _peer(conn: ssl.SSLSocket | ssl.SSLObject) -> str:
    if isinstance(conn, ssl.SSLSocket):
        try:
            host, port, *_ = conn.getpeername()
        except (OSError, ValueError):
            return "a client"
        return f"{host}:{port}"
    return "a client"


def _failed(conn: ssl.SSLSocket | ssl.SSLObject, exc: ssl.SSLError) -> Exception:
    if isinstance(exc, _QUIET):
        return exc
    explained = _explain(conn, exc) if isinstance(exc, ssl.SSLCertVerificationError) else exc
    if conn.server_side:
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            logger.debug("TLS handshake from %s ended early: %s", _peer(conn), exc)
        else:
            logger.warning("TLS handshake with %s failed: %s", _peer(conn), explained)
    return explained


def _finished(conn: ssl.SSLSocket | ssl.SSLObject) -> None:
    if conn.server_side:
        return
    expected = getattr(conn.context, "expected_identity", None)
    if expected is not None:
        bio = isinstance(conn, ssl.SSLObject)
        _check_identity(conn, expected, _BioPeerIdentityError if bio else PeerIdentityError)


class MeshSSLSocket(ssl.SSLSocket):
    """The blocking-socket twin: `wrap_socket` connections run the mesh checks."""

    def do_handshake(self, block: bool = False) -> None:
        """Handshake, then check the peer; on failure close the socket and raise."""
        try:
            super().do_handshake(block)
            _finished(self)
        except ssl.SSLError as exc:
            raised = _failed(self, exc)
            if raised is exc:
                raise
            raise raised from exc
        except PeerIdentityError:
            self.close()  # SSLSocket._create closes only on OSError/ValueError
            raise


class MeshSSLObject(ssl.SSLObject):
    """The memory-BIO twin: `wrap_bio` connections (asyncio, anyio, uvicorn) run the mesh checks."""

    def do_handshake(self) -> None:
        """Handshake (called again after each want-read), then check the peer."""
        try:
            super().do_handshake()
        except ssl.SSLError as exc:
            raised = _failed(self, exc)
            if raised is exc:
                raise
            raise raised from exc
        _finished(self)


MeshSSLContext.sslsocket_class = MeshSSLSocket
MeshSSLContext.sslobject_class = MeshSSLObject
