"""The total deadline covers the response body: trickling or stalled bodies end when the call's time does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib.errors import DeadlineExceeded
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.servers import RunningServer, serve_asgi


async def _slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/trickle/<bytes>/<ms>`: one byte every ms; `/stall/<bytes>/<ms>`: one byte per 100 ms, then silence for ms."""
    assert scope["type"] == "http"
    kind, count, ms = scope["path"].strip("/").split("/")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    try:
        if kind == "trickle":
            for _ in range(int(count)):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(int(ms) / 1000)
        else:
            for _ in range(int(count)):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(0.1)
            await asyncio.sleep(int(ms) / 1000)
        await send({"type": "http.response.body", "body": b""})
    except OSError:  # the client gave up and closed the connection
        pass


@pytest.fixture(scope="module")
def slow() -> Iterator[RunningServer]:
    """An upstream whose bodies trickle or stall."""
    with serve_asgi(_slow_body) as server:
        yield server


def _stream(driver: Driver, client: Any, url: str) -> int:
    """Stream the body chunk by chunk, as a caller of `client.stream()` does; return its length."""
    if not driver.is_async:
        with client.stream("GET", url) as response:
            return sum(len(chunk) for chunk in response.iter_bytes())

    async def go() -> int:
        async with client.stream("GET", url) as response:
            return sum([len(chunk) async for chunk in response.aiter_bytes()])

    assert driver.portal is not None
    return driver.portal.call(go)


@pytest.mark.parametrize("streamed", [False, True], ids=["read", "streamed"])
def test_trickling_body_ends_at_the_total_deadline(
    driver: Driver, slow: RunningServer, streamed: bool
) -> None:
    """50 bytes at one per 100 ms (5 s) under attempt 500 ms, total 800 ms: DeadlineExceeded at ~0.8 s."""
    client = driver.client(mesh_policy([slow.url], timeouts={"attempt": "500ms", "total": "800ms"}))
    started = time.monotonic()
    url = "http://payments/trickle/50/100"
    with pytest.raises(DeadlineExceeded) as info:
        _stream(driver, client, url) if streamed else driver.request(client, "GET", url)
    elapsed = time.monotonic() - started
    assert 0.75 <= elapsed < 2.5  # one more byte at most after the deadline, not 5 s
    assert isinstance(info.value, httpx.TimeoutException)
    assert "response body" in str(info.value)
    assert [a.outcome for a in info.value.attempts] == [200]


def test_stalled_body_ends_at_the_total_deadline(driver: Driver, slow: RunningServer) -> None:
    """A body that stalls near the deadline raises DeadlineExceeded: async at it, sync within one read."""
    client = driver.client(mesh_policy([slow.url], timeouts={"attempt": "1s", "total": "1s"}))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        driver.request(client, "GET", "http://payments/stall/6/2500")  # silent from ~0.6 s
    elapsed = time.monotonic() - started
    # A read waits at most the time left when the body began; async bounds the wait itself.
    assert elapsed < (2.0 if driver.is_async else 3.0)  # the body alone lasts 3.1 s


def test_a_body_within_the_deadline_is_untouched(driver: Driver, slow: RunningServer) -> None:
    """A body that trickles but ends in time is read whole, streamed or not."""
    client = driver.client(mesh_policy([slow.url], timeouts={"attempt": "1s", "total": "5s"}))
    assert driver.request(client, "GET", "http://payments/trickle/5/20").content == b"xxxxx"
    assert _stream(driver, client, "http://payments/trickle/5/20") == 5
