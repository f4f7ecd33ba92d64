"""Whether a real OpenTelemetry provider is in place, asked cheaply on every call.

`trace.get_tracer_provider()` and `metrics.get_meter_provider()` read
the environment on every call until a global provider is set (microseconds),
so a mesh call asks a `ProviderGate` instead: a provider given
explicitly is taken as real; the global one is real once it is not the API's
proxy or no-op default, and a "no" is asked again at most once a second:

```python
metrics_on = ProviderGate(None, metrics.get_meter_provider)
if metrics_on(clock.monotonic()):
    ...
```
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import metrics, trace

# The API's default meter provider is a private class; reach it through the module defining it.
from opentelemetry.metrics import _internal as metrics_internal

__all__ = ["ProviderGate", "is_real_provider"]

_API_DEFAULTS = (
    trace.ProxyTracerProvider,
    trace.NoOpTracerProvider,
    metrics.NoOpMeterProvider,
    metrics_internal._ProxyMeterProvider,
)


def is_real_provider(provider: object) -> bool:
    """Whether `provider` is a real one (an SDK's) rather than the API's proxy or no-op default."""
    return not isinstance(provider, _API_DEFAULTS)


class ProviderGate:
    """Remembers whether a real provider is in place: a "yes" for good, a "no" for a second."""

    __slots__ = ("_checked", "_fixed", "_get_global", "_on")

    def __init__(self, given: object | None, get_global: Callable[[], object]) -> None:
        # A provider given explicitly is the answer for good: a real one is on, and the
        # API's no-op one is off (the caller asked for no telemetry), whatever the global is.
        self._fixed = given is not None
        self._on = given is not None and is_real_provider(given)
        self._checked = 0.0
        self._get_global = get_global

    def __call__(self, now: float) -> bool:
        """Whether a real provider is in place as of `now` (a monotonic clock reading)."""
        if self._on:
            return True
        if self._fixed or now < self._checked:
            return False
        self._checked = now + 1.0
        self._on = is_real_provider(self._get_global())
        return self._on
