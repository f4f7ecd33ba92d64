"""Fixtures for outbound tests: scripted upstreams on 127.0.0.1 and a sync/async `driver`."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from meshlib.deadline import Deadline, deadline_scope
from meshlib.outbound import AsyncMeshClient, MeshClient
from meshlib.policy.model import Policy
from tests.support.servers import RunningServer, serve_asgi


class Upstream:
    """A scripted ASGI app: behaviour chosen by path, every hit counted and its headers kept.

    Paths: `/ok`; `/status/<code>`; `/flaky/<n>/<key>` (503 for the first n hits of
    key, then 200); `/sleep/<ms>` (sleeps, then 200 with `Server-Timing: app;dur=<ms>`);
    `/retry-after/<s>/<key>` (503 + Retry-After once, then 200). `broken=True` makes
    every path answer 500.
    """

    def __init__(self) -> None:
        self.hits: dict[str, int] = defaultdict(int)
        self.headers: list[dict[str, str]] = []
        self.broken = False
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Hits over all paths."""
        return sum(self.hits.values())

    def reset(self) -> None:
        """Forget hits and headers; heal."""
        with self._lock:
            self.hits.clear()
            self.headers.clear()
            self.broken = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path: str = scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self._lock:
            self.hits[path] += 1
            count = self.hits[path]
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        status, headers = 200, [(b"content-type", b"text/plain")]
        parts = path.strip("/").split("/")
        if self.broken:
            status = 500
        elif parts[0] == "status":
            status = int(parts[1])
        elif parts[0] == "flaky" and count <= int(parts[1]):
            status = 503
        elif parts[0] == "sleep":
            ms = float(parts[1])
            await asyncio.sleep(ms / 1000.0)
            headers.append((b"server-timing", f"app;dur={ms:.1f}".encode()))
        elif parts[0] == "retry-after" and count == 1:
            status = 503
            headers.append((b"retry-after", parts[1].encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[tuple[Upstream, RunningServer], ...]]:
    """Two scripted upstream servers, shared by a module's tests."""
    a, b = Upstream(), Upstream()
    with serve_asgi(a) as server_a, serve_asgi(b) as server_b:
        yield (a, server_a), (b, server_b)


@pytest.fixture
def up(upstreams: tuple[tuple[Upstream, RunningServer], ...]) -> tuple[Upstream, RunningServer]:
    """The first upstream, reset."""
    for upstream, _ in upstreams:
        upstream.reset()
    return upstreams[0]


@pytest.fixture
def up2(
    upstreams: tuple[tuple[Upstream, RunningServer], ...], up: Any
) -> tuple[Upstream, RunningServer]:
    """The second upstream, reset."""
    return upstreams[1]


def mesh_policy(endpoints: list[str], **service: Any) -> Policy:
    """A policy with one service `payments` at `endpoints`; fast backoff by default."""
    defaults = service.pop("defaults", {})
    retry = service.pop("retry", {})
    retry.setdefault("backoff", {"base": "1ms", "max": "5ms"})
    return Policy.model_validate(
        {
            "version": 1,
            "defaults": defaults,
            "services": {"payments": {"endpoints": endpoints, "retry": retry, **service}},
        }
    )


class Driver:
    """Runs the same test body against MeshClient or AsyncMeshClient."""

    def __init__(
        self, is_async: bool, portal: BlockingPortal | None, endpoint_transport: Any = None
    ) -> None:
        self.is_async = is_async
        self.portal = portal
        self.endpoint_transport = endpoint_transport
        self._clients: list[Any] = []

    def client(self, policy: Any, **kwargs: Any) -> Any:
        """A mesh client of this driver's kind, closed when the test ends."""
        if self.endpoint_transport is not None:
            kwargs["endpoint_transport"] = self.endpoint_transport
        cls = AsyncMeshClient if self.is_async else MeshClient
        client = cls(policy, **kwargs)
        self._clients.append(client)
        return client

    def request(
        self, client: Any, method: str, url: str, *, deadline: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request (body read), optionally under an incoming deadline of `deadline` s."""
        if not self.is_async:
            with deadline_scope(Deadline.after(deadline, _clock()) if deadline else None):
                return client.request(method, url, **kwargs)  # type: ignore[no-any-return]

        async def go() -> httpx.Response:
            with deadline_scope(Deadline.after(deadline, _clock()) if deadline else None):
                return await client.request(method, url, **kwargs)  # type: ignore[no-any-return]

        assert self.portal is not None
        return self.portal.call(go)

    def many(self, client: Any, url: str, count: int, concurrency: int) -> list[Any]:
        """Send `count` GETs, `concurrency` at a time; responses or exceptions, in order."""
        results: list[Any] = [None] * count
        if not self.is_async:
            index = iter(range(count))
            lock = threading.Lock()

            def worker() -> None:
                while True:
                    with lock:
                        i = next(index, None)
                    if i is None:
                        return
                    try:
                        results[i] = client.get(url)
                    except Exception as exc:
                        results[i] = exc

            threads = [threading.Thread(target=worker) for _ in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            return results

        async def go() -> None:
            limiter = anyio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with limiter:
                    try:
                        results[i] = await client.get(url)
                    except Exception as exc:
                        results[i] = exc

            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(one, i)

        assert self.portal is not None
        self.portal.call(go)
        return results

    def close(self) -> None:
        """Close every client this driver made."""
        for client in self._clients:
            if self.is_async:
                assert self.portal is not None
                self.portal.call(client.aclose)
            else:
                client.close()


def _clock() -> Any:
    from meshlib.clock import SYSTEM_CLOCK

    return SYSTEM_CLOCK


@pytest.fixture(params=["sync", "async", "async-httpcore"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """A sync, an async (aiohttp's pool, the default) and an async-over-httpcore driver."""
    if request.param == "sync":
        d = Driver(False, None)
        try:
            yield d
        finally:
            d.close()
        return
    endpoint_transport = httpx.AsyncHTTPTransport if request.param == "async-httpcore" else None
    with start_blocking_portal() as portal:
        d = Driver(True, portal, endpoint_transport)
        try:
            yield d
        finally:
            d.close()


Factory = Callable[..., Any]
