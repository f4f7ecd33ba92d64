"""The policy in force and rejected reloads, as observable metrics read from a PolicyStore.

Two instruments (names in `meshlib.telemetry.names`), read at collection time,
so a request never pays for them:

- ``meshlib.policy.revision``: an info gauge, always 1, whose attributes say
  which revision is in force and where it came from. Alert when instances
  disagree, or when a rollout has not reached one of them.
- ``meshlib.policy.reload_failures``: documents rejected since start (the last
  good policy stayed in force). Alert on any increase.

::

    from meshlib.telemetry.policy_metrics import observe_policy

    observe_policy(store)                       # global meter provider, now or later
    observe_policy(store, meter_provider=provider, attributes={"service.name": "orders"})
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from meshlib.policy.store import PolicyStore
from meshlib.telemetry import names

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["PolicyMetrics", "observe_policy"]

_observed: weakref.WeakKeyDictionary[PolicyStore, PolicyMetrics] = weakref.WeakKeyDictionary()
_observed_lock = threading.Lock()


class PolicyMetrics:
    """The two policy instruments bound to one store; `close` silences them.

    The store is held weakly: a store that is dropped stops being reported.
    OpenTelemetry has no way to remove an instrument, so a closed
    `PolicyMetrics` simply reports nothing.

    Example::

        watched = PolicyMetrics(store, meter_provider=provider)
        ...
        watched.close()
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
    """Report ``store``'s revision and reload failures; once per store for the global provider.

    With ``meter_provider=None`` the global provider is used, through the
    API's proxy, so one configured later still receives the metrics; asking
    again for the same store returns the first `PolicyMetrics` instead of
    registering duplicate instruments.

    Example::

        observe_policy(shared_store())
    """
    if meter_provider is not None:
        return PolicyMetrics(store, meter_provider=meter_provider, attributes=attributes)
    with _observed_lock:
        existing = _observed.get(store)
        if existing is None or existing._closed:
            existing = _observed[store] = PolicyMetrics(store, attributes=attributes)
        return existing
