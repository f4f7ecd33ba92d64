"""Discovery is observable: endpoint set changes, health transitions, DNS outcomes and lease events as metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.discovery import telemetry
from meshlib.discovery.dns import DnsAnswer, DnsError, DnsWatcher
from meshlib.discovery.endpoints import EndpointSet
from meshlib.discovery.health import HealthMonitor, HealthProber
from meshlib.policy.model import DnsDiscovery, Endpoint, HealthCheck
from meshlib.telemetry import names
from tests.support.servers import free_port


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    """A private meter provider behind discovery's meter look-up."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(telemetry.metrics, "get_meter", provider.get_meter)
    yield reader
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [
                    {**dict(p.attributes or {}), "value": p.value} for p in metric.data.data_points
                ]
    return found


class _Flaky:
    def __init__(self) -> None:
        self.answers: list[DnsAnswer | Exception] = []

    def resolve(self, config: DnsDiscovery) -> DnsAnswer:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_discovery_events_are_counted(reader: InMemoryMetricReader) -> None:
    """Endpoint set changes, health transitions, DNS outcomes and lease events reach the meter."""
    endpoints = EndpointSet("payments")
    endpoints.set_source("static", [Endpoint(url="http://127.0.0.1:1")])
    dead = f"http://127.0.0.1:{free_port()}"
    monitor = HealthMonitor(HealthCheck(timeout="200ms"))
    monitor.track([dead])
    prober = HealthProber(monitor, service="payments")
    try:
        assert prober.run_once() == 1
    finally:
        prober.close()
    resolver = _Flaky()
    resolver.answers = [DnsAnswer((Endpoint(url="http://127.0.0.1:2"),), 5), DnsError("boom")]
    config = DnsDiscovery(name="payments.test", port=80)
    watcher = DnsWatcher("payments", config, lambda eps: None, resolver=resolver)
    watcher.resolve_once()
    watcher.resolve_once()
    telemetry.lease_event("payments", "registered")
    got = points(reader)
    assert got[names.DISCOVERY_ENDPOINT_SET_CHANGES.name] == [
        {names.ATTR_SERVICE: "payments", names.ATTR_ENDPOINT_COUNT: 1, "value": 1}
    ]
    assert got[names.DISCOVERY_HEALTH_TRANSITIONS.name] == [
        {
            names.ATTR_SERVICE: "payments",
            names.ATTR_ENDPOINT: dead,
            names.ATTR_HEALTH: "unhealthy",
            "value": 1,
        }
    ]
    outcomes = {
        p[names.ATTR_OUTCOME]: p["value"] for p in got[names.DISCOVERY_DNS_RESOLUTIONS.name]
    }
    assert outcomes == {"ok": 1, "failed": 1}
    assert (
        got[names.DISCOVERY_REGISTRATION_EVENTS.name][0][names.ATTR_REGISTRATION_EVENT]
        == "registered"
    )
