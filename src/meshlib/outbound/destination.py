"""A destination's live state: its endpoints, their breakers, ejections, load and counters.

One [`Destination`][meshlib.outbound.destination.Destination] per service called
(or per origin, for URLs that are not mesh services). It outlives policy
snapshots: a reload reconfigures it, keeping the state of the endpoints that
stay (breaker, ejection history, counters, retry budget), as Envoy keeps a
host's state across cluster updates; endpoints that go are handed back for
their pools to be closed:

```python
dest = Destination("payments", clock)
dropped = dest.configure(effective, [EndpointSpec("http://10.0.0.7:8000", pool)])
endpoint, permit = dest.pick(tried=())        # CircuitOpenError when none can take it
dest.record(endpoint, permit, success=True)   # (breaker transition or None, ejected?)
```
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import httpx

from meshlib.clock import Clock
from meshlib.errors import CircuitOpenError, NoEndpointsError
from meshlib.outbound.balancer import Balancer
from meshlib.outbound.breaker import DENIED, Breaker, Permit, Transition
from meshlib.outbound.budget import RetryBudget
from meshlib.outbound.outlier import OutlierDetector
from meshlib.policy.resolve import EffectivePolicy

__all__ = ["Destination", "EndpointSpec", "EndpointState"]

_LATENCY_SAMPLES = 2048


class EndpointSpec(NamedTuple):
    """An endpoint as the policy in force describes it: where, through which pool, what share."""

    url: str
    transport: Any
    weight: int = 1
    address: tuple[str, str, int | None] | None = None
    """`(scheme, host, port)` when already parsed (else parsed from `url`)."""


class EndpointState:
    """One endpoint as the client sees it: address, pool, breaker, load and counters."""

    __slots__ = (
        "_lock",
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
        """Attempts being sent to it now (the least-request balancer's load)."""
        self.requests = 0
        self.errors = 0
        self._lock = threading.Lock()

    def started(self) -> None:
        """An attempt to this endpoint begins (counted exactly: threads must not lose updates)."""
        with self._lock:
            self.in_flight += 1

    def finished(self) -> None:
        """An attempt to this endpoint is over."""
        with self._lock:
            self.in_flight -= 1

    def count(self, success: bool) -> None:
        """Count an attempt's outcome for the stats."""
        with self._lock:
            self.requests += 1
            if not success:
                self.errors += 1

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
        self.deadlines_exceeded = 0
        self.ejected_logged: set[str] = set()
        """Endpoints whose ejection was logged; their readmission is logged once, then dropped."""
        self.budget_dry = False
        """The retry budget refused a retry and has not allowed one since (logged once)."""
        self.problem: str | None = None
        """Why the endpoints could not be set up (a TLS file, say), when they could not."""
        self._lock = threading.Lock()

    def configure(
        self, effective: EffectivePolicy, endpoints: Sequence[EndpointSpec], *, rewrite: bool = True
    ) -> list[EndpointState]:
        """Adopt a service-level effective policy and endpoint list; return the endpoints dropped.

        An endpoint already known by its URL keeps its state (breaker,
        ejection history, counters), adopting the new pool, weight and breaker
        settings; only new URLs get fresh state. `rewrite=False` marks
        endpoints that requests are not re-addressed to (non-mesh origins).
        """
        with self._lock:
            old = {e.url: e for e in self.endpoints}
            config = effective.circuit_breaker
            kept: list[EndpointState] = []
            for spec in endpoints:
                state = old.pop(spec.url, None)
                if state is None:
                    if spec.address is None:
                        url = httpx.URL(spec.url)
                        scheme, host, port = url.scheme, url.host, url.port
                    else:
                        scheme, host, port = spec.address
                    state = EndpointState(
                        spec.url,
                        scheme,
                        host,
                        port,
                        spec.transport,
                        Breaker(config, self.clock, name=spec.url),
                    )
                    state.rewrite = rewrite
                else:
                    state.transport = spec.transport
                    if state.breaker.config != config:
                        state.breaker.reconfigure(config)
                state.weight = spec.weight
                kept.append(state)
            if self.balancer is None or self.balancer.kind != effective.load_balancer:
                self.balancer = Balancer(effective.load_balancer, self.clock)
            if self.outlier is None or self.outlier.config != effective.outlier_detection:
                detector = OutlierDetector(effective.outlier_detection, self.clock)
                if self.outlier is not None:
                    detector.states = self.outlier.states
                self.outlier = detector
            self.outlier.track([e.url for e in kept])
            if self.budget is None:
                self.budget = RetryBudget(effective.retry.budget, self.clock)
            elif self.budget.config != effective.retry.budget:
                self.budget = self.budget.reconfigured(effective.retry.budget)
            self.effective = effective
            self.endpoints = tuple(kept)
            return list(old.values())

    def pick(self, tried: Collection[EndpointState] = ()) -> tuple[EndpointState, Permit]:
        """An endpoint for the next attempt and its breaker permit.

        Endpoints that are neither ejected nor breaker-open are preferred;
        if ejection left none, ejected ones with closed breakers are used
        (better than failing everything). Raises [`CircuitOpenError`][meshlib.outbound.destination.CircuitOpenError]
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
        raise self._circuit_open(endpoints)

    def _circuit_open(self, endpoints: Sequence[EndpointState]) -> CircuitOpenError:
        """The error for a call no breaker lets through, naming the first to let one through, and when."""
        soonest = min(endpoints, key=lambda e: e.breaker.retry_in())
        wait = soonest.breaker.retry_in()
        at = _dt.datetime.fromtimestamp(self.clock.wall() + wait, _dt.timezone.utc)
        when = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        every = "its endpoint" if len(endpoints) == 1 else f"all {len(endpoints)} endpoints"
        if soonest.breaker.state == "half-open":
            next_call = f"a probe to {soonest.url} is in flight; its outcome decides (at {when})"
        else:
            next_call = f"{soonest.url} lets a probe through in {wait:.3f} s (at {when})"
        return CircuitOpenError(
            f"the circuit breaker of {every} of {self.name!r} is open; failing fast. {next_call}",
            destination=self.name,
            endpoint=soonest.url,
            retry_after=wait,
            retry_at=at,
        )

    def record(
        self, endpoint: EndpointState, permit: Permit, success: bool
    ) -> tuple[Transition | None, bool]:
        """Feed an attempt's outcome to the breaker and outlier detector.

        Returns the breaker's state change (or None) and whether the outcome
        ejected the endpoint.
        """
        endpoint.count(success)
        transition = endpoint.breaker.record(permit, success)
        if success:
            if self.outlier is not None and self.outlier.states:
                self.outlier.record(endpoint.url, True)
            return transition, False
        return transition, self.outlier is not None and self.outlier.record(endpoint.url, False)

    def stats(self) -> dict[str, Any]:
        """This destination's counters and endpoint states (see `meshlib.outbound.stats`)."""
        outlier = self.outlier
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "budget_refusals": self.budget_refusals,
            "latencies": list(self.latencies),
            "deadlines_exceeded": self.deadlines_exceeded,
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
