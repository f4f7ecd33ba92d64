"""Retry decisions: what failed, whether it may be tried again, and after how long.

A failure is classified once (`classify_exception`): was it known not to
reach the server (connect refused, connect or pool timeout), which is safe to
retry for any method, or may the server have processed it (a reset, a read
timeout, a 503), which is retried only for the policy's `methods` or a
request carrying an `Idempotency-Key`.

`RetryRules` is built once per effective policy, as stamina builds its
tenacity keywords once: tenacity's `stop_after_attempt` and
`wait_exponential` give the attempt limit and the backoff ceiling, and full
jitter draws from the injected clock:

```python
rules = RetryRules(effective.retry)
rules.retryable_status(503)            # True with the default retry_on
rules.backoff(1, clock)                # uniform(0, min(max, base * 2**0))
parse_retry_after("2", clock)          # 2.0
```

`attempts` counts tries including the first (gRPC A6 `maxAttempts`).
"""

from __future__ import annotations

import datetime
import email.utils
import math
from dataclasses import dataclass

import httpx
import tenacity

from meshlib.clock import Clock
from meshlib.errors import TLSVerificationError
from meshlib.policy.model import Retry

__all__ = [
    "IDEMPOTENCY_HEADER",
    "RetryRules",
    "TestingMode",
    "classify_exception",
    "current_testing",
    "is_local_rejection",
    "parse_retry_after",
    "set_testing_mode",
]

IDEMPOTENCY_HEADER = "idempotency-key"
_GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class TestingMode:
    """Set by [`meshlib.testing.set_testing`][meshlib.testing.set_testing]: no backoff sleeps, a fixed number of attempts."""

    attempts: int = 1
    cap: bool = False

    def attempts_for(self, configured: int) -> int:
        """The attempts a test run makes instead of `configured`."""
        return min(self.attempts, configured) if self.cap else self.attempts


_testing: TestingMode | None = None


def current_testing() -> TestingMode | None:
    """The testing mode in force, or None in production."""
    return _testing


def set_testing_mode(mode: TestingMode | None) -> TestingMode | None:
    """Install `mode` (None: off) and return the previous one."""
    global _testing
    previous, _testing = _testing, mode
    return previous


def classify_exception(exc: BaseException) -> tuple[str | None, bool]:
    """`(retry_on condition, may have reached the server)` for a failed attempt.

    The condition is None for errors no policy retries (an invalid URL, an
    unsupported protocol, a plaintext call refused under TLS, a certificate
    that failed verification or proved another identity: another try would
    meet the same certificate).
    """
    if isinstance(exc, TLSVerificationError):
        return None, False
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return "connect-failure", False
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
        return "timeout", True
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return "reset", True
    return None, True


def is_local_rejection(exc: BaseException) -> bool:
    """Whether a failed attempt was refused by this client itself, not by the endpoint.

    `httpx.PoolTimeout` means the client's own connection pool stayed full:
    the endpoint never saw the request and is not to blame, so such outcomes
    never feed its breaker or outlier detection.
    """
    return isinstance(exc, httpx.PoolTimeout)


_RETRY_AFTER_MAX_CHARS = 64  # an HTTP-date is 29 characters; delta-seconds far fewer


def parse_retry_after(value: str, clock: Clock) -> float | None:
    """Seconds a `Retry-After` value asks for (delta-seconds or HTTP-date), or None if malformed.

    Anything else is treated as absent, as a plain httpx user would see it:
    non-ASCII digits (`str.isdigit()` accepts `"²"` and `"٣"`), dates that do
    not fit a datetime, overlong values. A date in the past asks for 0 s.

    Example:
        ```python
        parse_retry_after("2", clock)                               # 2.0
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", clock)   # 0.0 (past)
        parse_retry_after("²", clock)                               # None
        ```
    """
    text = value.strip()
    if not text or len(text) > _RETRY_AFTER_MAX_CHARS or not text.isascii():
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": an HTTP-date is always GMT (RFC 9110)
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - clock.wall()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    if not math.isfinite(seconds):  # pragma: no cover - timestamps of valid datetimes are finite
        return None
    return max(0.0, seconds)


class RetryRules:
    """One effective `retry` section, compiled for the hot path."""

    __slots__ = (
        "_stop",
        "_wait",
        "attempts",
        "conditions",
        "idempotency_key",
        "methods",
        "retry_after_max",
        "shadow",
        "statuses",
    )

    def __init__(self, retry: Retry) -> None:
        self.attempts = retry.attempts
        statuses = {v for v in retry.retry_on if isinstance(v, int)}
        conditions = {v for v in retry.retry_on if isinstance(v, str)}
        if "gateway-error" in conditions:
            statuses |= _GATEWAY_ERRORS
        if "5xx" in conditions:
            statuses |= set(range(500, 600))
        self.statuses = frozenset(statuses)
        self.conditions = frozenset(conditions)
        self.methods = frozenset(retry.methods)
        self.retry_after_max = retry.retry_after_max
        self.idempotency_key = retry.idempotency_key
        self.shadow = retry.mode == "shadow"
        self._stop = tenacity.stop_after_attempt(retry.attempts)
        self._wait = tenacity.wait_exponential(multiplier=retry.backoff.base, max=retry.backoff.max)

    def retryable_status(self, status: int) -> bool:
        """Whether a response with this status may be retried (it may have been processed)."""
        return status in self.statuses

    def retryable_exception(self, condition: str | None, reached_server: bool) -> bool:
        """Whether a failed attempt's condition may be retried.

        A failure that never reached the server is always retryable.
        """
        if condition is None:
            return False
        return not reached_server or condition in self.conditions

    def may_replay(self, method: str, headers: httpx.Headers) -> bool:
        """Whether a request that may have been processed can be sent again."""
        return method in self.methods or IDEMPOTENCY_HEADER in headers

    def max_attempts(self) -> int:
        """Tries allowed, the first included ([`meshlib.testing.set_testing`][meshlib.testing.set_testing] may change it)."""
        testing = _testing
        return self.attempts if testing is None else testing.attempts_for(self.attempts)

    def exhausted(self, attempt_number: int) -> bool:
        """True when `attempt_number` tries (1-based) use up the attempts."""
        testing = _testing
        if testing is not None:
            return attempt_number >= testing.attempts_for(self.attempts)
        return bool(self._stop(_state(attempt_number)))

    def honour_retry_after(self, asked: float) -> float:
        """The wait a Retry-After of `asked` seconds (within `retry_after_max`) turns into."""
        return 0.0 if _testing is not None else asked

    def backoff(self, attempt_number: int, clock: Clock) -> float:
        """Full-jitter backoff before try `attempt_number + 1`: uniform(0, min(max, base * 2**(n-1)))."""
        if _testing is not None:
            return 0.0
        return clock.random() * self._wait(_state(attempt_number))


def _state(attempt_number: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt_number
    return state
