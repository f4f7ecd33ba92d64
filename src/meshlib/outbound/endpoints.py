"""Connection pools: one httpx transport per (endpoint, TLS settings), shared by every call to it.

One factory serves both worlds: `Pools` is given the transport class
(`httpx.HTTPTransport` or `httpx.AsyncHTTPTransport`) and builds the same
pools for either. TLS contexts come from `meshlib.security.tls.client_context`,
imported only when a destination's `tls.mode` is not `disabled`, and the
context verifies the peer's SPIFFE identity during the handshake:

```python
pools = Pools(httpx.HTTPTransport)
transport = pools.get("http://127.0.0.1:8001", tls, identity=None)
pools.keep_only([])        # the policy dropped it: retired, closed once idle
for pool in pools.idle_retired():
    pool.close()
```
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import httpx

from meshlib.policy.model import TLS
from meshlib.settings import MeshSettings

__all__ = ["PoolKey", "Pools", "pool_is_idle"]

T = TypeVar("T")
PoolKey = tuple[str, TLS, str | None]
"""(endpoint URL, TLS section, expected peer identity)."""


def _tls_context(
    tls: TLS, identity: str | None, settings: MeshSettings | None
) -> ssl.SSLContext | None:
    # Imported lazily: the security module is only needed once TLS is on.
    from meshlib.security.tls import client_context

    return client_context(tls, identity=identity, settings=settings)


def pool_is_idle(transport: Any) -> bool:
    """Whether a pool has no request or streamed body using it (so closing it breaks nothing).

    httpx keeps its httpcore pool private; we read it defensively and treat
    anything we cannot inspect as busy.
    """
    is_idle = getattr(transport, "is_idle", None)
    if is_idle is not None:
        return bool(is_idle())
    pool = getattr(transport, "_pool", None)
    connections = getattr(pool, "connections", None)
    if connections is None:
        return False
    if getattr(pool, "_requests", None):
        return False
    return all(conn.is_idle() or conn.is_closed() for conn in connections)


class Pools(Generic[T]):
    """The transports for mesh endpoints, built on first use and kept across policy reloads."""

    def __init__(
        self,
        factory: Any,
        *,
        settings: MeshSettings | None = None,
        **transport_kwargs: Any,
    ) -> None:
        self._factory = factory
        self._settings = settings
        self._kwargs = transport_kwargs
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, T] = {}
        self._retired: list[T] = []
        self._context: ssl.SSLContext | None = None

    def get(self, url: str, tls: TLS, identity: str | None) -> T:
        """The pool for an endpoint (created once per key)."""
        key = (url, tls, identity)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = self._build(url, tls, identity)
        return pool

    def _build(self, url: str, tls: TLS, identity: str | None) -> T:
        kwargs = dict(self._kwargs)
        context = None
        if tls.mode != "disabled":
            context = _tls_context(tls, identity, self._settings)
        if context is None:
            context = self._default_context()
        if context is not None:
            kwargs["verify"] = context
            # The shared context carries our certificate; httpx would load cert= into it.
            kwargs.pop("cert", None)
        pool: T = self._factory(**kwargs)
        return pool

    def _default_context(self) -> ssl.SSLContext | None:
        """One context from the client's `verify`/`cert`/`trust_env`, shared by every pool.

        Each httpx (or aiohttp) transport would otherwise build its own and
        load the CA bundle again: tens of milliseconds and hundreds of KiB per
        pool, paid again by every policy swap that adds an endpoint.
        """
        kwargs = self._kwargs
        verify = kwargs.get("verify", True)
        if isinstance(verify, ssl.SSLContext) and kwargs.get("cert") is None:
            return verify
        if not isinstance(verify, (bool, str, ssl.SSLContext)):
            return None  # a factory of the user's own with its own idea of verify=
        if self._context is None:  # built under the caller's lock (get), once
            self._context = httpx.create_ssl_context(
                verify=verify, cert=kwargs.get("cert"), trust_env=kwargs.get("trust_env", True)
            )
        return self._context

    def keep_only(self, keys: Iterable[PoolKey]) -> None:
        """Retire every pool whose key is not in `keys`; kept pools keep their connections."""
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._pools if k not in wanted]:
                self._retired.append(self._pools.pop(key))

    def idle_retired(self) -> list[T]:
        """Remove and return the retired pools nothing uses any more, for the caller to close."""
        if not self._retired:
            return []
        with self._lock:
            idle = [p for p in self._retired if pool_is_idle(p)]
            self._retired = [p for p in self._retired if p not in idle]
        return idle

    def drain(self) -> list[T]:
        """Remove and return every pool, live and retired (client close)."""
        with self._lock:
            pools = [*self._pools.values(), *self._retired]
            self._pools.clear()
            self._retired.clear()
        return pools

    def __len__(self) -> int:
        return len(self._pools)
