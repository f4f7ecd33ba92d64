"""Breaker states and ejected endpoints of every live mesh client, as observable metrics.

State is read at collection time from `meshlib.outbound.stats.snapshot`, the
same process-wide view the control plane's reports use, so a request never
pays for these instruments and the numbers agree with the dashboard:

- `meshlib.client.breaker.state`: per destination and endpoint, 0 closed,
  1 half-open, 2 open. Alert on `max > 0` for a while.
- `meshlib.client.ejected_endpoints`: per destination, how many endpoints
  outlier detection has taken out right now.
- `meshlib.client.latency.time` and `meshlib.client.latency.calls`: per
  edge (caller -> destination), the latency split summed over every call,
  sampled or not (`meshlib.outbound.stats.split_by_edge`); the split
  histograms only see sampled calls.

```python
from meshlib.telemetry.state_metrics import observe_mesh_state

observe_mesh_state()                           # global provider, once per process
observe_mesh_state(meter_provider=provider)    # a provider of your own
```
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from meshlib.telemetry import names
from meshlib.telemetry.latency import PARTS as _PARTS

__all__ = ["MeshStateMetrics", "observe_mesh_state"]

Snapshot = Callable[[], dict[str, Any]]
Edges = Callable[[], dict[tuple[str, str], dict[str, float]]]

_global: MeshStateMetrics | None = None
_per_provider: weakref.WeakKeyDictionary[MeterProvider, MeshStateMetrics] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _stats_snapshot() -> dict[str, Any]:
    from meshlib.outbound import stats

    return stats.snapshot()


def _split_by_edge() -> dict[tuple[str, str], dict[str, float]]:
    from meshlib.outbound import stats

    return stats.split_by_edge()


class MeshStateMetrics:
    """The breaker-state and ejected-endpoint instruments over a snapshot function.

    `snapshot` defaults to `meshlib.outbound.stats.snapshot`; tests and
    custom transports may pass another with the same shape. `close` silences
    the instruments (OpenTelemetry cannot remove them).

    Example:
        ```python
        state = MeshStateMetrics(meter_provider=provider)
        ...
        state.close()
        ```
    """

    def __init__(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        snapshot: Snapshot | None = None,
        edges: Edges | None = None,
    ) -> None:
        from meshlib import __version__

        self._snapshot = snapshot or _stats_snapshot
        self._edges = edges or _split_by_edge
        self._closed = False
        meter = metrics.get_meter(names.SCOPE, __version__, meter_provider)
        names.create_instrument(meter, names.CLIENT_BREAKER_STATE, [self._observe_breakers])
        names.create_instrument(meter, names.CLIENT_EJECTED_ENDPOINTS, [self._observe_ejected])
        names.create_instrument(meter, names.CLIENT_LATENCY_TIME, [self._observe_split_time])
        names.create_instrument(meter, names.CLIENT_LATENCY_CALLS, [self._observe_split_calls])

    def close(self) -> None:
        """Stop reporting."""
        self._closed = True

    def _destinations(self) -> dict[str, Any]:
        if self._closed:
            return {}
        destinations: dict[str, Any] = self._snapshot().get("destinations", {})
        return destinations

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for destination, entry in self._destinations().items():
            for endpoint, state in entry.get("endpoints", {}).items():
                value = names.BREAKER_STATE_VALUES.get(state.get("breaker", "closed"), 0)
                attributes = {names.ATTR_DESTINATION: destination, names.ATTR_ENDPOINT: endpoint}
                observations.append(Observation(value, attributes))
        return observations

    def _observe_ejected(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                sum(1 for e in entry.get("endpoints", {}).values() if e.get("ejected")),
                {names.ATTR_DESTINATION: destination},
            )
            for destination, entry in self._destinations().items()
        ]

    def _edge_sums(self) -> dict[tuple[str, str], dict[str, float]]:
        return {} if self._closed else self._edges()

    @staticmethod
    def _edge_attributes(caller: str, destination: str) -> dict[str, str]:
        attributes = {names.ATTR_DESTINATION: destination}
        if caller:
            attributes[names.ATTR_CALLER] = caller
        return attributes

    def _observe_split_time(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                sums.get(part, 0.0),
                {**self._edge_attributes(caller, destination), names.ATTR_LATENCY_PART: part},
            )
            for (caller, destination), sums in self._edge_sums().items()
            for part in _PARTS
        ]

    def _observe_split_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(sums.get("calls", 0)), self._edge_attributes(caller, destination))
            for (caller, destination), sums in self._edge_sums().items()
        ]


def observe_mesh_state(*, meter_provider: MeterProvider | None = None) -> MeshStateMetrics:
    """Report breaker states, ejected endpoints and per-edge latency split sums of all mesh clients.

    Once per meter provider: repeated calls return the first registration
    (until it is closed), so every mesh transport may call this when it is
    built. `meter_provider=None` means the global provider, one configured
    later included.

    Example:
        ```python
        observe_mesh_state()
        ```
    """
    global _global
    with _lock:
        if meter_provider is None:
            if _global is None or _global._closed:
                _global = MeshStateMetrics()
            return _global
        existing = _per_provider.get(meter_provider)
        if existing is None or existing._closed:
            existing = _per_provider[meter_provider] = MeshStateMetrics(
                meter_provider=meter_provider
            )
        return existing
