"""Who may read policy and who may publish it: bearer tokens, and mTLS identities where TLS is on.

Reading (policy, history, the dashboard's data, sending reports) and
publishing (publish, rollback) are separate rights; a publisher may also
read. Tokens are compared with `hmac.compare_digest` against every
configured token, and no response ever contains one. A token may carry a
name for the history (`deploy-bot=s3cret`); otherwise it is named
`token-<n>`:

```python
auth = Authenticator(read_tokens=["r3ad"], publish_tokens=["alice=s3cret"])
principal = auth.authenticate(headers={"authorization": "Bearer s3cret"}, tls=None)
principal.may(Right.PUBLISH)   # True; principal.name == "alice"
```

Reading is open when no read token and no read identity is configured;
publishing is refused unless a publish token or identity is configured.
"""

from __future__ import annotations

import enum
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ANONYMOUS", "Authenticator", "Denied", "Principal", "Right", "parse_token"]

logger = logging.getLogger("meshlib.controlplane")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class Right(enum.Enum):
    """What a request wants to do."""

    READ = "read"
    PUBLISH = "publish"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a name for the history and the rights it holds."""

    name: str
    rights: frozenset[Right]

    def may(self, right: Right) -> bool:
        """Whether this caller holds `right`."""
        return right in self.rights


ANONYMOUS = Principal("anonymous", frozenset())


class Denied(Exception):
    """A request lacks the right it needs; `status` is 401 (who are you?) or 403 (not you)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_token(spec: str, index: int) -> tuple[str, bytes]:
    """`"name=secret"` or `"secret"` to `(name, secret)`; a bare token is named `token-<index>`."""
    name, sep, secret = spec.partition("=")
    if sep and secret.rstrip("=") and _NAME.match(name):  # base64 padding is not a name
        return name, secret.encode()
    return f"token-{index}", spec.encode()


class Authenticator:
    """Maps a request's bearer token or peer certificate to a `Principal`."""

    def __init__(
        self,
        *,
        read_tokens: Iterable[str] = (),
        publish_tokens: Iterable[str] = (),
        read_identities: Iterable[str] = (),
        publish_identities: Iterable[str] = (),
    ) -> None:
        read_tokens, publish_tokens = tuple(read_tokens), tuple(publish_tokens)
        read = frozenset({Right.READ})
        both = frozenset({Right.READ, Right.PUBLISH})
        self._tokens: list[tuple[bytes, Principal]] = []
        for i, spec in enumerate(publish_tokens, 1):
            name, secret = parse_token(spec, i)
            self._tokens.append((secret, Principal(name, both)))
        for i, spec in enumerate(read_tokens, len(self._tokens) + 1):
            name, secret = parse_token(spec, i)
            self._tokens.append((secret, Principal(name, read)))
        read_identities = tuple(read_identities)
        self._identities: dict[str, frozenset[Right]] = dict.fromkeys(read_identities, read)
        self._identities.update(dict.fromkeys(publish_identities, both))
        self.open_read = not read_tokens and not read_identities
        self.can_publish = any(p.may(Right.PUBLISH) for _, p in self._tokens) or bool(
            self._identities_with(Right.PUBLISH)
        )

    def _identities_with(self, right: Right) -> list[str]:
        return [i for i, rights in self._identities.items() if right in rights]

    def _from_token(self, presented: bytes) -> Principal | None:
        found = None
        for secret, principal in self._tokens:  # no early exit: timing says nothing about order
            if hmac.compare_digest(secret, presented) and found is None:
                found = principal
        return found

    def _from_tls(self, tls: Mapping[str, Any] | None) -> Principal | None:
        if not tls or not self._identities:
            return None
        chain = tls.get("client_cert_chain") or ()
        if not chain:
            return None
        identity = _peer_identity(chain[0])
        if identity is None or identity not in self._identities:
            return None
        return Principal(identity, self._identities[identity])

    def authenticate(
        self, headers: Mapping[str, str], tls: Mapping[str, Any] | None = None
    ) -> Principal:
        """The caller behind these request headers and ASGI `tls` extension.

        Raises:
            Denied: a bearer token was sent and matches no configured token (401).
        """
        header = headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if header:
            if scheme.lower() != "bearer" or not credentials.strip():
                raise Denied(401, "the Authorization header must be 'Bearer <token>'")
            principal = self._from_token(credentials.strip().encode())
            if principal is None:
                raise Denied(401, "the bearer token is not valid on this control plane")
            return principal
        return self._from_tls(tls) or ANONYMOUS

    def require(self, principal: Principal, right: Right) -> None:
        """Raise `Denied` unless `principal` may do `right`."""
        if right is Right.READ and self.open_read:
            return
        if principal.may(right):
            return
        if right is Right.PUBLISH and not self.can_publish:
            raise Denied(
                403,
                "publishing is disabled on this control plane: start it with --publish-token "
                "or MESH_CONTROLPLANE_PUBLISH_TOKENS",
            )
        if principal is ANONYMOUS:
            raise Denied(401, f"{right.value} needs a bearer token (Authorization: Bearer <token>)")
        raise Denied(403, f"{principal.name} may not {right.value} policy on this control plane")


def _peer_identity(cert: Any) -> str | None:
    """The SPIFFE ID of a client certificate (PEM text, as the ASGI tls extension has it)."""
    try:
        from meshlib.security.identity import peer_identity_from_cert
    except ImportError:
        logger.warning("mTLS identities are configured but meshlib.security is not available")
        return None
    try:
        identity = peer_identity_from_cert(cert)
    except Exception as exc:  # a certificate we cannot read is no identity
        logger.warning("cannot read the client certificate's identity: %s", exc)
        return None
    return str(identity) if identity else None
