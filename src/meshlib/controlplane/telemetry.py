"""The control plane's metrics and its rate-limited warnings, for both the client and the server.

Names come from [`meshlib.telemetry.names`][meshlib.telemetry.names]. The
meter is looked up at use time (failures are rare events), so a provider
configured after import is honoured and nothing happens at import:

```python
fetch_failed("timeout")                   # client: a policy fetch failed
publish_refused("conflict")               # server: an If-Match publish lost
warn = RateLimitedLog(logger, every=30.0)
warn.warning("control plane unreachable: %s", error)   # once per 30 s, with a count
```
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry import metrics

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.telemetry import names

__all__ = ["RateLimitedLog", "fetch_failed", "publish_refused"]


def _add(spec: names.Instrument, attributes: dict[str, str]) -> None:
    from meshlib import __version__

    meter = metrics.get_meter(names.SCOPE, __version__)
    names.create_instrument(meter, spec).add(1, attributes)


def fetch_failed(outcome: str) -> None:
    """A policy fetch failed: `unreachable`, `timeout`, `too_large`, `bad_answer`, `invalid`, `older`."""
    _add(names.CONTROLPLANE_FETCH_FAILURES, {names.ATTR_OUTCOME: outcome})


def publish_refused(outcome: str) -> None:
    """A publish or rollback was refused: `invalid`, `conflict`, `denied`, `too_large`, `unavailable`."""
    _add(names.CONTROLPLANE_PUBLISHES_REFUSED, {names.ATTR_OUTCOME: outcome})


class RateLimitedLog:
    """Logs at most once per `every` seconds, saying how many messages it held back.

    A long outage keeps being visible at WARNING (one line per interval with
    the count since the last line) without flooding the log.
    """

    def __init__(
        self, logger: logging.Logger, *, every: float = 30.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log `message % args` at `level` unless one was logged less than `every` seconds ago."""
        now = self._clock.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return False
            held, self._held = self._held, 0
            self._next = now + self.every
        if held:
            message += f" ({held} more like this in the last {self.every:g}s)"
        self.logger.log(level, message, *args)
        return True

    def warning(self, message: str, *args: Any) -> bool:
        """`log(WARNING, ...)`."""
        return self.log(logging.WARNING, message, *args)

    def reset(self) -> None:
        """Log the next message at once (the condition ended)."""
        with self._lock:
            self._next = 0.0
            self._held = 0
