"""Keeping an outbound call's promise of TLS: plaintext refused, certificate failures named and final.

The router puts these in front of an endpoint's pool when it sets the endpoint up:

- [`PlaintextRefused`][meshlib.outbound.secure.PlaintextRefused] stands in for
  the pool of an `http://` origin that the destination's `tls.mode` does not
  allow (a direct URL under `defaults.tls.mode: mutual`, an endpoint the
  registry reported). Every call raises
  [`TLSRequiredError`][meshlib.errors.TLSRequiredError] before a byte is sent.
- [`NamedTLSFailures`][meshlib.outbound.secure.NamedTLSFailures] wraps the pool
  of a TLS endpoint and turns a failed certificate check (expired, wrong CA,
  wrong host, wrong SPIFFE identity) into a
  [`TLSVerificationError`][meshlib.errors.TLSVerificationError] naming the
  destination service and the endpoint. The retry logic never retries those
  (`meshlib.outbound.retry.classify_exception`): another try would meet the
  same certificate.

Both are httpx transports for both worlds (`handle_request` and
`handle_async_request`), so they sit in front of httpcore and aiohttp pools alike:

```python
transport = NamedTLSFailures(pool, destination="payments", endpoint="https://10.0.0.7:8443")
```
"""

from __future__ import annotations

import ssl
from typing import Any, NoReturn

import httpx

from meshlib.errors import PeerIdentityError, TLSRequiredError, TLSVerificationError

__all__ = ["NamedTLSFailures", "PlaintextRefused", "tls_failure"]

_MAX_CHAIN = 8


def tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | PeerIdentityError | None:
    """The certificate verification or identity failure behind a connect error, if that is what it was.

    Walks the exception's causes (httpx wraps httpcore's error, which wraps the
    `ssl` one; aiohttp keeps it as `certificate_error`).
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _MAX_CHAIN:
        # aiohttp's error subclasses SSLCertVerificationError and keeps the real one inside.
        inner = getattr(current, "certificate_error", None)
        if isinstance(inner, ssl.SSLCertVerificationError):
            return inner
        if isinstance(current, ssl.SSLCertVerificationError | PeerIdentityError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _named(exc: httpx.ConnectError, destination: str, endpoint: str) -> Exception:
    if isinstance(exc, TLSVerificationError) and exc.destination:
        return exc
    failure = tls_failure(exc)
    if failure is None:
        return exc
    where = f"{destination} at {endpoint}"
    if isinstance(failure, PeerIdentityError):
        return PeerIdentityError(
            f"{where}: {failure}",
            expected=failure.expected,
            presented=failure.presented,
            destination=destination,
            endpoint=endpoint,
            request=getattr(exc, "_request", None),
        )
    # meshlib's own contexts explain the failure (handshake.py); others give OpenSSL's words.
    explained = str(failure)
    if "certificate was rejected" not in explained:
        reason = getattr(failure, "verify_message", None) or "certificate verify failed"
        explained = f"the server's certificate was rejected: {reason}"
    return TLSVerificationError(
        f"{where}: {explained}",
        destination=destination,
        endpoint=endpoint,
        request=getattr(exc, "_request", None),
    )


class NamedTLSFailures:
    """An endpoint's pool whose certificate failures name the destination and endpoint."""

    __slots__ = ("destination", "endpoint", "pool")

    def __init__(self, pool: Any, *, destination: str, endpoint: str) -> None:
        self.pool = pool
        self.destination = destination
        self.endpoint = endpoint

    def _reraise(self, exc: httpx.ConnectError) -> NoReturn:
        named = _named(exc, self.destination, self.endpoint)
        if named is exc:
            raise exc
        raise named from exc

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the pool; a failed certificate check becomes a `TLSVerificationError`."""
        try:
            return self.pool.handle_request(request)  # type: ignore[no-any-return]
        except httpx.ConnectError as exc:
            self._reraise(exc)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The async twin of `handle_request`."""
        try:
            return await self.pool.handle_async_request(request)  # type: ignore[no-any-return]
        except httpx.ConnectError as exc:
            self._reraise(exc)


class PlaintextRefused:
    """Stands in for the pool of a plaintext origin the destination's `tls.mode` forbids."""

    __slots__ = ("_message", "destination", "origin")

    def __init__(self, *, destination: str, origin: str, mode: str) -> None:
        self.destination = destination
        self.origin = origin
        self._message = (
            f"refused to call {origin} in plain HTTP: tls.mode for {destination} is {mode!r}; "
            "use https://, or name the origin in the policy's tls.allow_plaintext"
        )

    def _refuse(self, request: httpx.Request) -> TLSRequiredError:
        return TLSRequiredError(
            self._message, destination=self.destination, origin=self.origin, request=request
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse: nothing is sent."""
        raise self._refuse(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse: nothing is sent."""
        raise self._refuse(request)
