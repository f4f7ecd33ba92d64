"""The framework-neutral core, driven directly with RequestInfo and a FakeClock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from meshlib.clock import FakeClock
from meshlib.deadline import current_deadline
from meshlib.errors import SettingsError
from meshlib.inbound.config import build_core
from meshlib.inbound.core import InboundCore, RequestInfo
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings

from .conftest import Telemetry


def policy(inbound: dict[str, Any] | None = None, **extra: Any) -> Policy:
    services = {"payments": {"inbound": inbound or {}}}
    return Policy.model_validate({"version": 1, "services": services, **extra})


def make_core(telemetry: Telemetry, store: PolicyStore, clock: FakeClock) -> InboundCore:
    return build_core(
        store,
        service_name="payments",
        settings=MeshSettings(),
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        clock=clock,
    )


def run(core: InboundCore, info: RequestInfo, status: int = 200) -> int:
    """Drive one request through the core as a driver would; returns the status sent."""
    exchange = core.begin(info)
    if exchange.reply is not None:
        exchange.finish(exchange.reply.status, None, None)
        return exchange.reply.status
    exchange.enter()
    exchange.exit()
    exchange.finish(status, None, None)
    return status


def health_status(core: InboundCore, path: str) -> int | None:
    """The status of the middleware's own answer for `path`, or None if it does not answer."""
    reply = core.health(path)
    return None if reply is None else reply.status


def test_service_name_is_required(telemetry: Telemetry) -> None:
    """Without service_name or MESH_SERVICE_NAME the error says how to fix it."""
    with pytest.raises(SettingsError, match="MESH_SERVICE_NAME"):
        build_core(policy(), settings=MeshSettings())


def test_service_name_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_SERVICE_NAME names the service when no argument does."""
    monkeypatch.setenv("MESH_SERVICE_NAME", "payments")
    assert build_core(policy()).service == "payments"


def test_policy_argument_kinds(tmp_path: Path) -> None:
    """policy= takes a Policy, a PolicyStore or a file path (watched; closed by close())."""
    assert build_core(policy(), service_name="p").store.loaded
    store = PolicyStore(policy())
    assert build_core(store, service_name="p").store is store
    path = tmp_path / "mesh.yaml"
    path.write_text("version: 1\nservices: {payments: {inbound: {authz: {default: deny}}}}\n")
    core = build_core(str(path), service_name="payments")
    try:
        plan = core.plan()
        assert plan is not None
        assert plan.authz.active
    finally:
        core.close()
        core.close()
    with pytest.raises(TypeError, match="policy must be"):
        build_core(42, service_name="p")  # type: ignore[arg-type]


def test_shared_store_is_used_without_a_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """policy=None reads MESH_POLICY_FILE through the process-wide store."""
    path = tmp_path / "mesh.yaml"
    path.write_text("version: 1\n")
    monkeypatch.setenv("MESH_POLICY_FILE", str(path))
    assert build_core(service_name="payments").store.loaded


def test_no_policy_yet_answers_503(telemetry: Telemetry) -> None:
    """Before the first policy arrives requests get 503 and readiness is false."""
    core = make_core(telemetry, PolicyStore(), FakeClock())
    assert run(core, RequestInfo("GET", "/")) == 503
    assert not core.ready
    assert health_status(core, "/readyz") == 503


def test_health_and_drain(telemetry: Telemetry) -> None:
    """healthz is always 200; readyz turns 503 on drain; other paths are not health."""
    core = make_core(telemetry, PolicyStore(policy()), FakeClock())
    assert health_status(core, "/v1") is None
    assert health_status(core, "/healthz") == 200
    assert health_status(core, "/readyz") == 200
    core.drain()
    assert health_status(core, "/readyz") == 503
    assert health_status(core, "/healthz") == 200


def test_drain_all_drains_every_live_middleware(telemetry: Telemetry) -> None:
    """drain_all() reaches middlewares a framework built, e.g. through add_middleware."""
    from meshlib.inbound import drain_all

    cores = [make_core(telemetry, PolicyStore(policy()), FakeClock()) for _ in range(2)]
    assert drain_all() >= 2
    assert [core.ready for core in cores] == [False, False]


def test_health_paths_follow_settings(telemetry: Telemetry) -> None:
    """MESH_HEALTH_PATH and MESH_READY_PATH move the endpoints."""
    core = InboundCore(
        PolicyStore(policy()),
        "payments",
        settings=MeshSettings(health_path="/live", ready_path="/ready"),
    )
    assert health_status(core, "/healthz") is None
    assert health_status(core, "/live") == 200


def test_hot_reload_applies_to_the_next_request(telemetry: Telemetry) -> None:
    """A policy swap changes the decision without rebuilding the middleware."""
    store = PolicyStore(policy())
    core = make_core(telemetry, store, FakeClock())
    assert run(core, RequestInfo("GET", "/v1/x")) == 200
    store.update(policy({"authz": {"default": "deny"}}))
    assert run(core, RequestInfo("GET", "/v1/x")) == 403
    store.update(policy())
    assert run(core, RequestInfo("GET", "/v1/x")) == 200


def test_plan_is_compiled_once_per_snapshot(telemetry: Telemetry) -> None:
    """The compiled plan is cached by the policy object."""
    store = PolicyStore(policy())
    core = make_core(telemetry, store, FakeClock())
    assert core.plan() is core.plan()
    before = core.plan()
    store.update(policy({"rate_limit": {"requests_per_second": 1}}))
    assert core.plan() is not before


def test_a_plan_that_fails_to_compile_keeps_the_last_good_one(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug compiling a new policy never takes the service down: the old plan stays."""
    from meshlib.inbound.plan import InboundPlan

    store = PolicyStore(policy({"authz": {"default": "deny"}}))
    core = make_core(telemetry, store, FakeClock())
    assert run(core, RequestInfo("GET", "/")) == 403
    calls: list[int] = []

    def broken(*args: Any) -> Any:
        calls.append(1)
        raise RuntimeError("bug")

    monkeypatch.setattr(InboundPlan, "compile", broken)
    store.update(policy())
    assert run(core, RequestInfo("GET", "/")) == 403
    assert run(core, RequestInfo("GET", "/")) == 403
    assert calls == [1]


def test_rate_limit_429_then_recovers(telemetry: Telemetry) -> None:
    """Beyond the bucket: 429 with Retry-After; time refills it."""
    clock = FakeClock()
    core = make_core(
        telemetry,
        PolicyStore(policy({"rate_limit": {"requests_per_second": 0.5, "burst": 1}})),
        clock,
    )
    assert run(core, RequestInfo("GET", "/")) == 200
    exchange = core.begin(RequestInfo("GET", "/"))
    assert exchange.reply is not None
    assert exchange.reply.status == 429
    assert ("retry-after", "2") in exchange.reply.headers
    exchange.finish(429, None, None)
    clock.advance(2.0)
    assert run(core, RequestInfo("GET", "/")) == 200
    ((attrs, point),) = telemetry.points("meshlib.server.shed")
    assert attrs == {
        "meshlib.shed.reason": "rate_limit",
        "meshlib.limit": "services.payments.inbound.rate_limit",
        "meshlib.shadow": False,
    }
    assert point.value == 1


def test_route_limits_replace_the_service_limit(telemetry: Telemetry) -> None:
    """A matching inbound route's rate_limit applies instead of the service-wide one."""
    inbound = {
        "rate_limit": {"requests_per_second": 1, "burst": 1},
        "routes": [{"path_prefix": "/bulk", "rate_limit": {"requests_per_second": 1, "burst": 3}}],
    }
    core = make_core(telemetry, PolicyStore(policy(inbound)), FakeClock())
    assert [run(core, RequestInfo("GET", "/bulk/1")) for _ in range(4)] == [200, 200, 200, 429]
    assert [run(core, RequestInfo("GET", "/other")) for _ in range(2)] == [200, 429]
    shed = {a["meshlib.limit"] for a, _ in telemetry.points("meshlib.server.shed")}
    assert shed == {
        "services.payments.inbound.routes[0].rate_limit",
        "services.payments.inbound.rate_limit",
    }


def test_shadow_rate_limit_counts_but_admits(telemetry: Telemetry) -> None:
    """mode: shadow lets every request through and counts the would-be rejections."""
    inbound = {"rate_limit": {"requests_per_second": 1, "burst": 1, "mode": "shadow"}}
    core = make_core(telemetry, PolicyStore(policy(inbound)), FakeClock())
    assert [run(core, RequestInfo("GET", "/")) for _ in range(3)] == [200, 200, 200]
    ((attrs, point),) = telemetry.points("meshlib.server.shed")
    assert attrs["meshlib.shadow"] is True
    assert point.value == 2


def test_concurrency_limit_and_release(telemetry: Telemetry) -> None:
    """Past the limit: 503 + Retry-After; finishing a request frees its slot."""
    core = make_core(telemetry, PolicyStore(policy({"concurrency_limit": 1})), FakeClock())
    first = core.begin(RequestInfo("GET", "/"))
    assert first.reply is None
    second = core.begin(RequestInfo("GET", "/"))
    assert second.reply is not None
    assert second.reply.status == 503
    assert ("retry-after", "1") in second.reply.headers
    second.finish(503, None, None)
    first.finish(200, None, None)
    assert run(core, RequestInfo("GET", "/")) == 200


def test_shadow_concurrency_counts_in_flight(telemetry: Telemetry) -> None:
    """Shadow concurrency admits and counts, and still releases every slot."""
    inbound = {"concurrency_limit": {"limit": 1, "mode": "shadow"}}
    core = make_core(telemetry, PolicyStore(policy(inbound)), FakeClock())
    a, b = core.begin(RequestInfo("GET", "/")), core.begin(RequestInfo("GET", "/"))
    assert a.reply is None
    assert b.reply is None
    a.finish(200, None, None)
    b.finish(200, None, None)
    plan = core.plan()
    assert plan is not None
    assert plan.service_limits.concurrency is not None
    assert plan.service_limits.concurrency.limiter.in_flight == 0
    ((attrs, _),) = telemetry.points("meshlib.server.shed")
    assert attrs["meshlib.shed.reason"] == "concurrency_limit"
    assert attrs["meshlib.shadow"] is True


def test_limiter_state_survives_an_unrelated_reload(telemetry: Telemetry) -> None:
    """Reloading a policy with the same limit keeps in-flight counts and tokens."""
    store = PolicyStore(policy({"concurrency_limit": 1}))
    core = make_core(telemetry, store, FakeClock())
    held = core.begin(RequestInfo("GET", "/"))
    store.update(policy({"concurrency_limit": 1}, trust_domain="example.org"))
    assert run(core, RequestInfo("GET", "/")) == 503
    held.finish(200, None, None)
    assert run(core, RequestInfo("GET", "/")) == 200


def test_expired_deadline_is_rejected_cheaply(telemetry: Telemetry) -> None:
    """x-mesh-deadline-ms: 0 gives 504 without running the app."""
    core = make_core(telemetry, PolicyStore(policy()), FakeClock())
    assert run(core, RequestInfo("GET", "/", deadline_ms="0")) == 504
    ((attrs, _),) = telemetry.points("meshlib.server.shed")
    assert attrs["meshlib.shed.reason"] == "deadline"


def test_expired_deadline_in_shadow_or_reject_off_passes(telemetry: Telemetry) -> None:
    """deadline.mode: shadow counts; reject_expired: false does nothing."""
    shadow = make_core(
        telemetry, PolicyStore(policy({"deadline": {"mode": "shadow"}})), FakeClock()
    )
    assert run(shadow, RequestInfo("GET", "/", grpc_timeout="0m")) == 200
    off = make_core(
        telemetry, PolicyStore(policy({"deadline": {"reject_expired": False}})), FakeClock()
    )
    assert run(off, RequestInfo("GET", "/", envoy_timeout_ms="0")) == 200
    assert [a["meshlib.shadow"] for a, _ in telemetry.points("meshlib.server.shed")] == [True]


def test_deadline_is_current_while_the_app_runs(telemetry: Telemetry) -> None:
    """enter() binds the capped deadline and the span; exit() restores both."""
    clock = FakeClock()
    core = make_core(telemetry, PolicyStore(policy({"deadline": {"max": "300ms"}})), clock)
    exchange = core.begin(RequestInfo("GET", "/", deadline_ms="1000"))
    exchange.enter()
    try:
        deadline = current_deadline.get()
        assert deadline is not None
        assert deadline.remaining(clock) == pytest.approx(0.3)
        assert trace.get_current_span() is exchange.span
    finally:
        exchange.exit()
    exchange.finish(200, None, None)
    assert current_deadline.get() is None
    assert trace.get_current_span(otel_context.get_current()) is trace.INVALID_SPAN


def test_server_timing_measures_the_app(telemetry: Telemetry) -> None:
    """Server-Timing is the time between enter() and the response start."""
    clock = FakeClock()
    core = make_core(telemetry, PolicyStore(policy()), clock)
    exchange = core.begin(RequestInfo("GET", "/"))
    clock.advance(1.0)
    exchange.enter()
    clock.advance(0.0123)
    assert exchange.server_timing() == "app;dur=12.3"
    exchange.exit()
    exchange.finish(200, None, None)
    rejected = make_core(telemetry, PolicyStore(policy({"authz": {"default": "deny"}})), clock)
    assert rejected.begin(RequestInfo("GET", "/")).server_timing() == "app;dur=0.0"


def test_authz_uses_the_certificate_not_headers(telemetry: Telemetry) -> None:
    """Without a verified certificate a rule never allows; junk certificates count as none."""
    inbound = {"authz": {"default": "deny", "rules": [{"path_prefix": "/", "allow": ["*"]}]}}
    core = make_core(telemetry, PolicyStore(policy(inbound)), FakeClock())
    assert run(core, RequestInfo("GET", "/", user_agent="spiffe://cluster.local/x")) == 403
    assert run(core, RequestInfo("GET", "/", peer_cert="not a certificate")) == 403
    ((attrs, point),) = telemetry.points("meshlib.server.denied")
    assert attrs["meshlib.authz.rule"] == "services.payments.inbound.authz.rules[0]"
    assert point.value == 2


def test_authz_shadow_records_and_admits(telemetry: Telemetry) -> None:
    """authz.mode: shadow lets a denied caller in and records the denial."""
    core = make_core(
        telemetry,
        PolicyStore(policy({"authz": {"default": "deny", "mode": "shadow"}})),
        FakeClock(),
    )
    assert run(core, RequestInfo("GET", "/")) == 200
    (span,) = telemetry.spans()
    assert span.attributes is not None
    assert span.attributes["meshlib.authz.decision"] == "deny"
    assert [e.name for e in span.events] == ["meshlib.denied"]


def test_unlisted_service_gets_the_defaults(telemetry: Telemetry) -> None:
    """A service absent from the policy allows everything with no limits."""
    core = build_core(policy(), service_name="ghost", tracer_provider=telemetry.tracer_provider)
    assert run(core, RequestInfo("GET", "/")) == 200
