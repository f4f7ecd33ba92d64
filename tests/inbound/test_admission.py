"""Token bucket, concurrency limiter and limiter registry, on a FakeClock."""

from __future__ import annotations

import threading

import pytest

from meshlib.clock import FakeClock
from meshlib.inbound.admission import (
    ConcurrencyLimiter,
    LimiterRegistry,
    TokenBucket,
    retry_after_header,
)


def test_bucket_starts_full_and_allows_a_burst() -> None:
    """A new bucket admits `burst` requests at once, then refuses."""
    bucket = TokenBucket(rate=10.0, burst=3, clock=FakeClock())
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() > 0.0


def test_bucket_refills_at_rate_and_says_how_long_to_wait() -> None:
    """An empty bucket reports the wait for the next token and refills with time."""
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_acquire() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_acquire() == 0.0


def test_bucket_never_saves_more_than_burst() -> None:
    """A long idle period refills only up to `burst`."""
    clock = FakeClock()
    bucket = TokenBucket(rate=100.0, burst=2, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == 2.0
    assert [bucket.try_acquire() == 0.0 for _ in range(3)] == [True, True, False]


def test_bucket_rejects_nonsense_settings() -> None:
    """rate must be positive and burst at least one."""
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0.0, burst=1, clock=FakeClock())
    with pytest.raises(ValueError, match="burst >= 1"):
        TokenBucket(rate=1.0, burst=0, clock=FakeClock())


def test_bucket_is_exact_under_threads() -> None:
    """Threads racing for tokens get exactly `burst` of them while time stands still."""
    bucket = TokenBucket(rate=1.0, burst=500, clock=FakeClock())
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        count = sum(1 for _ in range(200) if bucket.try_acquire() == 0.0)
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sum(admitted) == 500


@pytest.mark.parametrize(("seconds", "header"), [(0.001, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    """Retry-After carries whole seconds, at least 1."""
    assert retry_after_header(seconds) == header


def test_concurrency_limiter_counts_slots() -> None:
    """try_acquire takes free slots only; release frees one."""
    limiter = ConcurrencyLimiter(2)
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()
    assert limiter.in_flight == 2


def test_concurrency_force_acquire_counts_past_the_limit() -> None:
    """Shadow mode takes a slot regardless and reports whether it was within the limit."""
    limiter = ConcurrencyLimiter(1)
    assert limiter.force_acquire() is True
    assert limiter.force_acquire() is False
    assert limiter.in_flight == 2
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimiter(0)


def test_registry_keeps_state_for_unchanged_settings() -> None:
    """A reload with the same limit keeps the bucket (no refill); a changed one starts afresh."""
    registry = LimiterRegistry(FakeClock())
    used: dict[object, object] = {}
    first = registry.bucket(("here", 1), 1.0, 1, used)
    registry.swap(used)
    first.try_acquire()
    used = {}
    assert registry.bucket(("here", 1), 1.0, 1, used) is first
    assert registry.bucket(("here", 2), 2.0, 1, used) is not first
    registry.swap(used)
    used = {}
    slots = registry.concurrency(("there", 3), 3, used)
    registry.swap(used)
    assert registry.concurrency(("there", 3), 3, {}) is slots
    assert registry.bucket(("here", 1), 1.0, 1, {}) is not first
