"""Policy revision in force and reload failures, observed from a real PolicyStore."""

from __future__ import annotations

import gc

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.errors import PolicyError
from meshlib.policy.store import PolicyStore
from meshlib.telemetry import names
from meshlib.telemetry.policy_metrics import observe_policy

from .conftest import metric_points

V1 = "version: 1\nservices:\n  payments:\n    endpoints: ['http://127.0.0.1:8001']\n"
V2 = "version: 1\nservices:\n  payments:\n    endpoints: ['http://127.0.0.1:8002']\n"
BAD = "version: 1\nservices:\n  payments:\n    endpoints: 7\n"


def _revision_points(reader: InMemoryMetricReader) -> list[dict[str, object]]:
    points = metric_points(reader).get(names.POLICY_REVISION.name, [])
    return [dict(p.attributes) for p in points if p.value == 1]


def _failures(reader: InMemoryMetricReader) -> list[int]:
    return [p.value for p in metric_points(reader).get(names.POLICY_RELOAD_FAILURES.name, [])]


def test_revision_in_force_follows_the_store(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """The info gauge reports the current revision and source, and moves when the store swaps."""
    store = PolicyStore()
    observe_policy(store, meter_provider=meter_provider, attributes={"team": "core"})
    assert _revision_points(metric_reader) == []  # nothing loaded yet: nothing to report

    store.update_from_text(V1, source="mesh.yaml", revision="r1")
    assert _revision_points(metric_reader) == [
        {"team": "core", names.ATTR_POLICY_REVISION: "r1", names.ATTR_POLICY_SOURCE: "mesh.yaml"}
    ]
    store.update_from_text(V2, source="cp", revision="r2")
    current = _revision_points(metric_reader)
    assert [p[names.ATTR_POLICY_REVISION] for p in current] == ["r2"]


def test_rejected_documents_count_as_reload_failures(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Each rejected document adds one reload failure while the last good revision stays reported."""
    store = PolicyStore()
    store.update_from_text(V1, source="mesh.yaml", revision="r1")
    observe_policy(store, meter_provider=meter_provider)
    assert _failures(metric_reader) == [0]
    for _ in range(2):
        with pytest.raises(PolicyError):
            store.update_from_text(BAD, source="mesh.yaml")
    assert _failures(metric_reader) == [2]
    assert [p[names.ATTR_POLICY_REVISION] for p in _revision_points(metric_reader)] == ["r1"]


def test_closed_or_dropped_stores_stop_reporting() -> None:
    """close() silences the instruments, and a garbage-collected store is not kept alive."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        kept = PolicyStore()
        kept.update_from_text(V1, source="a", revision="r1")
        watched = observe_policy(kept, meter_provider=provider)
        dropped = PolicyStore()
        dropped.update_from_text(V2, source="b", revision="r2")
        observe_policy(dropped, meter_provider=provider)
        del dropped
        gc.collect()
        assert [p[names.ATTR_POLICY_REVISION] for p in _revision_points(reader)] == ["r1"]
        watched.close()
        assert metric_points(reader) == {}
    finally:
        provider.shutdown()


def test_observation_is_once_per_store_and_provider(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Observing a store again through the same provider reuses the registration: no duplicate series."""
    store = PolicyStore()
    store.update_from_text(V1, source="mesh.yaml", revision="r1")
    first = observe_policy(store, meter_provider=meter_provider)
    assert observe_policy(store, meter_provider=meter_provider) is first
    assert len(_revision_points(metric_reader)) == 1
    on_global = observe_policy(store)
    assert on_global is not first
    assert observe_policy(store) is on_global
    on_global.close()
    again = observe_policy(store)
    assert again is not on_global
    again.close()
