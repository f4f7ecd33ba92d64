"""`mounts=` for mesh clients: transports per URL pattern, for the URLs the mesh does not route.

httpx consults a client's mounts before its transport, so a plain
`httpx.Client(transport=mesh, mounts={"all://": other})` sends every call,
mesh services included, around the mesh. `MeshClient` and `AsyncMeshClient`
instead hand their mounts to [`Mounts`][meshlib.outbound.mounts.Mounts],
which sits where the mesh sends the URLs it does not route (hosts that are
not services in the policy): a call to a mesh service always goes through
the mesh (retries, breakers, mTLS, its endpoints); any other URL goes to the
most specific mount that matches it, else to the default transport.

Patterns and precedence are httpx's (`docs/advanced/transports.md`,
"Routing"): `all://`, `https://`, `all://example.com`, `all://*.example.com`
(subdomains only), `all://*example.com` (the domain and its subdomains),
`https://example.com:8443`; a port beats no port, a longer host beats a
shorter one, a scheme beats `all`. A mount of `None` means the default
transport:

```python
mounts = Mounts(httpx.HTTPTransport(), {"all://legacy.internal": legacy_transport})
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["Mounts", "URLPattern"]


class URLPattern:
    """One httpx mount key, e.g. `all://*.example.com` or `https://example.com:8443`."""

    __slots__ = ("host_regex", "pattern", "port", "priority", "scheme")

    def __init__(self, pattern: str) -> None:
        if ":" not in pattern:
            raise ValueError(
                f"mount key {pattern!r} is not a URL pattern: write e.g. 'all://' or 'https://{pattern}'"
            )
        url = httpx.URL(pattern)
        self.pattern = pattern
        self.scheme = "" if url.scheme == "all" else url.scheme
        host = "" if url.host == "*" else url.host
        self.port = url.port
        if not host:
            self.host_regex: re.Pattern[str] | None = None
        elif host.startswith("*."):
            self.host_regex = re.compile(f"^.+\\.{re.escape(host[2:])}$")
        elif host.startswith("*"):
            self.host_regex = re.compile(f"^(.+\\.)?{re.escape(host[1:])}$")
        else:
            self.host_regex = re.compile(f"^{re.escape(host)}$")
        self.priority = (0 if self.port is not None else 1, -len(host), -len(self.scheme))

    def matches(self, url: httpx.URL) -> bool:
        """Whether `url` falls under this pattern."""
        if self.scheme and self.scheme != url.scheme:
            return False
        if self.host_regex is not None and not self.host_regex.match(url.host):
            return False
        return self.port is None or self.port == url.port


class Mounts:
    """The transport for non-mesh URLs: the first matching mount, else `default`; sync and async."""

    def __init__(self, default: Any, mounts: Mapping[str, Any]) -> None:
        self.default = default
        patterns = sorted(
            ((URLPattern(key), transport) for key, transport in mounts.items()),
            key=lambda item: item[0].priority,
        )
        self.mounts: tuple[tuple[URLPattern, Any], ...] = tuple(patterns)

    def transport_for(self, url: httpx.URL) -> Any:
        """The transport `url` goes to."""
        for pattern, transport in self.mounts:
            if pattern.matches(url):
                return self.default if transport is None else transport
        return self.default

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the transport the URL is mounted on."""
        response: httpx.Response = self.transport_for(request.url).handle_request(request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The async twin of `handle_request`."""
        transport = self.transport_for(request.url)
        response: httpx.Response = await transport.handle_async_request(request)
        return response

    def _all(self) -> list[Any]:
        return [self.default, *(t for _, t in self.mounts if t is not None)]

    def close(self) -> None:
        """Close the default transport and every mounted one, as httpx closes a client's mounts."""
        for transport in self._all():
            transport.close()

    async def aclose(self) -> None:
        """The async twin of `close`."""
        for transport in self._all():
            await transport.aclose()
