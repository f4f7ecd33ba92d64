"""The retry budget: retries may only be a share of requests, so retries never storm.

After gRPC A6 ``retryThrottling`` and Finagle's ``RetryBudget``: per
destination, over a sliding window, a retry is allowed while::

    retries <= ratio * requests + min_per_second * window

Under a dead upstream every first try fails, yet the upstream sees at most
``(1 + ratio)`` times the traffic, plus the small floor that lets a quiet
client still retry, instead of ``attempts`` times::

    budget = RetryBudget(policy.retry.budget, clock)
    budget.record_request()
    if budget.try_retry():
        ...   # retry
    budget.refused   # retries the budget said no to
"""

from __future__ import annotations

import threading

from meshlib.clock import Clock
from meshlib.policy.model import RetryBudget as RetryBudgetConfig

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Counts requests and retries in ``_BUCKETS`` time buckets covering the window.

    Buckets make the window slide in O(1) per event without keeping every
    timestamp; the window is accurate to one bucket (a tenth of it).
    """

    __slots__ = (
        "_bucket_width",
        "_current",
        "_lock",
        "_requests",
        "_retries",
        "clock",
        "config",
        "refused",
        "retries",
    )

    def __init__(self, config: RetryBudgetConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._bucket_width = config.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._current = int(clock.monotonic() / self._bucket_width)
        self._lock = threading.Lock()
        self.refused = 0
        """Retries refused since creation."""
        self.retries = 0
        """Retries allowed since creation."""

    def _rotate(self) -> int:
        """Clear the buckets that slid out of the window; return the current bucket's index."""
        now = int(self.clock.monotonic() / self._bucket_width)
        gap = now - self._current
        if gap > 0:
            for step in range(1, min(gap, _BUCKETS) + 1):
                index = (self._current + step) % _BUCKETS
                self._requests[index] = 0
                self._retries[index] = 0
            self._current = now
        return now % _BUCKETS

    def record_request(self) -> None:
        """Count one call (its first try); retries are counted by :meth:`try_retry`."""
        now = int(self.clock.monotonic() / self._bucket_width)
        if now == self._current:
            # Hot path without the lock: a rare lost increment only makes the budget stricter.
            self._requests[now % _BUCKETS] += 1
            return
        with self._lock:
            self._requests[self._rotate()] += 1

    def allowance(self) -> float:
        """How many retries the window allows right now."""
        with self._lock:
            self._rotate()
            return self._allowance()

    def _allowance(self) -> float:
        config = self.config
        return config.ratio * sum(self._requests) + config.min_per_second * config.window

    def try_retry(self) -> bool:
        """Take one retry from the budget; False (and counted as refused) when it is spent."""
        with self._lock:
            index = self._rotate()
            if sum(self._retries) + 1 > self._allowance():
                self.refused += 1
                return False
            self._retries[index] += 1
            self.retries += 1
            return True
