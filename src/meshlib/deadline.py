"""Deadlines: one absolute point in (monotonic) time by which a call must be done.

A deadline is shared by both sides of a service. The inbound middleware turns
an incoming `x-mesh-deadline-ms` header into a [`Deadline`][meshlib.deadline.Deadline] and binds it
with [`deadline_scope`][meshlib.deadline.deadline_scope]; every outbound call made while serving that
request reads `current_deadline`, caps its own total timeout by it and
sends what is left on as a *relative* header (no clock skew between hosts):

```python
with deadline_scope(Deadline.after(0.250, SYSTEM_CLOCK)):
    client.get("http://payments/v1/charges")   # at most ~250 ms, header says so
```

Deadlines are values on the injected `Clock`, so tests
move time by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from meshlib.clock import Clock

__all__ = [
    "DEADLINE_HEADER",
    "Deadline",
    "current_deadline",
    "deadline_scope",
    "format_deadline_header",
    "parse_deadline_header",
]

DEADLINE_HEADER = "x-mesh-deadline-ms"
"""The header carrying the caller's remaining time, in whole milliseconds."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute moment on a clock's monotonic timeline.

    Build one relative to now and ask how much is left:

    ```python
    deadline = Deadline.after(2.0, clock)
    deadline.remaining(clock)   # 2.0, shrinking as the clock moves
    deadline.expired(clock)     # False until it runs out
    ```
    """

    at: float
    """Monotonic time (seconds, on the clock it was built with) when the deadline passes."""

    @classmethod
    def after(cls, seconds: float, clock: Clock) -> Deadline:
        """The deadline `seconds` from now on `clock`."""
        return cls(clock.monotonic() + seconds)

    def remaining(self, clock: Clock) -> float:
        """Seconds left, never negative."""
        left = self.at - clock.monotonic()
        return left if left > 0.0 else 0.0

    def expired(self, clock: Clock) -> bool:
        """True once no time is left."""
        return clock.monotonic() >= self.at

    def earliest(self, other: Deadline | None) -> Deadline:
        """The sooner of this deadline and `other` (`None` means no other deadline)."""
        if other is None or self.at <= other.at:
            return self
        return other


current_deadline: ContextVar[Deadline | None] = ContextVar("meshlib_deadline", default=None)
"""The deadline of the request being served, set by the inbound middleware."""


@contextmanager
def deadline_scope(deadline: Deadline | None) -> Iterator[Deadline | None]:
    """Bind `deadline` as `current_deadline` for the block, then restore the previous one.

    A nested scope never extends an outer deadline: the sooner one wins:

    ```python
    with deadline_scope(Deadline.after(1.0, SYSTEM_CLOCK)) as deadline:
        ...
    ```
    """
    outer = current_deadline.get()
    effective = deadline.earliest(outer) if deadline is not None else outer
    token = current_deadline.set(effective)
    try:
        yield effective
    finally:
        current_deadline.reset(token)


def format_deadline_header(deadline: Deadline, clock: Clock) -> str:
    """The header value for the time left: whole milliseconds, rounded down, at least 0.

    `format_deadline_header(Deadline.after(0.25, clock), clock) == "250"`
    """
    return str(max(0, math.floor(deadline.remaining(clock) * 1000.0 + 1e-6)))


def parse_deadline_header(value: str, clock: Clock) -> Deadline | None:
    """The deadline a header value describes, or `None` when it is malformed.

    A malformed header is ignored rather than failing the request:
    `parse_deadline_header("250", clock)` is 250 ms from now; `"soon"` is `None`.
    """
    text = value.strip()
    if not text or len(text) > 15 or not text.isascii() or not text.isdigit():
        return None
    return Deadline.after(int(text) / 1000.0, clock)
