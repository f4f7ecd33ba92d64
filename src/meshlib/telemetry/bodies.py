"""Response-body pass-throughs that report the body's end, and the raw Server-Timing read.

A call's spans and its latency split end when the caller is done with the
response body, streamed or read, so `CallTelemetry`
puts one of these around the final response's stream:

```python
response.stream = SyncBody(response.stream, call.finish_body)
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx

__all__ = ["AsyncBody", "SyncBody", "server_timing"]


def server_timing(response: httpx.Response) -> str | None:
    """The Server-Timing header (repeats joined), or None; a third of `headers.get`'s cost.

    `server_timing(httpx.Response(200, headers={"server-timing": "app;dur=2"})) == "app;dur=2"`
    """
    found = [v for k, v in response.headers.raw if k.lower() == b"server-timing"]
    if not found:
        return None
    return b", ".join(found).decode("latin-1")


class SyncBody(httpx.SyncByteStream):
    """Passes a response body through and calls `done` once when it is closed.

    Example:
        ```python
        response.stream = SyncBody(response.stream, on_body_done)
        ```
    """

    def __init__(self, stream: httpx.SyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class AsyncBody(httpx.AsyncByteStream):
    """The async twin of `SyncBody`."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()
