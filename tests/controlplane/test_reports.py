"""ReportStore: rates from consecutive reports, bounded memory, expiry, the mesh view."""

from __future__ import annotations

from typing import Any

from meshlib.clock import FakeClock
from meshlib.controlplane.reports import InstanceReport, ReportStore


def report(
    service: str, instance: str, requests: int = 0, errors: int = 0, **extra: Any
) -> InstanceReport:
    """An InstanceReport with one destination, payments."""
    dest = {
        "requests": requests,
        "errors": errors,
        "latency_ms": {"p50": 2.0, "p99": 9.0},
        "endpoints": {"http://127.0.0.1:8001": {"breaker": "open", "ejected": True}},
    }
    return InstanceReport.model_validate(
        {
            "service": service,
            "instance": instance,
            "policy_revision": "3",
            "destinations": {"payments": dest},
            **extra,
        }
    )


def test_rates_come_from_consecutive_reports() -> None:
    """Two reports 10 s apart give requests and errors per second on the edge."""
    clock = FakeClock()
    store = ReportStore(clock=clock)
    store.ingest(report("orders", "a", requests=100, errors=0))
    clock.advance(10)
    store.ingest(report("orders", "a", requests=300, errors=20))
    (edge,) = store.mesh_view()["edges"]
    assert (edge["source"], edge["destination"]) == ("orders", "payments")
    assert (edge["rps"], edge["errors_per_s"], edge["error_ratio"]) == (20.0, 2.0, 0.1)
    assert edge["latency_ms"] == {"p50": 2.0, "p99": 9.0}
    assert edge["endpoints"] == [
        {
            "url": "http://127.0.0.1:8001",
            "breaker": {"open": 1},
            "ejected": 1,
            "requests": 0,
            "errors": 0,
        }
    ]


def test_edges_only_where_traffic_went_with_split_deadlines_and_one_window() -> None:
    """Destinations never called make no edge (nor node); the split percentiles (worst instance),
    deadlines exceeded and the rates' window come through; no traffic in the window: no error %."""
    clock = FakeClock()
    store = ReportStore(clock=clock)
    split = {
        "service": {"p50": 4.0, "p99": 9.0},
        "network": {"p50": 0.5, "p99": 2.0},
        "unknown": {"p50": None, "p99": None},
        "meshlib": {"p50": 0.2, "p99": 0.4},
        "waits": {"p50": 0.0, "p99": 12.0},
    }
    for instance, service_p99 in (("a", 9.0), ("b", 11.0)):
        body = {
            "service": "orders",
            "instance": instance,
            "destinations": {
                "payments": {
                    "requests": 10,
                    "deadlines_exceeded": 1,
                    "latency_split_ms": {**split, "service": {"p50": 4.0, "p99": service_p99}},
                },
                "orders": {"requests": 0},  # itself, never called
                "inventory": {"requests": 0},
            },
        }
        store.ingest(InstanceReport.model_validate(body))
        clock.advance(2)
        body["destinations"]["payments"]["requests"] = 30  # type: ignore[index]
        store.ingest(InstanceReport.model_validate(body))
    view = store.mesh_view()
    (edge,) = view["edges"]
    assert (edge["source"], edge["destination"]) == ("orders", "payments")
    assert {s["name"] for s in view["services"]} == {"orders", "payments"}
    assert edge["deadlines_exceeded"] == 2
    assert edge["split_ms"]["service"] == {"p50": 4.0, "p99": 11.0}
    assert edge["split_ms"]["unknown"] == {"p50": None, "p99": None}
    assert edge["split_ms"]["waits"]["p99"] == 12.0
    assert edge["window_s"] == 2.0
    assert edge["rps"] == 20.0
    assert edge["error_ratio"] == 0.0
    clock.advance(2)
    quiet = {"service": "orders", "instance": "a", "destinations": {"payments": {"requests": 30}}}
    store.ingest(InstanceReport.model_validate(quiet))
    store.ingest(InstanceReport.model_validate({**quiet, "instance": "b"}))
    (edge,) = store.mesh_view()["edges"]
    assert edge["rps"] == 0.0
    assert edge["error_ratio"] is None


def test_counter_reset_counts_from_zero() -> None:
    """A restarted instance (smaller counters) does not produce negative rates."""
    clock = FakeClock()
    store = ReportStore(clock=clock)
    store.ingest(report("orders", "a", requests=500))
    clock.advance(5)
    store.ingest(report("orders", "a", requests=50))
    assert store.mesh_view()["edges"][0]["rps"] == 10.0


def test_silent_instances_expire() -> None:
    """An instance that stops reporting is dropped after ttl; a fresh one stays."""
    clock = FakeClock()
    store = ReportStore(ttl=30, clock=clock)
    store.ingest(report("orders", "old"))
    clock.advance(20)
    store.ingest(report("orders", "new"))
    clock.advance(15)
    assert [i["instance"] for i in store.instances()] == ["new"]
    assert store.expired == 1


def test_instance_cap_evicts_the_least_recent() -> None:
    """At max_instances, the instance heard from longest ago makes room."""
    clock = FakeClock()
    store = ReportStore(max_instances=2, clock=clock)
    for name in ("a", "b", "c"):
        store.ingest(report("orders", name))
        clock.advance(1)
    assert [i["instance"] for i in store.instances()] == ["b", "c"]
    assert store.evicted == 1


def test_destinations_and_endpoints_are_trimmed_to_the_busiest() -> None:
    """A report with too many destinations or endpoints keeps only the busiest."""
    store = ReportStore(max_destinations=2, max_endpoints=1, clock=FakeClock())
    dests = {
        f"d{i}": {"requests": i, "endpoints": {f"http://e{j}": {"requests": j} for j in range(3)}}
        for i in range(5)
    }
    store.ingest(
        InstanceReport.model_validate({"service": "s", "instance": "i", "destinations": dests})
    )
    edges = store.mesh_view()["edges"]
    assert [e["destination"] for e in edges] == ["d3", "d4"]
    assert [ep["url"] for ep in edges[0]["endpoints"]] == ["http://e2"]


def test_services_include_destinations_and_instances_with_versions() -> None:
    """The view lists reporting services with their instances' policy versions, and callees too."""
    store = ReportStore(clock=FakeClock())
    store.ingest(report("orders", "a", requests=1, zone="z1"))
    services = {s["name"]: s for s in store.mesh_view()["services"]}
    assert services["payments"]["instances"] == []
    (inst,) = services["orders"]["instances"]
    assert (inst["instance"], inst["policy_revision"], inst["zone"]) == ("a", "3", "z1")


def test_unknown_report_fields_are_ignored() -> None:
    """Reports from newer meshlib versions with extra fields are accepted."""
    parsed = InstanceReport.model_validate({"service": "s", "instance": "i", "future": 1})
    assert parsed.destinations == {}
