"""A circuit breaker per endpoint: pybreaker's state machine, wrapped so it never holds a lock across a call.

`pybreaker.CircuitBreaker.call()` runs the guarded function while holding
the breaker's lock, which would serialise every concurrent request to an
endpoint, and its async path is Tornado-only. So meshlib never hands it the
network call. Instead it asks before an attempt ([`acquire`][meshlib.outbound.breaker.Breaker.acquire])
and reports the outcome after ([`record`][meshlib.outbound.breaker.Breaker.record]) by running, through
`CircuitBreaker.call()`, a function that merely returns or raises: pybreaker's
own state objects count failures, open, half-open and close, and its
listeners see every transition, while its lock is held for microseconds.

Two things pybreaker cannot do for us, done here:

- its clock is `datetime.now()`, and only its open state reads it (to let a
  call through once `reset_timeout` has passed). meshlib's time comes from the
  injected [`Clock`][meshlib.clock.Clock], so this wrapper makes the
  open -> half-open move itself (`CircuitBreaker.half_open()`) and never feeds
  an outcome to an open breaker: pybreaker's clock is never consulted;
- half-open lets exactly one probe through (pybreaker lets every call through
  while half-open, which under concurrency is a thundering herd).

Every read-decide-update sequence runs under the wrapper's own lock, so the
breaker is safe from threads, from tasks on one event loop (nothing in it
awaits) and on free-threaded CPython (no reliance on the GIL):

```python
breaker = Breaker(policy.circuit_breaker, clock, name="http://10.0.0.7:8000")
permit = breaker.acquire()
if permit is DENIED:
    ...                       # fail fast, touch no network
ok = send()
breaker.record(permit, ok)
```
"""

from __future__ import annotations

import contextlib
import threading
from enum import Enum
from typing import Any

import pybreaker

from meshlib.clock import Clock
from meshlib.policy.model import CircuitBreaker as BreakerConfig

__all__ = ["DENIED", "PASS", "PROBE", "Breaker", "Permit", "Transition"]


class Permit(Enum):
    """What [`Breaker.acquire`][meshlib.outbound.breaker.Breaker.acquire] grants for one attempt."""

    PASS = "pass"  # noqa: S105 - not a password
    """Closed breaker: go ahead."""
    PROBE = "probe"
    """Half-open breaker: this attempt is the single probe."""
    DENIED = "denied"
    """Open breaker (or a probe already in flight): fail fast."""


PASS, PROBE, DENIED = Permit.PASS, Permit.PROBE, Permit.DENIED

Transition = tuple[str, str]
"""`(state before, state after)` of a state change a report caused."""


class _Failure(Exception):
    """Stands for a failed attempt inside pybreaker's bookkeeping (a fresh one per failure)."""


def _succeed() -> None:
    return None


def _fail() -> None:
    # A new instance each time: re-raising one shared instance would grow its
    # __traceback__ by a few frames per failure and pin every caller's frames.
    raise _Failure


class Breaker:
    """One endpoint's breaker; safe from threads and asyncio tasks alike (no lock across I/O).

    In `mode: shadow` the breaker counts what it would have rejected in
    `shadow_rejections` and never denies.

    Example:
        ```python
        breaker = Breaker(CircuitBreaker(failure_threshold=3), SYSTEM_CLOCK, name="http://a:80")
        permit = breaker.acquire()
        breaker.record(permit, success=False)   # None, or ("closed", "open") when it tripped
        ```
    """

    __slots__ = (
        "_cb",
        "_dirty",
        "_lock",
        "_opening",
        "_probing",
        "clock",
        "config",
        "enforce",
        "name",
        "shadow_rejections",
    )

    def __init__(
        self,
        config: BreakerConfig,
        clock: Clock,
        *,
        name: str = "",
        listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (),
    ) -> None:
        self.config = config
        self.clock = clock
        self.name = name
        self.enforce = config.enabled and config.mode == "enforce"
        self._opening = _Openings(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=config.reset_timeout,  # informative only: see the module docstring
            listeners=[self._opening, *listeners],
            name=name,
        )
        self._lock = threading.Lock()
        self._probing = False
        self._dirty = False  # failures counted or not closed: successes must be reported
        self.shadow_rejections = 0
        """Attempts a shadow-mode breaker would have failed fast."""

    @property
    def opened(self) -> int:
        """Times the breaker opened."""
        return self._opening.count

    @property
    def state(self) -> str:
        """`closed`, `open` or `half-open` (pybreaker's names)."""
        return str(self._cb.current_state)

    def reconfigure(self, config: BreakerConfig) -> None:
        """Adopt a new policy section, keeping the state (a policy swap must not reset a breaker).

        A disabled breaker is closed, so that enabling it again starts afresh.
        """
        with self._lock:
            self.config = config
            self.enforce = config.enabled and config.mode == "enforce"
            self._cb.fail_max = config.failure_threshold
            self._cb.reset_timeout = config.reset_timeout
            if not config.enabled and self._cb.current_state != pybreaker.STATE_CLOSED:
                self._cb.close()
                self._probing = False
                self._dirty = False

    def available(self) -> bool:
        """Whether [`acquire`][meshlib.outbound.breaker.Breaker.acquire] would grant an attempt now (a hint for the load balancer)."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED or not self.enforce:
            return True
        if state == pybreaker.STATE_OPEN:
            return self.clock.monotonic() - self._opening.at >= self.config.reset_timeout
        return not self._probing

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0.0 when it would now)."""
        if self._cb.current_state != pybreaker.STATE_OPEN:
            return 0.0
        left = self._opening.at + self.config.reset_timeout - self.clock.monotonic()
        return left if left > 0.0 else 0.0

    def acquire(self) -> Permit:
        """Ask for one attempt; a granted PROBE must be followed by [`record`][meshlib.outbound.breaker.Breaker.record] or [`release`][meshlib.outbound.breaker.Breaker.release]."""
        cb = self._cb
        if cb.current_state == pybreaker.STATE_CLOSED or not self.config.enabled:
            return PASS  # a PASS that races with an opening is ignored by record()
        with self._lock:
            state = cb.current_state
            if state == pybreaker.STATE_OPEN:
                if self.clock.monotonic() - self._opening.at < self.config.reset_timeout:
                    return self._deny()
                cb.half_open()
                state = pybreaker.STATE_HALF_OPEN
            if state == pybreaker.STATE_HALF_OPEN:
                if self._probing:
                    return self._deny()
                self._probing = True
                return PROBE
        return PASS

    def _deny(self) -> Permit:
        if self.enforce:
            return DENIED
        self.shadow_rejections += 1
        return PASS

    def record(self, permit: Permit, success: bool) -> Transition | None:
        """Report an attempt's outcome to pybreaker's state machine; return the state change it caused.

        Outcomes of attempts that started before the breaker opened, or while
        another attempt was the probe, are ignored: only the probe decides a
        half-open breaker.
        """
        if success and permit is PASS and not self._dirty:
            return None  # the fast path of a healthy endpoint: nothing for pybreaker to count
        if permit is DENIED or not self.config.enabled:
            return None
        cb = self._cb
        with self._lock:
            if permit is PROBE:
                self._probing = False
            before = cb.current_state
            if before == pybreaker.STATE_OPEN:
                return None  # not ours to count, and pybreaker's open state reads its own clock
            if (permit is PASS) != (before == pybreaker.STATE_CLOSED):
                return None  # only the probe decides a half-open breaker
            with contextlib.suppress(_Failure, pybreaker.CircuitBreakerError):
                cb.call(_succeed if success else _fail)
            after = cb.current_state
            self._dirty = cb.fail_counter > 0 or after != pybreaker.STATE_CLOSED
        return None if after == before else (before, after)

    def release(self, permit: Permit) -> None:
        """Give back a probe whose outcome says nothing of the endpoint (cancelled, or refused locally)."""
        if permit is PROBE:
            with self._lock:
                self._probing = False


class _Openings(pybreaker.CircuitBreakerListener):
    """Stamps each opening on meshlib's clock (pybreaker's own stamp is the wall clock).

    Holds no reference back to the breaker, so a dropped breaker is freed
    without waiting for the cycle collector.
    """

    __slots__ = ("at", "clock", "count")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.at = 0.0
        self.count = 0

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        if new_state is not None and new_state.name == pybreaker.STATE_OPEN:
            self.at = self.clock.monotonic()
            self.count += 1
