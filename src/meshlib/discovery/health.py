"""Active health checking: a sans-IO state machine per endpoint, and a thin thread that probes.

Each endpoint's `ProbeState` counts passes and failures in a row and
flips after `unhealthy_threshold` failures or `healthy_threshold` passes
(a new endpoint's first probe decides at once, so a dead instance is not
called for `unhealthy_threshold x interval` after it appears). The next probe
is due `interval` plus up to `jitter` after the last one started.
[`HealthMonitor`][meshlib.discovery.health.HealthMonitor] keeps the states of one service's endpoints and tells
listeners about transitions; it never does I/O, so tests drive it with a
FakeClock:

```python
monitor = HealthMonitor(policy_health_check, clock)
monitor.track(["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
for url in monitor.due():
    monitor.record(url, ok=probe(url))       # the driver's job
monitor.is_healthy("http://10.0.0.1:8080")
```

[`HealthProber`][meshlib.discovery.health.HealthProber] is that driver: a daemon thread that sends `GET path`
to every due endpoint (a few at a time) with the probe timeout, and sleeps
until the next one is due.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.discovery import telemetry
from meshlib.policy.model import HealthCheck

__all__ = ["Health", "HealthMonitor", "HealthProber", "ProbeState", "Transition"]

logger = logging.getLogger("meshlib.discovery")

_MAX_PARALLEL_PROBES = 8


class Health(enum.Enum):
    """What active checks say of an endpoint; `UNKNOWN` (not probed yet) is routable."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Transition:
    """An endpoint changed health: which one, from what, to what, and when (monotonic)."""

    url: str
    old: Health
    new: Health
    at: float


class ProbeState:
    """One endpoint's probe schedule and pass/fail streaks."""

    __slots__ = ("failures", "health", "in_flight", "next_at", "passes", "probes")

    def __init__(self, first_at: float) -> None:
        self.health = Health.UNKNOWN
        self.next_at = first_at
        self.in_flight = False
        self.passes = 0
        self.failures = 0
        self.probes = 0

    @property
    def routable(self) -> bool:
        """Whether active checks allow traffic to this endpoint."""
        return self.health is not Health.UNHEALTHY


class HealthMonitor:
    """Health states of one service's endpoints under one `HealthCheck` config."""

    def __init__(self, config: HealthCheck, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.states: dict[str, ProbeState] = {}
        self._listeners: list[Callable[[Transition], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[Transition], None]) -> None:
        """Call `listener(transition)` after every health change."""
        self._listeners.append(listener)

    def _jitter(self) -> float:
        return self.clock.random() * self.config.jitter if self.config.jitter else 0.0

    def track(self, urls: Iterable[str]) -> None:
        """Check exactly these endpoints: keep the state of known ones, start new ones now."""
        now = self.clock.monotonic()
        with self._lock:
            self.states = {
                url: self.states.get(url) or ProbeState(now + self._jitter()) for url in urls
            }

    def is_healthy(self, url: str) -> bool:
        """Whether `url` may take traffic as far as active checks know (untracked: yes)."""
        state = self.states.get(url)
        return state is None or state.health is not Health.UNHEALTHY

    def health(self, url: str) -> Health:
        """The health of `url` (UNKNOWN when untracked or not probed yet)."""
        state = self.states.get(url)
        return Health.UNKNOWN if state is None else state.health

    def due(self) -> list[str]:
        """Endpoints whose probe is due now; each is marked in flight until `record`."""
        now = self.clock.monotonic()
        found: list[str] = []
        with self._lock:
            for url, state in self.states.items():
                if not state.in_flight and state.next_at <= now:
                    state.in_flight = True
                    state.next_at = now + self.config.interval + self._jitter()
                    found.append(url)
        return found

    def next_due(self) -> float | None:
        """The monotonic time the next probe is due, or None when nothing is tracked."""
        times = [s.next_at for s in self.states.values() if not s.in_flight]
        return min(times) if times else None

    def record(self, url: str, ok: bool) -> Transition | None:
        """Count one probe's outcome; returns the transition it caused, if any."""
        config = self.config
        with self._lock:
            state = self.states.get(url)
            if state is None:  # stopped tracking while the probe ran
                return None
            state.in_flight = False
            state.probes += 1
            old = state.health
            if ok:
                state.passes += 1
                state.failures = 0
                if old is Health.UNKNOWN or (
                    old is Health.UNHEALTHY and state.passes >= config.healthy_threshold
                ):
                    state.health = Health.HEALTHY
            else:
                state.failures += 1
                state.passes = 0
                if old is Health.UNKNOWN or (
                    old is Health.HEALTHY and state.failures >= config.unhealthy_threshold
                ):
                    state.health = Health.UNHEALTHY
            new = state.health
        if new is old:
            return None
        transition = Transition(url, old, new, self.clock.monotonic())
        log = logger.warning if new is Health.UNHEALTHY else logger.info
        log("endpoint %s is now %s (active health check)", url, new.value)
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                logger.exception("health listener %r failed", listener)
        return transition

    def snapshot(self) -> dict[str, str]:
        """`{url: "healthy" | "unhealthy" | "unknown"}` for reports and the dashboard."""
        return {url: state.health.value for url, state in self.states.items()}


class HealthProber:
    """Runs a [`HealthMonitor`][meshlib.discovery.health.HealthMonitor]'s probes over HTTP in a daemon thread.

    `client` is the `httpx.Client` probes go through (give one with the
    mesh's TLS context for https endpoints, and `owns_client=True` to have it
    closed with the prober); the default is a plain client the prober owns:

    ```python
    prober = HealthProber(monitor, service="payments")
    prober.start()
    ...
    prober.close()
    ```
    """

    def __init__(
        self,
        monitor: HealthMonitor,
        *,
        service: str = "",
        client: httpx.Client | None = None,
        owns_client: bool | None = None,
        idle_wait: float = 1.0,
    ) -> None:
        self.monitor = monitor
        self.service = service
        self._own_client = client is None if owns_client is None else owns_client
        self._client = client or httpx.Client(trust_env=False)
        self._idle_wait = idle_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=_MAX_PARALLEL_PROBES, thread_name_prefix=f"meshlib-probe-{service}"
        )

    def probe(self, url: str) -> bool:
        """One probe: `GET url+path` answered 2xx within the timeout."""
        config = self.monitor.config
        try:
            response = self._client.get(
                url + config.path,
                timeout=config.timeout,
                headers={"user-agent": "meshlib-health-check"},
            )
        except httpx.HTTPError as exc:
            logger.debug("health probe of %s failed: %r", url, exc)
            return False
        return 200 <= response.status_code < 300

    def _probe_and_record(self, url: str) -> None:
        ok = False
        try:
            ok = self.probe(url)
        except Exception:  # a probe bug must not leave the endpoint in flight forever
            logger.exception("health probe of %s raised", url)
        transition = self.monitor.record(url, ok)
        if transition is not None:
            telemetry.health_transition(self.service, transition.url, transition.new.value)

    def run_once(self) -> int:
        """Probe everything due now and wait for the answers; returns how many were probed."""
        due = self.monitor.due()
        list(self._pool.map(self._probe_and_record, due))
        return len(due)

    def _loop(self) -> None:
        clock = self.monitor.clock
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # never let the prober die
                logger.exception("health prober of %s failed", self.service)
            next_at = self.monitor.next_due()
            wait = self._idle_wait if next_at is None else next_at - clock.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, self._idle_wait))
                self._wake.clear()

    def start(self) -> None:
        """Start probing in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"meshlib-health:{self.service}", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Look for due probes now (new endpoints were tracked)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, the probe pool and the client we own; idempotent."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        if self._own_client:
            self._client.close()
