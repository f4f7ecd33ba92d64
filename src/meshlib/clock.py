"""Time and chance, injected into every decision object so tests never sleep.

The breaker, the retry budget, outlier ejection, admission and deadlines all
take a `Clock`. Production code uses `SYSTEM_CLOCK`; tests use
`FakeClock` and move time by hand:

```python
clock = FakeClock()
budget = RetryBudget(policy.retry.budget, clock=clock)
clock.advance(1.5)
```
"""

from __future__ import annotations

import random
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where decision objects read time and randomness from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> float:
        """Seconds since the epoch (for certificates and reports, never for intervals)."""

    def random(self) -> float:
        """A float in [0, 1): jitter, sampling, fault percentages."""


class SystemClock:
    """The real clock and the process-wide PRNG."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)
    random = staticmethod(random.random)


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A clock that moves only when told, with scripted or seeded randomness.

    `random_values` are returned in order and then repeat the last one;
    without them a seeded PRNG is used so runs are repeatable.
    """

    def __init__(
        self,
        start: float = 1_000.0,
        *,
        wall_start: float = 1_700_000_000.0,
        random_values: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._values = list(random_values or [])
        self._rng = random.Random(seed)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """Current fake monotonic time."""
        return self._now

    def wall(self) -> float:
        """Current fake wall time, moving with `advance`."""
        return self._now + self._wall_offset

    def random(self) -> float:
        """Next scripted value, or the seeded PRNG's."""
        if self._values:
            return self._values.pop(0) if len(self._values) > 1 else self._values[0]
        return self._rng.random()

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record a sleep and advance time by it (for drivers under test)."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
