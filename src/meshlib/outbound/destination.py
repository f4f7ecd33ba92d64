"""A destination's live state: its endpoints, their breakers, ejections, load and counters.

One :class:`Destination` per service called (or per origin, for URLs that
are not mesh services). It outlives policy snapshots: a reload reconfigures
it, keeping the state (breaker, streaks, pool) of endpoints that stay::

    dest = Destination("payments", clock)
    dest.configure(effective, endpoints)          # EndpointState per URL
    endpoint, permit = dest.pick(tried=())        # CircuitOpenError when none can take it
    dest.record(endpoint, permit, success=True)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

from meshlib.clock import Clock
from meshlib.errors import CircuitOpenError, NoEndpointsError
from meshlib.outbound.balancer import Balancer
from meshlib.outbound.breaker import DENIED, Breaker, Permit
from meshlib.outbound.budget import RetryBudget
from meshlib.outbound.outlier import OutlierDetector
from meshlib.policy.resolve import EffectivePolicy
from meshlib.telemetry.latency import SplitTotals

__all__ = ["Destination", "EndpointState"]

_LATENCY_SAMPLES = 2048


class EndpointState:
    """One endpoint as the client sees it: address, pool, breaker, load and counters."""

    __slots__ = (
        "breaker",
        "errors",
        "host",
        "in_flight",
        "port",
        "requests",
        "rewrite",
        "scheme",
        "transport",
        "url",
        "weight",
    )

    def __init__(
        self, url: str, scheme: str, host: str, port: int | None, transport: Any, breaker: Breaker
    ) -> None:
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.transport = transport
        self.breaker = breaker
        self.weight = 1
        self.rewrite = True
        """Whether requests are re-addressed to this endpoint (False for non-mesh origins)."""
        self.in_flight = 0
        self.requests = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"<EndpointState {self.url} {self.breaker.state} in_flight={self.in_flight}>"


class Destination:
    """Endpoint choice and resilience state for one destination."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.endpoints: tuple[EndpointState, ...] = ()
        self.effective: EffectivePolicy | None = None
        self.balancer: Balancer | None = None
        self.outlier: OutlierDetector | None = None
        self.budget: RetryBudget | None = None
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.budget_refusals = 0
        self.shadow_retries = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self.split_totals = SplitTotals()
        """Sums of the latency split of its calls (kept while a meter provider is in place)."""
        self.problem: str | None = None
        """Why the endpoints could not be set up (a TLS file, say), when they could not."""
        self._lock = threading.Lock()

    def configure(
        self, effective: EffectivePolicy, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]:
        """Adopt a service-level effective policy and endpoint list; return the endpoints dropped.

        ``endpoints`` are fresh states; where a URL was already known its old
        state (breaker, counters, pool) is kept instead.
        """
        with self._lock:
            old = {e.url: e for e in self.endpoints}
            same_breaker = (
                self.effective is not None
                and self.effective.circuit_breaker == effective.circuit_breaker
            )
            kept: list[EndpointState] = []
            for fresh in endpoints:
                previous = old.pop(fresh.url, None)
                if previous is not None and previous.transport is fresh.transport:
                    if not same_breaker:
                        previous.breaker = fresh.breaker
                    previous.weight = fresh.weight
                    kept.append(previous)
                else:
                    kept.append(fresh)
            if self.balancer is None or self.balancer.kind != effective.load_balancer:
                self.balancer = Balancer(effective.load_balancer, self.clock)
            if self.outlier is None or self.outlier.config != effective.outlier_detection:
                detector = OutlierDetector(effective.outlier_detection, self.clock)
                if self.outlier is not None:
                    detector.states = self.outlier.states
                self.outlier = detector
            self.outlier.track([e.url for e in kept])
            if self.budget is None or self.budget.config != effective.retry.budget:
                self.budget = RetryBudget(effective.retry.budget, self.clock)
            self.effective = effective
            self.endpoints = tuple(kept)
            return list(old.values())

    def pick(self, tried: Collection[EndpointState] = ()) -> tuple[EndpointState, Permit]:
        """An endpoint for the next attempt and its breaker permit.

        Endpoints that are neither ejected nor breaker-open are preferred;
        if ejection left none, ejected ones with closed breakers are used
        (better than failing everything). Raises :class:`CircuitOpenError`
        when every endpoint's breaker is open.
        """
        endpoints = self.endpoints
        if not endpoints:
            why = self.problem or "it has no endpoints in the policy"
            raise NoEndpointsError(f"cannot call service {self.name!r}: {why}")
        outlier = self.outlier
        assert outlier is not None
        assert self.balancer is not None
        if len(endpoints) == 1:
            only = endpoints[0]
            permit = only.breaker.acquire()
            if permit is not DENIED:
                return only, permit
            candidates: Sequence[EndpointState] = ()
        else:
            available = [e for e in endpoints if e.breaker.available()]
            candidates = [e for e in available if not outlier.is_ejected(e.url)] or available
        while candidates:
            endpoint = self.balancer.pick(candidates, tried)
            permit = endpoint.breaker.acquire()
            if permit is not DENIED:
                return endpoint, permit
            candidates = [c for c in candidates if c is not endpoint]
        raise CircuitOpenError(
            f"every endpoint of {self.name!r} has its circuit breaker open; failing fast"
        )

    def record(self, endpoint: EndpointState, permit: Permit, success: bool) -> bool:
        """Feed an attempt's outcome to the breaker and outlier detector; True if it ejected."""
        endpoint.requests += 1
        endpoint.breaker.record(permit, success)
        if success:
            if self.outlier is not None and self.outlier.states:
                self.outlier.record(endpoint.url, True)
            return False
        endpoint.errors += 1
        return self.outlier is not None and self.outlier.record(endpoint.url, False)

    def stats(self) -> dict[str, Any]:
        """This destination's counters and endpoint states (see :mod:`meshlib.outbound.stats`)."""
        outlier = self.outlier
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "budget_refusals": self.budget_refusals,
            "latencies": list(self.latencies),
            "latency_split_s": self.split_totals.as_dict(),
            "endpoints": {
                e.url: {
                    "breaker": e.breaker.state,
                    "ejected": outlier is not None and outlier.is_ejected(e.url),
                    "requests": e.requests,
                    "errors": e.errors,
                }
                for e in self.endpoints
            },
        }
