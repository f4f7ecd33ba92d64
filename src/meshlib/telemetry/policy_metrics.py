"""The policy in force and rejected reloads, as observable metrics read from a PolicyStore.

Two instruments (names in `meshlib.telemetry.names`), read at collection time,
so a request never pays for them:

- `meshlib.policy.revision`: an info gauge, always 1, whose attributes say
  which revision is in force and where it came from. Alert when instances
  disagree, or when a rollout has not reached one of them.
- `meshlib.policy.reload_failures`: documents rejected since start (the last
  good policy stayed in force). Alert on any increase.

```python
from meshlib.telemetry.policy_metrics import observe_policy

observe_policy(store)                       # global meter provider, now or later
observe_policy(store, meter_provider=provider, attributes={"service.name": "orders"})
```
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from meshlib.policy.store import PolicyStore
from meshlib.telemetry import names

__all__ = ["PolicyMetrics", "observe_policy"]

_Table = weakref.WeakKeyDictionary[PolicyStore, "PolicyMetrics"]
_observed_global: _Table = weakref.WeakKeyDictionary()
_observed: weakref.WeakKeyDictionary[MeterProvider, _Table] = weakref.WeakKeyDictionary()
_observed_lock = threading.Lock()


class PolicyMetrics:
    """The two policy instruments bound to one store; `close` silences them.

    The store is held weakly: a store that is dropped stops being reported.
    OpenTelemetry has no way to remove an instrument, so a closed
    `PolicyMetrics` simply reports nothing.

    Example:
        ```python
        watched = PolicyMetrics(store, meter_provider=provider)
        ...
        watched.close()
        ```
    """

    def __init__(
        self,
        store: PolicyStore,
        *,
        meter_provider: MeterProvider | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        from meshlib import __version__

        self._store = weakref.ref(store)
        self._attributes = dict(attributes or {})
        self._closed = False
        meter = metrics.get_meter(names.SCOPE, __version__, meter_provider)
        names.create_instrument(meter, names.POLICY_REVISION, [self._observe_revision])
        names.create_instrument(meter, names.POLICY_RELOAD_FAILURES, [self._observe_failures])

    def close(self) -> None:
        """Stop reporting this store."""
        self._closed = True

    def _live_store(self) -> PolicyStore | None:
        return None if self._closed else self._store()

    def _observe_revision(self, options: CallbackOptions) -> Iterable[Observation]:
        store = self._live_store()
        snapshot = store.peek() if store is not None else None
        if snapshot is None:
            return ()
        attributes = {
            **self._attributes,
            names.ATTR_POLICY_REVISION: snapshot.revision,
            names.ATTR_POLICY_SOURCE: snapshot.source,
        }
        return (Observation(1, attributes),)

    def _observe_failures(self, options: CallbackOptions) -> Iterable[Observation]:
        store = self._live_store()
        if store is None:
            return ()
        return (Observation(store.reload_failures, self._attributes),)


def observe_policy(
    store: PolicyStore,
    *,
    meter_provider: MeterProvider | None = None,
    attributes: Mapping[str, str] | None = None,
) -> PolicyMetrics:
    """Report `store`'s revision and reload failures, once per (store, meter provider).

    Asking again for the same store and provider returns the first
    `PolicyMetrics` (until it is closed) instead of registering duplicate
    instruments, so every client and middleware sharing a store may call it.
    `meter_provider=None` means the global provider, through the API's
    proxy, so one configured later still receives the metrics.

    Example:
        ```python
        observe_policy(shared_store())
        ```
    """
    with _observed_lock:
        if meter_provider is None:
            table = _observed_global
        else:
            table = _observed.setdefault(meter_provider, weakref.WeakKeyDictionary())
        existing = table.get(store)
        if existing is None or existing._closed:
            existing = table[store] = PolicyMetrics(
                store, meter_provider=meter_provider, attributes=attributes
            )
        return existing
