"""Fast unit tests of the sans-IO decision objects, on a FakeClock (nothing sleeps)."""

from __future__ import annotations

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.outbound.balancer import Balancer
from meshlib.outbound.breaker import DENIED, PASS, PROBE, Breaker
from meshlib.outbound.budget import RetryBudget
from meshlib.outbound.fault import NO_FAULT, decide_fault, has_fault
from meshlib.outbound.outlier import OutlierDetector
from meshlib.outbound.retry import RetryRules, classify_exception, parse_retry_after
from meshlib.policy.model import (
    CircuitBreaker,
    Fault,
    OutlierDetection,
    Retry,
)
from meshlib.policy.model import (
    RetryBudget as BudgetConfig,
)
from meshlib.testing import is_testing, set_testing


class _E:
    def __init__(self, name: str, in_flight: int = 0, weight: int = 1) -> None:
        self.name = name
        self.in_flight = in_flight
        self.weight = weight

    def __repr__(self) -> str:
        return self.name


# --- budget ---------------------------------------------------------------------------------


def test_budget_allows_ratio_of_requests() -> None:
    """With no floor, retries are capped at ratio x requests in the window."""
    clock = FakeClock()
    budget = RetryBudget(BudgetConfig(ratio=0.2, min_per_second=0, window="10s"), clock)
    for _ in range(10):
        budget.record_request()
    assert [budget.try_retry() for _ in range(4)] == [True, True, False, False]
    assert budget.refused == 2
    assert budget.retries == 2


def test_budget_floor_and_window_slides() -> None:
    """The per-second floor lets a quiet client retry; old requests slide out of the window."""
    clock = FakeClock()
    budget = RetryBudget(BudgetConfig(ratio=0.5, min_per_second=0.1, window="10s"), clock)
    assert budget.try_retry()  # floor: 0.1/s x 10 s = 1 retry
    assert not budget.try_retry()
    for _ in range(4):
        budget.record_request()
    assert budget.allowance() == pytest.approx(3.0)
    clock.advance(11)
    assert budget.allowance() == pytest.approx(1.0)
    assert budget.try_retry()


# --- breaker --------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    """N consecutive failures open the breaker; then acquire() denies until the reset timeout."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=3, reset_timeout="30s"), clock)
    for _ in range(3):
        permit = breaker.acquire()
        assert permit is PASS
        breaker.record(permit, success=False)
    assert breaker.state == "open"
    assert breaker.acquire() is DENIED
    assert not breaker.available()
    clock.advance(29.9)
    assert breaker.acquire() is DENIED


def test_breaker_half_open_lets_exactly_one_probe() -> None:
    """After the reset timeout one probe passes; others are denied until it reports."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout="5s"), clock)
    breaker.record(breaker.acquire(), success=False)
    clock.advance(5)
    assert breaker.available()
    probe = breaker.acquire()
    assert probe is PROBE
    assert breaker.state == "half-open"
    assert breaker.acquire() is DENIED
    breaker.record(probe, success=True)
    assert breaker.state == "closed"
    assert breaker.acquire() is PASS


def test_breaker_failed_probe_reopens() -> None:
    """A failed probe opens the breaker again for another reset timeout."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout="5s"), clock)
    breaker.record(breaker.acquire(), success=False)
    clock.advance(5)
    probe = breaker.acquire()
    breaker.record(probe, success=False)
    assert breaker.state == "open"
    assert breaker.acquire() is DENIED
    assert breaker.opened == 2


def test_breaker_success_resets_streak_and_release_frees_probe() -> None:
    """A success resets the failure streak; a cancelled probe is given back."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=2, reset_timeout="1s"), clock)
    breaker.record(PASS, success=False)
    breaker.record(PASS, success=True)
    breaker.record(PASS, success=False)
    assert breaker.state == "closed"
    breaker.record(PASS, success=False)
    clock.advance(1)
    probe = breaker.acquire()
    breaker.release(probe)
    assert breaker.acquire() is PROBE


def test_breaker_shadow_counts_but_never_denies() -> None:
    """In shadow mode the breaker opens and counts rejections without denying."""
    clock = FakeClock()
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout="5s", mode="shadow"), clock)
    breaker.record(breaker.acquire(), success=False)
    assert breaker.state == "open"
    assert breaker.acquire() is PASS
    assert breaker.shadow_rejections == 1


# --- outlier --------------------------------------------------------------------------------


def test_outlier_ejects_for_growing_time_and_recovers() -> None:
    """Consecutive failures eject for base x times ejected; the endpoint returns after."""
    clock = FakeClock()
    detector = OutlierDetector(
        OutlierDetection(consecutive_failures=2, base_ejection_time="10s", max_ejection_percent=50),
        clock,
    )
    detector.track(["a", "b"])
    assert not detector.record("a", success=False)
    assert detector.record("a", success=False)
    assert detector.is_ejected("a")
    clock.advance(10)
    assert not detector.is_ejected("a")
    detector.record("a", success=False)
    assert detector.record("a", success=False)
    clock.advance(19)
    assert detector.is_ejected("a")  # second ejection lasts 20 s
    clock.advance(1)
    assert not detector.is_ejected("a")


def test_outlier_respects_max_ejection_percent() -> None:
    """Never more than max_ejection_percent of endpoints are ejected."""
    clock = FakeClock()
    detector = OutlierDetector(
        OutlierDetection(consecutive_failures=1, max_ejection_percent=50), clock
    )
    detector.track(["a", "b", "c", "d"])
    assert [detector.record(e, success=False) for e in "abcd"] == [True, True, False, False]
    assert detector.ejected_count() == 2


def test_outlier_shadow_counts_only() -> None:
    """Shadow-mode ejection is counted but the endpoint stays in rotation."""
    clock = FakeClock()
    detector = OutlierDetector(OutlierDetection(consecutive_failures=1, mode="shadow"), clock)
    detector.track(["a", "b"])
    assert not detector.record("a", success=False)
    assert not detector.is_ejected("a")
    assert detector.shadow_ejections == 1


# --- balancer -------------------------------------------------------------------------------


def test_round_robin_cycles_and_prefers_untried() -> None:
    """Round robin cycles through candidates; a retry avoids endpoints already tried."""
    clock = FakeClock()
    a, b, c = _E("a"), _E("b"), _E("c")
    balancer = Balancer("round_robin", clock)
    assert [balancer.pick([a, b, c]) for _ in range(4)] == [a, b, c, a]
    assert balancer.pick([a, b], tried=[a]) is b
    assert balancer.pick([a], tried=[a]) is a


def test_least_request_takes_less_loaded_of_two() -> None:
    """P2C picks two distinct candidates at random and takes the one with fewer in flight."""
    clock = FakeClock(random_values=[0.0, 0.0])
    busy, idle = _E("busy", 5), _E("idle", 0)
    balancer = Balancer("least_request", clock)
    assert balancer.pick([busy, idle]) is idle
    assert balancer.pick([idle, busy]) is idle


def test_weights_shape_both_balancers() -> None:
    """Round robin gives each endpoint weight/total of picks; P2C compares load per weight."""
    clock = FakeClock(random_values=[0.0, 0.0])
    heavy, light = _E("heavy", weight=3), _E("light")
    balancer = Balancer("round_robin", clock)
    picks = [balancer.pick([heavy, light]).name for _ in range(8)]
    assert picks.count("heavy") == 6
    assert picks.count("light") == 2
    busy_big, idle_small = _E("big", in_flight=4, weight=4), _E("small", in_flight=2)
    assert Balancer("least_request", clock).pick([idle_small, busy_big]) is busy_big


# --- retry rules ----------------------------------------------------------------------------


def test_full_jitter_backoff_is_bounded_exponential() -> None:
    """Backoff is random * min(max, base * 2**(n-1))."""
    rules = RetryRules(Retry(backoff={"base": "100ms", "max": "500ms"}))
    top = FakeClock(random_values=[0.999999])
    assert rules.backoff(1, top) == pytest.approx(0.1, rel=1e-3)
    assert rules.backoff(3, top) == pytest.approx(0.4, rel=1e-3)
    assert rules.backoff(9, top) == pytest.approx(0.5, rel=1e-3)
    assert rules.backoff(2, FakeClock(random_values=[0.0])) == 0.0


def test_retry_conditions_and_methods() -> None:
    """Statuses, 5xx/gateway-error groups, never-sent failures, and idempotency rules."""
    rules = RetryRules(Retry(retry_on=("gateway-error", 429), methods=("GET",)))
    assert rules.retryable_status(503)
    assert rules.retryable_status(429)
    assert not rules.retryable_status(500)
    assert RetryRules(Retry(retry_on=("5xx",))).retryable_status(500)
    assert rules.retryable_exception("connect-failure", reached_server=False)
    assert not rules.retryable_exception("reset", reached_server=True)
    assert not rules.retryable_exception(None, reached_server=False)
    assert rules.may_replay("GET", httpx.Headers())
    assert not rules.may_replay("POST", httpx.Headers())
    assert rules.may_replay("POST", httpx.Headers({"Idempotency-Key": "k"}))
    assert rules.exhausted(3)
    assert not rules.exhausted(2)


def test_classify_exceptions() -> None:
    """Connect failures never reached the server; resets and read timeouts may have."""
    assert classify_exception(httpx.ConnectError("x")) == ("connect-failure", False)
    assert classify_exception(httpx.PoolTimeout("x")) == ("connect-failure", False)
    assert classify_exception(httpx.ReadTimeout("x")) == ("timeout", True)
    assert classify_exception(httpx.RemoteProtocolError("x")) == ("reset", True)
    assert classify_exception(httpx.UnsupportedProtocol("x")) == (None, True)


def test_parse_retry_after() -> None:
    """Retry-After accepts delta-seconds and HTTP-dates; garbage is None."""
    clock = FakeClock(wall_start=1_700_000_000.0)
    assert parse_retry_after("3", clock) == 3.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", clock) == pytest.approx(5.0)
    assert parse_retry_after("soon", clock) is None


def test_set_testing_caps_attempts_and_removes_backoff() -> None:
    """set_testing fixes attempts (or caps them) and zeroes backoff, restoring on exit."""
    rules = RetryRules(Retry(attempts=5))
    clock = FakeClock(random_values=[0.9])
    with set_testing(attempts=2):
        assert is_testing()
        assert rules.exhausted(2)
        assert rules.backoff(1, clock) == 0.0
    with set_testing(attempts=9, cap=True):
        assert rules.max_attempts() == 5
    assert not is_testing()
    assert rules.backoff(1, clock) > 0.0
    with pytest.raises(ValueError, match="attempts"):
        set_testing(attempts=0)


# --- faults ---------------------------------------------------------------------------------


def test_fault_decisions_follow_percentages() -> None:
    """Abort and delay hit when the dice fall under their percentages."""
    fault = Fault(abort={"status": 503, "percent": 50}, delay={"duration": "2s", "percent": 10})
    assert has_fault(fault)
    assert not has_fault(Fault())
    hit = decide_fault(fault, FakeClock(random_values=[0.05, 0.4]))
    assert hit.delay == 2.0
    assert hit.abort == 503
    assert decide_fault(fault, FakeClock(random_values=[0.5, 0.6])) is NO_FAULT


def test_parse_server_timing() -> None:
    """Only the app entry's dur is read, in seconds; malformed values are ignored."""
    from meshlib.telemetry.latency import parse_server_timing

    assert parse_server_timing("db;dur=2, app;dur=12.5") == pytest.approx(0.0125)
    assert parse_server_timing('app;desc="x";dur="3"') == pytest.approx(0.003)
    assert parse_server_timing("db;dur=2") is None
    assert parse_server_timing("app;dur=soon") is None
    assert parse_server_timing(None) is None


def test_service_time_from_server_timing_or_envoy() -> None:
    """Server-Timing's app entry wins (repeated fields joined); else Envoy's upstream service time."""
    from meshlib.telemetry.latency import parse_service_time

    envoy = (b"x-envoy-upstream-service-time", b"42")
    assert parse_service_time([envoy]) == pytest.approx(0.042)
    assert parse_service_time(
        [(b"Server-Timing", b"db;dur=1"), (b"server-timing", b"app;dur=7")]
    ) == (pytest.approx(0.007))
    assert parse_service_time([(b"server-timing", b"app;dur=7"), envoy]) == pytest.approx(0.007)
    assert parse_service_time([(b"server-timing", b"db;dur=1"), envoy]) == pytest.approx(0.042)
    assert parse_service_time([(b"x-envoy-upstream-service-time", b"-1")]) is None
    assert parse_service_time([(b"x-envoy-upstream-service-time", b"9" * 20)]) is None
    assert parse_service_time([(b"content-type", b"text/plain")]) is None
