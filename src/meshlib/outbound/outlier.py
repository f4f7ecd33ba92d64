"""Outlier ejection: passive health checking from the outcomes of real calls.

After Envoy's `consecutive_5xx` detector: an endpoint that fails
`consecutive_failures` times in a row is ejected (taken out of load
balancing) for `base_ejection_time x times ejected`, capped at
`max_ejection_time`; never more than `max_ejection_percent` of a
destination's endpoints are out at once. When its time is up it returns,
and each base ejection time it then stays healthy forgives one ejection:

```python
detector = OutlierDetector(policy.outlier_detection, clock)
detector.record(endpoint, success=False)
detector.is_ejected(endpoint)
```

In `mode: shadow` ejections are counted in `shadow_ejections` but the
endpoint keeps receiving traffic.
"""

from __future__ import annotations

import threading

from meshlib.clock import Clock
from meshlib.policy.model import OutlierDetection

__all__ = ["OutlierDetector", "OutlierState"]


class OutlierState:
    """One endpoint's failure streak and ejection history."""

    __slots__ = ("consecutive_failures", "ejected_until", "times_ejected")

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.times_ejected = 0


class OutlierDetector:
    """Ejection decisions for the endpoints of one destination."""

    __slots__ = (
        "_lock",
        "clock",
        "config",
        "ejections",
        "enforce",
        "shadow_ejections",
        "states",
    )

    def __init__(self, config: OutlierDetection, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.enforce = config.enabled and config.mode == "enforce"
        self.states: dict[str, OutlierState] = {}
        self._lock = threading.Lock()
        self.ejections = 0
        """Ejections made since creation."""
        self.shadow_ejections = 0
        """Ejections a shadow-mode detector would have made."""

    def track(self, endpoints: list[str]) -> None:
        """Follow exactly these endpoints (policy change): keep kept ones' state, drop the rest."""
        with self._lock:
            self.states = {url: self.states.get(url) or OutlierState() for url in endpoints}

    def is_ejected(self, endpoint: str) -> bool:
        """Whether the endpoint is out of rotation right now."""
        state = self.states.get(endpoint)
        return state is not None and state.ejected_until > self.clock.monotonic()

    def ejected_count(self) -> int:
        """How many endpoints are ejected right now."""
        now = self.clock.monotonic()
        return sum(1 for s in self.states.values() if s.ejected_until > now)

    def record(self, endpoint: str, success: bool) -> bool:
        """Count an outcome; True when this failure ejected the endpoint."""
        state = self.states.get(endpoint)
        if state is None or not self.config.enabled:
            return False
        if success:
            if state.consecutive_failures:
                state.consecutive_failures = 0
            if state.times_ejected:
                now = self.clock.monotonic()
                # Healthy for a base ejection time since returning: forgive one ejection.
                if now >= state.ejected_until + self.config.base_ejection_time:
                    with self._lock:
                        state.times_ejected = max(0, state.times_ejected - 1)
                        state.ejected_until = now
            return False
        with self._lock:
            state.consecutive_failures += 1
            if state.consecutive_failures < self.config.consecutive_failures:
                return False
            now = self.clock.monotonic()
            if state.ejected_until > now:
                return False
            state.consecutive_failures = 0
            if not self.enforce:
                self.shadow_ejections += 1
                return False
            allowed = len(self.states) * self.config.max_ejection_percent // 100
            if self.ejected_count() >= allowed:
                return False
            state.times_ejected += 1
            config = self.config
            duration = min(
                config.base_ejection_time * state.times_ejected, config.max_ejection_time
            )
            state.ejected_until = now + duration
            self.ejections += 1
            return True
