"""`MeshClient(mounts=...)` never sends a mesh service's calls around the mesh.

httpx consults mounts before a client's transport, so `all://` (or a pattern
naming the service) used to bypass routing, retries, breakers and mTLS for
every URL. Mesh clients route mesh services through the mesh and hand only
the other URLs to their mounts, with httpx's precedence. (`proxy=` follows
the same rule: `tests/outbound/test_aiohttp_transport.py::test_mesh_client_proxy_carries_only_non_mesh_urls`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib import AsyncMeshClient, MeshClient
from meshlib.outbound.mounts import URLPattern
from meshlib.policy.model import Policy
from tests.support.servers import RunningServer, serve_asgi

CLIENTS = ("sync", "async-aiohttp", "async-httpcore")


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"mesh"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    """The one endpoint of the mesh service payments."""
    with serve_asgi(_ok) as server:
        yield server


class Spy(httpx.MockTransport):
    """A mounted transport that answers its name and remembers being closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        super().__init__(lambda request: httpx.Response(200, text=name))

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def _policy(server: RunningServer) -> Policy:
    return Policy.model_validate(
        {"version": 1, "services": {"payments": {"endpoints": [server.url]}}}
    )


def _texts(kind: str, policy: Policy, mounts: dict[str, Any], urls: list[str]) -> list[str]:
    if kind == "sync":
        with MeshClient(policy, mounts=mounts) as client:
            return [client.get(url).text for url in urls]

    async def main() -> list[str]:
        extra: dict[str, Any] = {}
        if kind == "async-httpcore":
            extra["endpoint_transport"] = httpx.AsyncHTTPTransport
        async with AsyncMeshClient(policy, mounts=mounts, **extra) as client:
            return [(await client.get(url)).text for url in urls]

    return asyncio.run(main())


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_catch_all_mount_carries_only_non_mesh_urls(kind: str, upstream: RunningServer) -> None:
    """`all://` (and a pattern naming the service itself) never takes payments' calls."""
    spy = Spy("mounted")
    mounts = {"all://": spy, "http://payments": spy}
    texts = _texts(kind, _policy(upstream), mounts, ["http://payments/x", "http://elsewhere.test/"])
    assert texts == ["mesh", "mounted"]
    assert spy.closed  # closing the client closes its mounts, as httpx does


@pytest.mark.parametrize("kind", CLIENTS)
def test_mounts_keep_httpx_precedence(kind: str, upstream: RunningServer) -> None:
    """Port beats no port, longer host beats shorter, a scheme beats all://; None means the default."""
    mounts: dict[str, Any] = {
        "all://": Spy("any"),
        "all://*example.test": Spy("domain"),
        "all://api.example.test": Spy("host"),
        "http://api.example.test:8080": Spy("port"),
        "https://": Spy("https"),
        "all://plain.test": None,
    }
    urls = [
        "http://api.example.test:8080/",
        "http://api.example.test/",
        "http://www.example.test/",
        "http://example.test/",
        "https://other.test/",
        "http://other.test/",
        f"{upstream.url}/",
    ]
    texts = _texts(kind, _policy(upstream), mounts, urls)
    assert texts == ["port", "host", "domain", "domain", "https", "any", "any"]


def test_a_none_mount_falls_back_to_the_default_transport(upstream: RunningServer) -> None:
    """`{"all://127.0.0.1": None}` sends that host to the client's own pool, not the catch-all."""
    mounts: dict[str, Any] = {"all://": Spy("any"), "all://127.0.0.1": None}
    assert _texts("sync", _policy(upstream), mounts, [f"{upstream.url}/"]) == ["mesh"]


@pytest.mark.parametrize(
    ("pattern", "url", "matches"),
    [
        ("all://", "http://a.test/", True),
        ("https://", "http://a.test/", False),
        ("all://*.a.test", "http://a.test/", False),
        ("all://*.a.test", "http://b.a.test/", True),
        ("all://*a.test", "http://a.test/", True),
        ("all://a.test:1", "http://a.test:2/", False),
    ],
)
def test_url_patterns_match_as_httpx_does(pattern: str, url: str, matches: bool) -> None:
    """The mount keys mean what they mean in httpx."""
    assert URLPattern(pattern).matches(httpx.URL(url)) is matches
    assert httpx._utils.URLPattern(pattern).matches(httpx.URL(url)) is matches


def test_a_mount_key_without_a_scheme_is_refused() -> None:
    """`example.test` is not a pattern; the error shows how to write one."""
    with pytest.raises(ValueError, match="all://"):
        MeshClient(Policy.model_validate({"version": 1}), mounts={"example.test": Spy("x")})
