"""SSLContexts for the mesh: clients from policy, servers from settings, both rotating.

Client side, from a destination's policy `tls` section:

```python
ctx = client_context(policy.defaults.tls, identity="spiffe://example.org/payments")
httpx.Client(verify=ctx)           # None when tls.mode is "disabled"
```

- `tls`: verify the server against `tls.ca` (else `MESH_TLS_CA`, else
  certifi's bundle, as httpx does).
- `mutual`: also present our certificate (`tls.cert`/`tls.key`, else
  `MESH_TLS_CERT`/`MESH_TLS_KEY`).

**Identity and host names.** With an `identity` pinned, the server must
prove exactly that SPIFFE ID (the one URI SAN of its certificate), checked at
the end of the handshake, before a request byte is written (see
`meshlib.security.handshake`), and host name checking is off: SPIFFE
certificates name a workload, not the address a client dials (an endpoint
IP, a pod name), and the SPIFFE ID is the stronger statement. Without a
pinned identity, the usual host name check applies.

Server side, from `MESH_TLS_*`: `server_context` (used by
[`meshlib.serve`][meshlib.serve]) requires and verifies client certificates.

**Rotation: swap contexts, never reload one in place.** A context is handed
out once and kept: httpx builds one transport per endpoint pool with
`verify=<context>`, uvicorn and werkzeug keep theirs for the life of the
server. Reloading files into that same context would be wrong twice over:
`load_cert_chain` sets the certificate and then the key without holding
the GIL in between, so a handshake starting at that moment on another
thread gets a certificate without its key; and `load_verify_locations`
only ever adds CAs, so a CA retired after an overlap would stay trusted.
Instead the context handed out is a `RotatingSSLContext`, a stable
façade that creates each new connection (`wrap_socket`/`wrap_bio`) from
the newest `MeshSSLContext` built from
the files (see `meshlib.security.reload`: a stat at most once per
second, a failed rebuild keeps the previous material). New handshakes use
new material; open connections finish on what they started with. Contexts
are cached per (mode, ca, cert, key, identity), so every pool calling the
same service shares one.

The façade itself trusts nothing and holds no certificate, so code that
bypassed `wrap_socket`/`wrap_bio` would fail closed. Only
`set_alpn_protocols` (which httpcore calls per connection) is carried over
to rebuilt contexts; other settings made on the returned object are not.

Cost: a stat of the files at most once per second per context, and, on the
async path, one worker-thread hop per *new* connection, because anyio calls
`wrap_bio` of any `SSLContext` subclass through `to_thread` (pooled
connections pay nothing).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import CertificateError
from meshlib.policy.model import TLS
from meshlib.security.handshake import MeshSSLContext
from meshlib.security.identity import SpiffeID
from meshlib.security.reload import DEFAULT_RELOAD_INTERVAL, Reloading
from meshlib.settings import MeshSettings

__all__ = [
    "RotatingSSLContext",
    "TLSFiles",
    "clear_context_cache",
    "client_context",
    "server_context",
]


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    origin: str  # where the path came from, for messages: "policy tls.ca", "MESH_TLS_CA"

    def __str__(self) -> str:
        return f"{self.path} ({self.origin})"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The files one side of a connection loads; the cache key of its contexts."""

    side: Literal["client", "server"]
    ca: _File | None = None
    cert: _File | None = None
    key: _File | None = None
    identity: str | None = None
    require_client_cert: bool = True

    @property
    def paths(self) -> list[str]:
        """Every file to watch for rotation."""
        return [f.path for f in (self.ca, self.cert, self.key) if f is not None]


def _certifi() -> str | None:
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return None
    return certifi.where()


def _load_ca(ctx: ssl.SSLContext, ca: _File | None) -> str:
    if ca is None:
        bundle = _certifi()
        if bundle is None:  # pragma: no cover
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            return "the system trust store"
        ctx.load_verify_locations(cafile=bundle)
        return f"certifi's bundle {bundle}"
    try:
        ctx.load_verify_locations(cafile=ca.path)
    except FileNotFoundError:
        raise CertificateError(f"CA bundle {ca}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"CA bundle {ca}: holds no usable PEM CA certificate ({_reason(exc)})"
        ) from None
    return str(ca.path)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "the private key does not belong to the certificate"
    if reason in ("PEM_LIB", "NO_START_LINE", "NO_CERTIFICATE_OR_CRL_FOUND"):
        return f"not PEM, or empty ({reason})"
    return str(reason or exc)


def _load_own(ctx: ssl.SSLContext, cert: _File, key: _File) -> None:
    for f, what in ((cert, "certificate"), (key, "private key")):
        if not os.path.isfile(f.path):
            raise CertificateError(f"{what} {f}: no such file")
    try:
        ctx.load_cert_chain(certfile=cert.path, keyfile=key.path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"cannot use certificate {cert} with key {key}: {_reason(exc)}"
        ) from None


def _build(files: TLSFiles, alpn: list[str] | None) -> MeshSSLContext:
    if files.side == "client":
        ctx = MeshSSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if files.identity is not None:
            ctx.check_hostname = False  # the SPIFFE ID is checked instead; see the module docstring
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.expected_identity = files.identity
    else:
        ctx = MeshSSLContext(ssl.PROTOCOL_TLS_SERVER)
        if files.require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
        elif files.ca is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.side == "client" or files.ca is not None:
        ctx.ca_description = _load_ca(ctx, files.ca)
    if files.cert is not None and files.key is not None:
        _load_own(ctx, files.cert, files.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class RotatingSSLContext(MeshSSLContext):
    """A stable SSLContext whose connections use the newest certificate material.

    Hand it to httpx (`verify=`), uvicorn, werkzeug or gunicorn; each new
    connection is created by the current `MeshSSLContext`, rebuilt when
    the files change.

    ```pycon
    >>> ctx = server_context(MeshSettings(tls_cert="s.pem", tls_key="s.key", tls_ca="ca.pem"))  # doctest: +SKIP
    >>> ctx.material.generation        # doctest: +SKIP
    0
    ```
    """

    files: TLSFiles
    _material: Reloading[MeshSSLContext]
    _alpn: list[str] | None = None

    @classmethod
    def for_files(
        cls,
        files: TLSFiles,
        *,
        interval: float = DEFAULT_RELOAD_INTERVAL,
        clock: Clock = SYSTEM_CLOCK,
    ) -> RotatingSSLContext:
        """Build the first material now (errors propagate), then watch the files."""
        protocol = ssl.PROTOCOL_TLS_CLIENT if files.side == "client" else ssl.PROTOCOL_TLS_SERVER
        self = cls(protocol)
        self.expected_identity = files.identity
        self.files = files
        self._material = Reloading(
            lambda: _build(files, self._alpn),
            files.paths,
            interval=interval,
            clock=clock,
            name=f"{files.side} TLS files",
        )
        self.ca_description = self._material.current().ca_description
        return self

    @property
    def material(self) -> Reloading[MeshSSLContext]:
        """The reloading material behind this context (`generation`, `failures`)."""
        return self._material

    def current(self) -> MeshSSLContext:
        """The context new connections are made with right now."""
        return self._material.current()

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap `sock` with the current material."""
        return self.current().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            server_hostname,
            session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Wrap a pair of memory BIOs with the current material."""
        return self.current().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def set_alpn_protocols(self, alpn_protocols: Any) -> None:
        """Record the ALPN list for future material and apply it to the current one."""
        self._alpn = list(alpn_protocols)
        self.current().set_alpn_protocols(self._alpn)


_cache: dict[TLSFiles, RotatingSSLContext] = {}
_cache_lock = threading.Lock()


def _pick(
    policy_value: str | None, setting: Path | None, policy_name: str, env: str
) -> _File | None:
    if policy_value:
        return _File(os.path.abspath(os.path.expanduser(policy_value)), f"policy tls.{policy_name}")
    if setting is not None:
        return _File(os.path.abspath(os.path.expanduser(setting)), env)
    return None


def client_context(
    tls: TLS, *, identity: str | None, settings: MeshSettings | None = None
) -> ssl.SSLContext | None:
    """The shared client context for a destination's `tls` policy; None when TLS is disabled.

    `identity` (`services.<name>.identity`) pins the server's SPIFFE ID;
    a mismatch raises [`PeerIdentityError`][meshlib.errors.PeerIdentityError] from the
    handshake. File paths in the policy win over `MESH_TLS_*` settings.

    ```pycon
    >>> ctx = client_context(TLS(mode="mutual"), identity="spiffe://example.org/payments")  # doctest: +SKIP
    >>> httpx.Client(verify=ctx)                                                            # doctest: +SKIP
    ```

    Raises:
        CertificateError: a needed setting is missing, or a file is missing or unusable.
    """
    if tls.mode == "disabled":
        return None
    if identity is not None:
        try:
            identity = str(SpiffeID.parse(identity))
        except ValueError as exc:
            raise CertificateError(f"cannot pin the server identity: {exc}") from None
    fallback = settings

    def setting(name: str) -> Path | None:
        nonlocal fallback
        if fallback is None:
            fallback = MeshSettings()
        value: Path | None = getattr(fallback, name)
        return value

    ca = _pick(tls.ca, None if tls.ca else setting("tls_ca"), "ca", "MESH_TLS_CA")
    cert = key = None
    if tls.mode == "mutual":
        cert = _pick(tls.cert, None if tls.cert else setting("tls_cert"), "cert", "MESH_TLS_CERT")
        key = _pick(tls.key, None if tls.key else setting("tls_key"), "key", "MESH_TLS_KEY")
        if cert is None or key is None:
            missing = "tls.cert / MESH_TLS_CERT" if cert is None else "tls.key / MESH_TLS_KEY"
            raise CertificateError(
                f"tls mode 'mutual' presents our certificate, but {missing} is not set: "
                "set it in the policy's tls section or in the environment"
            )
    files = TLSFiles("client", ca=ca, cert=cert, key=key, identity=identity)
    with _cache_lock:
        ctx = _cache.get(files)
        if ctx is None:
            ctx = _cache[files] = RotatingSSLContext.for_files(files)
    return ctx


def server_context(
    settings: MeshSettings | None = None,
    *,
    require_client_cert: bool = True,
    interval: float = DEFAULT_RELOAD_INTERVAL,
) -> RotatingSSLContext:
    """A rotating server context from `MESH_TLS_CERT`/`MESH_TLS_KEY`/`MESH_TLS_CA`.

    With `require_client_cert` (mutual TLS, the default) every client must
    present a certificate signed by a CA in `MESH_TLS_CA`; without it, a
    certificate is verified when offered (so callers can move to mTLS one by one).

    ```pycon
    >>> ctx = server_context(MeshSettings())   # doctest: +SKIP
    ```

    Raises:
        CertificateError: a needed setting is missing, or a file is missing or unusable.
    """
    settings = settings or MeshSettings()
    cert = _pick(None, settings.tls_cert, "cert", "MESH_TLS_CERT")
    key = _pick(None, settings.tls_key, "key", "MESH_TLS_KEY")
    ca = _pick(None, settings.tls_ca, "ca", "MESH_TLS_CA")
    if cert is None or key is None:
        raise CertificateError(
            "serving TLS needs this service's certificate and key: set MESH_TLS_CERT and MESH_TLS_KEY"
        )
    if require_client_cert and ca is None:
        raise CertificateError(
            "mutual TLS needs the CA bundle that signs client certificates: set MESH_TLS_CA"
        )
    files = TLSFiles("server", ca=ca, cert=cert, key=key, require_client_cert=require_client_cert)
    return RotatingSSLContext.for_files(files, interval=interval)


def clear_context_cache() -> None:
    """Forget the shared client contexts (tests; contexts already handed out keep working)."""
    with _cache_lock:
        _cache.clear()
