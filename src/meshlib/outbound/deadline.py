"""The total deadline over the response body: a body that trickles still ends when the call's time does.

httpx's timeouts are per operation: a `read` timeout bounds each wait for
data, so a body sent one byte at a time never trips it. A mesh call's total
deadline (policy `timeouts.total`, capped by an incoming deadline) covers the
whole call, as Go's `http.Client.Timeout` and aiohttp's `ClientTimeout.total`
do: connecting, every attempt and backoff, and reading the response body,
whether `client.get()` reads it or the caller streams it. The timer keeps
running after the response headers are returned, while the caller reads.

The flow puts one of these around each attempt's response stream:

- [`SyncDeadlineBody`][meshlib.outbound.deadline.SyncDeadlineBody] checks the
  deadline as each chunk arrives: a body still coming after the deadline
  raises `DeadlineExceeded` at the next chunk. A read that is still waiting
  when the deadline passes ends at its read timeout, which the flow caps at
  the time left when the response was handed over, so it never waits longer
  than the attempt timeout, nor past the deadline by more than one read.
- [`AsyncDeadlineBody`][meshlib.outbound.deadline.AsyncDeadlineBody] does the
  same, and when less time is left than one read may wait, it bounds the wait
  for the next chunk by the time left: the body ends at the deadline itself.

```python
response.stream = SyncDeadlineBody(response.stream, deadline_at, clock, request, "payments")
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx

from meshlib.clock import Clock
from meshlib.errors import DeadlineExceeded
from meshlib.outbound.steps import ATTEMPTS_EXTENSION
from meshlib.telemetry import names

__all__ = ["AsyncDeadlineBody", "SyncDeadlineBody"]


class _DeadlineBody:
    """What both body wrappers hold; nothing that would keep a destination or pool alive.

    `read_timeout` is the longest one wait for data may last (httpx's `read`
    timeout in force), `counter` the deadline metric to count an expiry in.
    """

    __slots__ = (
        "_clock",
        "_counter",
        "_deadline",
        "_destination",
        "_extensions",
        "_read_timeout",
        "_request",
        "_stream",
    )

    def __init__(
        self,
        stream: Any,
        deadline: float,
        clock: Clock,
        request: httpx.Request,
        destination: str,
        extensions: dict[str, Any] | None = None,
        counter: Any = None,
        read_timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._deadline = deadline
        self._clock = clock
        self._request = request
        self._destination = destination
        self._extensions = extensions
        self._counter = counter
        self._read_timeout = read_timeout

    def _expired(self) -> DeadlineExceeded:
        if self._counter is not None:
            self._counter.add(1, {names.ATTR_DESTINATION: self._destination})
        error = DeadlineExceeded(
            f"the deadline for {self._destination!r} ran out while the response body was read",
            request=self._request,
        )
        extensions = self._extensions
        attempts = () if extensions is None else extensions.get(ATTEMPTS_EXTENSION, ())
        error.__meshlib_attempts__ = attempts  # type: ignore[attr-defined]
        return error


class SyncDeadlineBody(_DeadlineBody, httpx.SyncByteStream):
    """A sync response body that raises `DeadlineExceeded` once the call's deadline has passed.

    Example:
        ```python
        response.stream = SyncDeadlineBody(response.stream, deadline_at, clock, request, "payments")
        ```
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        deadline, clock = self._deadline, self._clock
        try:
            for chunk in self._stream:
                if clock.monotonic() > deadline:
                    raise self._expired()
                yield chunk
        except httpx.TimeoutException as exc:
            if isinstance(exc, DeadlineExceeded) or clock.monotonic() < deadline:
                raise
            raise self._expired() from exc

    def close(self) -> None:
        """Close the wrapped body."""
        self._stream.close()


class AsyncDeadlineBody(_DeadlineBody, httpx.AsyncByteStream):
    """An async response body that ends at the call's deadline, however the bytes trickle.

    While more time is left than one read may wait (`read_timeout`), no timer
    is needed.

    Example:
        ```python
        response.stream = AsyncDeadlineBody(response.stream, deadline_at, clock, request, "payments")
        ```
    """

    __slots__ = ()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        deadline, clock = self._deadline, self._clock
        unbounded = self._read_timeout is None
        chunks = self._stream.__aiter__()
        try:
            while True:
                left = deadline - clock.monotonic()
                if left <= 0.0:
                    raise self._expired()
                try:
                    # A read may wait read_timeout; only when the deadline is nearer is a timer needed.
                    if unbounded or left < self._read_timeout:  # type: ignore[operator]
                        with anyio.move_on_after(left) as scope:
                            chunk = await chunks.__anext__()
                        if scope.cancelled_caught:
                            raise self._expired()
                    else:
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                yield chunk
        except httpx.TimeoutException as exc:
            if isinstance(exc, DeadlineExceeded) or clock.monotonic() < deadline:
                raise
            raise self._expired() from exc

    async def aclose(self) -> None:
        """Close the wrapped body."""
        await self._stream.aclose()
