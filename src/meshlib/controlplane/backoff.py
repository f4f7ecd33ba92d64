"""Backoff between failed control-plane conversations: tenacity's wait strategies, our own streak.

Loops that live forever (a watch, a heartbeat) cannot use
`tenacity.AsyncRetrying` as is: its attempt number only resets when an
attempt *returns*, and a watch never returns. `Backoff` keeps the streak of
failures itself and asks a tenacity wait strategy for the delay, so every
backoff in meshlib is tenacity's arithmetic (full jitter, caps):

```python
backoff = Backoff(tenacity.wait_random_exponential(multiplier=0.1, max=5.0))
delay = backoff.failed()     # 0..0.1 s, then 0..0.2 s, ... capped at 5 s
backoff.succeeded()          # the next failure starts from the bottom again
```
"""

from __future__ import annotations

from typing import Any, cast

import tenacity
from tenacity.wait import wait_base

__all__ = ["Backoff", "delay_for"]


def delay_for(wait: wait_base, attempt: int) -> float:
    """The delay `wait` gives after the `attempt`-th consecutive failure (1-based)."""
    state = tenacity.RetryCallState(cast(Any, None), None, (), {})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


class Backoff:
    """A streak of failures and the tenacity wait strategy that spaces the retries."""

    def __init__(self, wait: wait_base) -> None:
        self.wait = wait
        self.failures = 0
        """Failures in a row since the last success."""

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return delay_for(self.wait, self.failures)

    def succeeded(self) -> None:
        """A try worked: the next failure waits the shortest delay again."""
        self.failures = 0
