"""meshlib's exceptions, which also plug into the trees users already catch.

Runtime errors on the outbound path subclass the httpx exception a caller
would already handle, so code written for plain httpx keeps working:

```text
MeshError
├── PolicyError(ValueError)              a policy document is invalid (source, line, column, field)
├── SettingsError(ValueError)            a MESH_* setting is invalid
├── CertificateError(ValueError)         a certificate, key or CA file is unusable
├── ControlPlaneError                    the control plane answered badly (never raised into requests)
│   ├── StoreUnavailableError            the control plane's store (files, etcd) cannot be reached
│   └── VersionConflictError             a compare-and-set publish lost: the version moved on
├── CircuitOpenError(httpx.TransportError)   no endpoint can take the call: every breaker is open
├── NoEndpointsError(httpx.TransportError)   the destination has no endpoints at all
├── TLSRequiredError(httpx.UnsupportedProtocol)  a plaintext call where the policy promises TLS
├── TLSVerificationError(httpx.ConnectError) the server's certificate failed verification
│   └── PeerIdentityError                    the server's SPIFFE identity is not the expected one
└── DeadlineExceeded(httpx.TimeoutException) the call's total deadline ran out
```

`TLSRequiredError` and `TLSVerificationError` are never retried: trying
again, or another endpoint, would not change a policy or a certificate.

When retries run out, meshlib re-raises the last real error (an
`httpx.ConnectError`, say), not a wrapper; the attempts made are attached
to it as `exc.__meshlib_attempts__` and to the returned response as
`response.extensions["meshlib.attempts"]`. A call whose total time ran out
always raises `DeadlineExceeded`, whether it ran out during an attempt,
during a backoff or before the next attempt could start; the last real
error is its `__cause__`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "CertificateError",
    "CircuitOpenError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
    "PeerIdentityError",
    "PolicyError",
    "PolicyIssue",
    "SettingsError",
    "StoreUnavailableError",
    "VersionConflictError",
]


class MeshError(Exception):
    """Base class of every exception meshlib raises itself."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem found in a policy document, located as precisely as the parser knows.

    `field` is a dotted path (`services.payments.retry.attempts`); `line` and
    `column` are 1-based and `None` when the format does not tell.
    """

    message: str
    field: str = ""
    source: str = "<policy>"
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class PolicyError(MeshError, ValueError):
    """A policy document is invalid; every problem found is in `issues`.

    The attributes `source`, `line`, `column` and `field` describe the
    first issue, for callers that only show one:

    ```python
    try:
        meshlib.load_policy("mesh.yaml")
    except meshlib.PolicyError as exc:
        for issue in exc.issues:
            print(issue)   # mesh.yaml:12:17 services.payments.retry.attempts: ...
    ```
    """

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        if not issues:
            raise ValueError("PolicyError needs at least one issue")
        self.issues: tuple[PolicyIssue, ...] = tuple(issues)
        first = self.issues[0]
        self.source = first.source
        self.line = first.line
        self.column = first.column
        self.field = first.field
        super().__init__(str(self))

    @classmethod
    def single(
        cls,
        message: str,
        *,
        source: str = "<policy>",
        field: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> PolicyError:
        """Build a `PolicyError` holding one issue."""
        return cls([PolicyIssue(message, field, source, line, column)])

    def __str__(self) -> str:
        if len(self.issues) == 1:
            return str(self.issues[0])
        lines = [f"{len(self.issues)} problems in {self.source}:"]
        lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)


class SettingsError(MeshError, ValueError):
    """A `MESH_*` setting is missing or invalid."""


class CertificateError(MeshError, ValueError):
    """A certificate, private key or CA bundle cannot be used; the message names the file."""


class ControlPlaneError(MeshError):
    """The control plane is unreachable or answered something unusable.

    Raised only from explicit calls (a first fetch with no fallback, the CLI);
    the background watcher logs and counts these instead of raising.
    """


class StoreUnavailableError(ControlPlaneError):
    """The control plane's store (the policy directory, etcd) cannot be read or written now.

    A replica that loses its store keeps serving the last version it read and
    refuses publishes with this error until the store is back.
    """


class VersionConflictError(ControlPlaneError):
    """A conditional publish (`If-Match`) lost the race: another version is current now.

    `current` is the version in force (None when nothing was published yet),
    so the caller can read it, merge and try again.
    """

    def __init__(self, message: str, *, current: int | None) -> None:
        super().__init__(message)
        self.current = current


class _CallError(MeshError):
    """A mesh call's own failure: it carries the call's tries, like the errors it re-raises."""

    @property
    def attempts(self) -> tuple[Any, ...]:
        """The tries the call made before this was raised ([`Attempt`][meshlib.outbound.steps.Attempt] records).

        The same tuple as `exc.__meshlib_attempts__`, which every error a mesh
        call raises carries; empty when no try was made.
        """
        return tuple(getattr(self, "__meshlib_attempts__", ()))


class CircuitOpenError(_CallError, httpx.TransportError):
    """Every endpoint of the destination has its circuit breaker open; the call failed fast.

    Nothing was sent. The fields say which breaker lets a call through first,
    and when:

    - `destination`: the service (or origin) called;
    - `endpoint`: the endpoint whose breaker lets a probe through soonest;
    - `retry_after`: seconds from the moment of the error until then;
    - `retry_at`: that moment on the wall clock (UTC), also in the message;
    - `attempts`: the tries made before (empty when the breaker refused the first).

    Example:
        ```python
        try:
            client.get("http://payments/v1/charges")
        except meshlib.CircuitOpenError as exc:
            print(exc.destination, exc.endpoint, exc.retry_at)
        ```
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str = "",
        endpoint: str = "",
        retry_after: float = 0.0,
        retry_at: _dt.datetime | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        self.destination = destination
        self.endpoint = endpoint
        self.retry_after = retry_after
        self.retry_at = retry_at
        super().__init__(message, request=request)


class NoEndpointsError(_CallError, httpx.TransportError):
    """The destination service is in the policy but has no endpoints to call."""


class TLSRequiredError(_CallError, httpx.UnsupportedProtocol):
    """A call would have gone over plain HTTP to a destination whose `tls.mode` promises TLS.

    Nothing was sent. A direct `http://` URL under `defaults.tls.mode: mutual`,
    or an `http://` endpoint found by discovery, is refused unless the
    policy's `tls.allow_plaintext` names its origin. `destination` and
    `origin` say which.
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str = "",
        origin: str = "",
        request: httpx.Request | None = None,
    ) -> None:
        self.destination = destination
        self.origin = origin
        super().__init__(message, request=request)


class TLSVerificationError(_CallError, httpx.ConnectError):
    """The server's certificate failed verification (expired, wrong CA, wrong host or identity).

    Raised from the TLS handshake, before any request byte is sent, and never
    retried. The message names the destination and the endpoint
    (`destination`, `endpoint`) and says why the certificate was rejected.
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str = "",
        endpoint: str = "",
        request: httpx.Request | None = None,
    ) -> None:
        self.destination = destination
        self.endpoint = endpoint
        super().__init__(message, request=request)


class PeerIdentityError(TLSVerificationError):
    """The server proved an identity other than the one the policy expects.

    Raised during the TLS handshake, before any request byte is sent.
    """

    def __init__(
        self,
        message: str,
        *,
        expected: str,
        presented: Sequence[str],
        destination: str = "",
        endpoint: str = "",
        request: httpx.Request | None = None,
    ) -> None:
        self.expected = expected
        self.presented = tuple(presented)
        super().__init__(message, destination=destination, endpoint=endpoint, request=request)


class DeadlineExceeded(_CallError, httpx.TimeoutException):
    """The call's total deadline (policy `timeouts.total` or an incoming deadline) ran out.

    Raised however the time ran out: during an attempt, during a backoff,
    before the next attempt could start, or while the response body was being
    read. `__cause__` is the last real error when there was one (the attempt's
    `httpx.ReadTimeout`, say), and `attempts` holds the tries.
    """
