"""Request and response bodies between httpx and aiohttp, for [`AiohttpTransport`][meshlib.outbound.aiohttp_transport.AiohttpTransport].

An upload is fed to aiohttp chunk by chunk with each write timed (httpx's
`write` timeout, which aiohttp lacks); a response body is read from
aiohttp's buffer with its errors mapped onto httpx's, and its connection
slot is given back when the body is closed:

```python
upload = Upload(stream, timeout=5.0)       # aiohttp's `data=`
upload.watch(asyncio.current_task())       # a stalled write cancels this task
```
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx

from meshlib.outbound.aiohttp_errors import map_error

__all__ = ["STREAMED_UPLOAD", "ResponseBody", "Upload", "chunks", "uncancel"]

STREAMED_UPLOAD = 64 * 1024
"""Byte bodies above this size are sent in chunks, so each write is timed."""


def uncancel() -> None:
    """Take back a cancellation of the current task that the write watchdog made."""
    # Taken back so the task's cancel count stays right for asyncio.timeout and TaskGroup above us.
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()


async def chunks(data: bytes, size: int = STREAMED_UPLOAD) -> AsyncIterator[bytes]:
    """`data` in pieces of `size` bytes (so each write of a large byte body is timed)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Upload:
    """A request body fed to aiohttp chunk by chunk, each write timed (httpx's `write` timeout).

    aiohttp asks for the next chunk only once the previous one is written
    (its transport drained), so the time between handing out a chunk and the
    next request for one is that write. When it exceeds `timeout`, the task
    waiting for the response is cancelled and the transport raises
    `httpx.WriteTimeout` instead.
    """

    __slots__ = ("_chunks", "_handle", "_task", "_timeout", "done", "expired")

    def __init__(self, chunks: AsyncIterable[bytes], timeout: float | None) -> None:
        self._chunks = chunks
        self._timeout = timeout
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.done = False
        self.expired = False

    def watch(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel `task` when a write outlasts the timeout (until `unwatch`)."""
        self._task = task

    def unwatch(self) -> None:
        """The response is in (or the request failed): writes no longer cancel anything."""
        self._task = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self) -> None:
        self._handle = None
        if self._task is not None and not self.done:
            self.expired = True
            self._task.cancel()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        timeout = self._timeout
        try:
            async for chunk in self._chunks:
                if timeout is not None and self._task is not None:
                    self._handle = loop.call_later(timeout, self._expire)
                yield chunk
                if self._handle is not None:
                    self._handle.cancel()
                    self._handle = None
        finally:
            self.done = True


class ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream; errors mapped, `release` called once on close."""

    __slots__ = ("_release", "_request", "_response")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        release: Callable[[], None],
    ) -> None:
        self._response = response
        self._request = request
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            if content.is_eof():
                # The whole body came with the headers (most small answers): take the
                # buffer as it is, without a read coroutine per chunk.
                data = content.read_nowait(-1)
                if data:
                    yield data
                return
            async for chunk in content.iter_any():
                yield chunk
        except Exception as exc:
            raise map_error(exc, self._request, writing=False) from exc

    async def aclose(self) -> None:
        """Return the connection to the pool (or close it, if the body was not read to the end)."""
        self._response.release()
        release, self._release = self._release, None
        if release is not None:
            release()
