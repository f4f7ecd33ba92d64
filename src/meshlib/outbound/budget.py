"""The retry budget: retries may only be a share of requests, so retries never storm.

After gRPC A6 `retryThrottling` and Finagle's `RetryBudget`: per destination,
a retry is allowed only if, counting it, the retries of the past `window`
stay within

```text
retries <= ratio * requests + min_per_second * window
```

where `requests` are the calls (first tries) of the same past window. So
under a dead upstream every first try fails, yet in any window the upstream
sees at most `1 + ratio` times the calls, plus the small floor that lets a
quiet client still retry, instead of `attempts` times.

The bound is exact, never approximate upwards. Time is cut into 100 slices
of `window / 100`; requests are counted only in the slices wholly inside the
past window and retries in every slice that touches it. A request is thus
forgotten up to one slice early and a retry up to one slice late: the budget
may refuse a retry the formula would just allow (by at most one slice's
worth of requests), and never allows one it would refuse.

```python
budget = RetryBudget(policy.retry.budget, clock)
budget.record_request()
if budget.try_retry():
    ...   # retry
budget.refused   # retries the budget said no to
```
"""

from __future__ import annotations

import threading

from meshlib.clock import Clock
from meshlib.policy.model import RetryBudget as RetryBudgetConfig

__all__ = ["RetryBudget"]

_SLICES = 100
_SLOTS = _SLICES + 1  # retries are kept one slice longer than requests


class RetryBudget:
    """Counts requests and retries per slice of the window; see the module docstring for the bound.

    Example:
        ```python
        budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=0), clock)
        for _ in range(10):
            budget.record_request()
        budget.try_retry(), budget.try_retry(), budget.try_retry()   # True, True, False
        ```
    """

    __slots__ = (
        "_current",
        "_lock",
        "_requests",
        "_retries",
        "_slice",
        "_total_requests",
        "_total_retries",
        "clock",
        "config",
        "refused",
        "retries",
    )

    def __init__(self, config: RetryBudgetConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._slice = config.window / _SLICES
        self._requests = [0] * _SLOTS
        self._retries = [0] * _SLOTS
        self._total_requests = 0  # in the newest _SLICES slices
        self._total_retries = 0  # in all _SLOTS slices
        self._current = int(clock.monotonic() / self._slice)
        self._lock = threading.Lock()
        self.refused = 0
        """Retries refused since creation."""
        self.retries = 0
        """Retries allowed since creation."""

    def reconfigured(self, config: RetryBudgetConfig) -> RetryBudget:
        """This budget under a new policy section: its counts kept when the window is the same."""
        if config.window != self.config.window:
            return RetryBudget(config, self.clock)
        with self._lock:
            self.config = config
        return self

    def _advance(self) -> int:
        """Move to the current slice, forgetting what left the window; return its slot."""
        now = int(self.clock.monotonic() / self._slice)
        current = self._current
        if now > current:
            requests, retries = self._requests, self._retries
            if now - current >= _SLOTS:
                requests[:] = retries[:] = [0] * _SLOTS
                self._total_requests = self._total_retries = 0
            else:
                for index in range(current + 1, now + 1):
                    # Slice index - _SLICES leaves the requests' window; the slot's old
                    # slice (index - _SLOTS) leaves the retries' window.
                    self._total_requests -= requests[(index - _SLICES) % _SLOTS]
                    slot = index % _SLOTS
                    self._total_retries -= retries[slot]
                    requests[slot] = retries[slot] = 0
            self._current = now
        return now % _SLOTS

    def record_request(self) -> None:
        """Count one call (its first try); retries are counted by [`try_retry`][meshlib.outbound.budget.RetryBudget.try_retry]."""
        with self._lock:
            self._requests[self._advance()] += 1
            self._total_requests += 1

    def allowance(self) -> float:
        """How many retries the past window allows in all (those already made included)."""
        with self._lock:
            self._advance()
            return self._allowance()

    def _allowance(self) -> float:
        config = self.config
        return config.ratio * self._total_requests + config.min_per_second * config.window

    def try_retry(self) -> bool:
        """Take one retry from the budget; False (and counted as refused) when it is spent."""
        with self._lock:
            slot = self._advance()
            if self._total_retries + 1 > self._allowance():
                self.refused += 1
                return False
            self._retries[slot] += 1
            self._total_retries += 1
            self.retries += 1
            return True
