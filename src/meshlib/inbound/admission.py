"""Admission control: a token-bucket rate limit and a concurrency limit, sans-IO.

Both take a `Clock` and a short `threading.Lock`
held only for a few arithmetic operations, never across an `await`, so one
limiter is safe from asyncio tasks and from server threads alike:

```python
bucket = TokenBucket(rate=100.0, burst=200, clock=clock)
wait = bucket.try_acquire()         # 0.0: admitted; > 0: seconds until a token frees up
limit = ConcurrencyLimiter(64)
if limit.try_acquire():
    try: ...
    finally: limit.release()
```

`LimiterRegistry` keeps limiter state across policy reloads while a
limit's settings do not change, so a reload does not refill every bucket.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable

from meshlib.clock import Clock

__all__ = ["ConcurrencyLimiter", "LimiterRegistry", "TokenBucket", "retry_after_header"]


def retry_after_header(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, rounded up, at least 1 (`0.2` -> `"1"`)."""
    return str(max(1, math.ceil(seconds)))


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; each request takes one.

    Starts full, so a burst is allowed straight away:

    ```python
    bucket = TokenBucket(rate=2.0, burst=2, clock=FakeClock())
    bucket.try_acquire(), bucket.try_acquire(), bucket.try_acquire()   # 0.0, 0.0, 0.5
    ```
    """

    __slots__ = ("_clock", "_lock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock.monotonic()

    def try_acquire(self) -> float:
        """Take a token: 0.0 when one was free, else the seconds until one will be.

        Shadow mode uses it the same way (the bucket tracks what enforcing
        would do) and only ignores the answer.
        """
        with self._lock:
            now = self._clock.monotonic()
            tokens = self._tokens + (now - self._stamp) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0.0
            self._tokens = tokens
            return (1.0 - tokens) / self.rate

    @property
    def tokens(self) -> float:
        """Tokens available now (for tests and reports)."""
        with self._lock:
            elapsed = self._clock.monotonic() - self._stamp
            return min(self.burst, self._tokens + elapsed * self.rate)


class ConcurrencyLimiter:
    """At most `limit` requests in flight.

    `try_acquire` takes a slot when one is free; `force_acquire` takes one
    regardless (shadow mode, so the count stays true); every acquire is paired
    with one `release`:

    ```python
    limiter = ConcurrencyLimiter(1)
    limiter.try_acquire(), limiter.try_acquire()   # True, False
    ```
    """

    __slots__ = ("_lock", "in_flight", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit must be at least 1")
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        with self._lock:
            if self.in_flight >= self.limit:
                return False
            self.in_flight += 1
            return True

    def force_acquire(self) -> bool:
        """Take a slot even past the limit; returns whether it was within the limit."""
        with self._lock:
            within = self.in_flight < self.limit
            self.in_flight += 1
            return within

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.in_flight -= 1


class LimiterRegistry:
    """Limiter objects keyed by (where in the policy, their settings), kept across reloads.

    `swap` builds the set for a new policy: a key seen before keeps its
    limiter (and its tokens and in-flight count); a key no longer used is
    dropped (requests still holding it release into the old object, harmlessly).
    """

    __slots__ = ("_clock", "_current")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._current: dict[Hashable, TokenBucket | ConcurrencyLimiter] = {}

    def bucket(
        self, key: Hashable, rate: float, burst: float, into: dict[Hashable, object]
    ) -> TokenBucket:
        """The bucket for `key`: the existing one, or a new full one; recorded into `into`."""
        found = self._current.get(key)
        if not isinstance(found, TokenBucket):
            found = TokenBucket(rate, burst, self._clock)
        into[key] = found
        return found

    def concurrency(
        self, key: Hashable, limit: int, into: dict[Hashable, object]
    ) -> ConcurrencyLimiter:
        """The concurrency limiter for `key`, existing or new; recorded into `into`."""
        found = self._current.get(key)
        if not isinstance(found, ConcurrencyLimiter):
            found = ConcurrencyLimiter(limit)
        into[key] = found
        return found

    def swap(self, used: dict[Hashable, object]) -> None:
        """Keep only the limiters the new policy uses."""
        self._current = {
            k: v for k, v in used.items() if isinstance(v, TokenBucket | ConcurrencyLimiter)
        }
