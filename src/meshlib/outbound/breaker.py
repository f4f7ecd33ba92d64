"""A circuit breaker per endpoint: pybreaker's state machine, wrapped so it never holds a lock across a call.

``pybreaker.CircuitBreaker.call()`` runs the guarded function while holding
the breaker's lock, which would serialise every concurrent request to an
endpoint, and its async path is Tornado-only. So meshlib never hands it the
network call. Instead it asks before an attempt (:meth:`Breaker.acquire`)
and reports the outcome after (:meth:`Breaker.record`), by running a
function that merely returns or raises through ``CircuitBreaker.call()``:
pybreaker's own states count failures, open, half-open and close, and its
listeners see every transition, while its lock is held for microseconds.

Two things pybreaker cannot do for us, done here:

- time comes from the injected :class:`~meshlib.clock.Clock` (pybreaker reads
  ``datetime.now``), so the open -> half-open move is made by this wrapper and
  pybreaker's own reset timeout is set out of reach;
- half-open lets exactly one probe through (pybreaker lets every call
  through while half-open, which under concurrency is a thundering herd)::

    breaker = Breaker(policy.circuit_breaker, clock, name="http://10.0.0.7:8000")
    permit = breaker.acquire()
    if permit is DENIED:
        ...                       # fail fast, touch no network
    ok = send()
    breaker.record(permit, ok)
"""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

import pybreaker

from meshlib.clock import Clock
from meshlib.policy.model import CircuitBreaker as BreakerConfig

__all__ = ["DENIED", "PASS", "PROBE", "Breaker", "Permit"]

_NEVER = 1e12  # seconds: pybreaker's wall-clock reset is never the one that fires


class Permit(Enum):
    """What :meth:`Breaker.acquire` grants for one attempt."""

    PASS = "pass"  # noqa: S105 - not a password
    """Closed breaker: go ahead."""
    PROBE = "probe"
    """Half-open breaker: this attempt is the single probe."""
    DENIED = "denied"
    """Open breaker (or a probe already in flight): fail fast."""


PASS, PROBE, DENIED = Permit.PASS, Permit.PROBE, Permit.DENIED


class _Failure(Exception):
    """Stands for a failed attempt inside pybreaker's bookkeeping."""


_FAILURE = _Failure()


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _FAILURE


class Breaker:
    """One endpoint's breaker; safe from threads and asyncio tasks alike (no lock across I/O).

    In ``mode: shadow`` the breaker counts what it would have rejected in
    ``shadow_rejections`` and never denies.
    """

    __slots__ = (
        "_cb",
        "_dirty",
        "_lock",
        "_opened_at",
        "_probing",
        "clock",
        "config",
        "enforce",
        "name",
        "opened",
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
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=_NEVER,
            listeners=[_OpenedAt(self), *listeners],
            name=name,
        )
        self._lock = threading.Lock()
        self._opened_at = 0.0
        self._probing = False
        self._dirty = False  # failures counted or not closed: successes must be reported
        self.opened = 0
        """Times the breaker opened."""
        self.shadow_rejections = 0
        """Attempts a shadow-mode breaker would have failed fast."""

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (pybreaker's names)."""
        return str(self._cb.current_state)

    def available(self) -> bool:
        """Whether :meth:`acquire` would grant an attempt now (for the load balancer)."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED or not self.enforce:
            return True
        if state == pybreaker.STATE_OPEN:
            return self.clock.monotonic() - self._opened_at >= self.config.reset_timeout
        return not self._probing

    def acquire(self) -> Permit:
        """Ask for one attempt; a granted PROBE must be followed by :meth:`record` or :meth:`release`."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return PASS
        if not self.config.enabled:
            return PASS
        with self._lock:
            state = self._cb.current_state
            if state == pybreaker.STATE_OPEN:
                if self.clock.monotonic() - self._opened_at < self.config.reset_timeout:
                    return self._deny()
                self._cb.half_open()
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

    def record(self, permit: Permit, success: bool) -> None:
        """Report an attempt's outcome to pybreaker's state machine.

        Outcomes of attempts that started before the breaker opened, or while
        another attempt was the probe, are ignored: only the probe decides a
        half-open breaker.
        """
        if success and permit is PASS and not self._dirty:
            return  # the fast path of a healthy endpoint: nothing for pybreaker to count
        if permit is DENIED or not self.config.enabled:
            return
        cb = self._cb
        if permit is PASS and cb.current_state != pybreaker.STATE_CLOSED:
            return  # not ours to count: only the probe decides a half-open breaker
        try:
            cb.call(_succeed if success else _fail)
        except (_Failure, pybreaker.CircuitBreakerError):
            pass
        finally:
            if permit is PROBE:
                self._probing = False
            self._dirty = cb.fail_counter > 0 or cb.current_state != pybreaker.STATE_CLOSED

    def release(self, permit: Permit) -> None:
        """Give back a probe whose attempt never ran (the call was cancelled)."""
        if permit is PROBE:
            self._probing = False


class _OpenedAt(pybreaker.CircuitBreakerListener):
    """Stamps the opening time on meshlib's clock, since pybreaker's own is the wall clock."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        if new_state is not None and new_state.name == pybreaker.STATE_OPEN:
            self._breaker._opened_at = self._breaker.clock.monotonic()
            self._breaker.opened += 1
