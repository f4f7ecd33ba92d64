"""ControlPlaneSource against real servers: apply at once, survive outages and garbage, cache, report."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib.outbound
from meshlib.controlplane.client import CACHE_NAME, ControlPlaneSource
from meshlib.errors import ControlPlaneError
from meshlib.policy.sources import shared_store
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from tests.controlplane.conftest import (
    POLICY_V1,
    POLICY_V2,
    PUBLISH_HEADERS,
    Applied,
    plane_process,
    serve_plane,
    wait_until,
)
from tests.controlplane.rawserver import ANSWERS, good, raw_server
from tests.support.servers import free_port

DOC_V1 = {"version": 1, "services": {"payments": {"endpoints": ["http://127.0.0.1:8001"]}}}


@contextmanager
def started(urls: list[str], store: PolicyStore, **kwargs: Any) -> Iterator[ControlPlaneSource]:
    """A started ControlPlaneSource, closed at the end."""
    kwargs.setdefault("wait", 5.0)
    source = ControlPlaneSource(urls, **kwargs)
    source.start(store)
    try:
        yield source
    finally:
        source.close()


def attempts(store: PolicyStore) -> int:
    """The retry attempts for payments in the store's policy."""
    return store.current.policy.services["payments"].retry.attempts  # type: ignore[union-attr]


def test_publish_reaches_a_watching_client_at_once(policy_dir: Path, tmp_path: Path) -> None:
    """A publish is applied by a long-polling client without waiting for any poll interval."""
    store = PolicyStore()
    applied = Applied(store)
    with (
        serve_plane(policy_dir) as server,
        started([server.url], store, cache_dir=tmp_path) as source,
    ):
        assert store.current.revision == "1"
        assert attempts(store) == 2
        time.sleep(0.2)  # let the watcher park its long-poll
        published = httpx.put(server.url + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
        assert published.status_code == 201
        # The latency distribution is measured in benchmarks/bench_controlplane.py; here: "at once".
        assert applied.wait_for("2", timeout=2.0)
        assert attempts(store) == 3
        assert store.current.source == server.url
        assert source.failures == 0


def test_invalid_document_from_the_server_keeps_the_last_good_policy(tmp_path: Path) -> None:
    """A served document that fails validation is rejected and counted; the old policy stays."""
    store = PolicyStore()
    with raw_server(good(1, DOC_V1)) as raw, started([raw.url], store, wait=0.1) as source:
        raw.answer = ANSWERS["invalid-policy"]
        assert wait_until(lambda: source.rejected >= 1)
        assert store.current.revision == "1"
        assert store.last_error is not None
        assert store.last_error.issues[0].field == "services.payments.retry.attempts"


@pytest.mark.parametrize(
    "answer", ["not-json", "truncated", "wrong-shape", "not-http", "server-error"]
)
def test_garbage_and_truncated_answers_are_survived(answer: str) -> None:
    """Garbage, truncated, malformed and error answers are counted failures; policy stays; no hot loop."""
    store = PolicyStore()
    with raw_server(good(1, DOC_V1)) as raw, started([raw.url], store, backoff_max=0.2) as source:
        raw.answer = ANSWERS[answer]
        assert wait_until(lambda: source.failures >= 2)
        hits_before, t0 = raw.hits, time.monotonic()
        time.sleep(0.5)
        rate = (raw.hits - hits_before) / (time.monotonic() - t0)
        assert rate < 100, f"{rate:.0f} requests/s against a broken control plane is a hot loop"
        assert store.current.revision == "1"
        assert source.last_error
        raw.answer = good(2, DOC_V1 | {"trust_domain": "example.org"})
        assert wait_until(lambda: store.current.revision == "2")


def test_server_killed_then_back_on_the_same_port(policy_dir: Path, tmp_path: Path) -> None:
    """While the server is dead the last good policy serves; its return is picked up within 2 s.

    That is one backoff step: the step is capped at 1 s here (MESH_CONTROL_PLANE_BACKOFF_MAX).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = PolicyStore()
    applied = Applied(store)
    with plane_process(policy_dir, port) as proc:
        source = ControlPlaneSource([url], cache_dir=tmp_path, wait=30.0, backoff_max=1.0)
        source.start(store)
    try:
        assert proc.returncode is not None  # killed with SIGKILL by plane_process
        assert wait_until(lambda: source.failures >= 1)
        assert store.current.revision == "1"
        (policy_dir / "policy.yaml").write_text(POLICY_V2)  # edited while the server is down
        with plane_process(policy_dir, port):
            assert applied.wait_for("2", timeout=2.0), (
                "not picked up within 2 s of the server's return"
            )
        assert attempts(store) == 3
    finally:
        source.close()


def test_restart_during_outage_boots_from_the_disk_cache(policy_dir: Path, tmp_path: Path) -> None:
    """A service started while the control plane is down comes up with the cached last good policy."""
    port = free_port()
    with serve_plane(policy_dir, port=port) as server:
        with started([server.url], PolicyStore(), cache_dir=tmp_path) as first:
            assert first.version == 1
        assert (tmp_path / CACHE_NAME).exists()
    store = PolicyStore()
    applied = Applied(store)
    with started(
        [f"http://127.0.0.1:{port}"], store, cache_dir=tmp_path, connect_timeout=0.5
    ) as second:
        assert store.current.revision == "1"
        assert store.current.source.startswith("cache ")
        assert second.version == 1
        with serve_plane(policy_dir, port=port) as server:
            httpx.put(server.url + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS)
            assert applied.wait_for("2", timeout=5.0)


def test_bootstrap_file_when_nothing_else(tmp_path: Path) -> None:
    """With no control plane and no cache, the local policy file is the bootstrap."""
    bootstrap = tmp_path / "mesh.yaml"
    bootstrap.write_text(POLICY_V1)
    store = PolicyStore()
    dead = f"http://127.0.0.1:{free_port()}"
    with started([dead], store, cache_dir=tmp_path / "cache", bootstrap_file=bootstrap) as source:
        assert store.current.source == str(bootstrap)
        assert source.version is None


def test_no_control_plane_no_cache_no_bootstrap_is_a_clear_error(tmp_path: Path) -> None:
    """Starting with nothing to serve raises ControlPlaneError naming every fallback tried."""
    source = ControlPlaneSource([f"http://127.0.0.1:{free_port()}"], cache_dir=tmp_path)
    with pytest.raises(ControlPlaneError) as info:
        source.start(PolicyStore())
    message = str(info.value)
    assert "ConnectError" in message
    assert "no cached policy" in message
    assert "MESH_POLICY_FILE" in message


def test_fails_over_to_the_next_url(policy_dir: Path) -> None:
    """A dead first URL is skipped; the second control plane serves."""
    store = PolicyStore()
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_plane(policy_dir) as server, started([dead, server.url], store) as source:
        assert store.current.source == server.url
        assert source.urls[source._index] == server.url


def test_settings_select_the_control_plane_and_report_state(
    policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MESH_CONTROL_PLANE_URL feeds the shared store, and the reporter shows up on the server."""
    fake = types.ModuleType("meshlib.outbound.stats")
    fake.snapshot = lambda: {
        "destinations": {
            "payments": {
                "requests": 7,
                "errors": 1,
                "endpoints": {  # type: ignore[attr-defined]
                    "http://127.0.0.1:8001": {
                        "breaker": "open",
                        "ejected": True,
                        "requests": 7,
                        "errors": 1,
                    }
                },
            }
        }
    }
    monkeypatch.setitem(sys.modules, "meshlib.outbound.stats", fake)
    monkeypatch.setattr(meshlib.outbound, "stats", fake, raising=False)
    with serve_plane(policy_dir) as server:
        settings = MeshSettings(
            control_plane_url=server.url,
            service_name="orders",
            instance_id="orders-1",
            cache_dir=tmp_path,
            report_interval=1.0,
        )
        store = shared_store(settings)
        assert store.current.revision == "1"

        def reported() -> bool:
            mesh = httpx.get(server.url + "/v1/mesh").json()
            return any(s["name"] == "orders" and s["instances"] for s in mesh["services"])

        assert wait_until(reported)
        mesh = httpx.get(server.url + "/v1/mesh").json()
        orders = next(s for s in mesh["services"] if s["name"] == "orders")
        assert orders["instances"][0]["instance"] == "orders-1"
        assert orders["instances"][0]["policy_revision"] == "1"
        (edge,) = mesh["edges"]
        assert edge["endpoints"][0]["breaker"] == {"open": 1}


def test_reporter_tolerates_missing_or_broken_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without meshlib.outbound.stats, or when snapshot() raises, a report has no destinations."""
    from meshlib.controlplane.reporter import StateReporter

    broken = types.ModuleType("meshlib.outbound.stats")

    def snapshot() -> dict[str, Any]:
        raise RuntimeError("boom")

    broken.snapshot = snapshot  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "meshlib.outbound.stats", broken)
    monkeypatch.setattr(meshlib.outbound, "stats", broken, raising=False)
    report = StateReporter(service="orders", instance="i").build_report(None)
    assert report["destinations"] == {}
    monkeypatch.setitem(sys.modules, "meshlib.outbound.stats", None)  # import fails
    monkeypatch.delattr(meshlib.outbound, "stats", raising=False)
    assert StateReporter(service="orders").build_report(None)["destinations"] == {}


def test_close_returns_promptly_while_a_long_poll_is_parked(policy_dir: Path) -> None:
    """close() cancels the parked long-poll instead of waiting for its 30 s."""
    with serve_plane(policy_dir) as server:
        source = ControlPlaneSource([server.url], wait=30.0)
        source.start(PolicyStore())
        time.sleep(0.2)
        t0 = time.monotonic()
        source.close()
        assert time.monotonic() - t0 < 5.0
        source.close()  # idempotent


def test_https_control_plane_with_unusable_tls_files_is_a_settings_error(tmp_path: Path) -> None:
    """A missing CA file for an https:// control plane is a SettingsError naming the settings."""
    from meshlib.errors import SettingsError

    settings = MeshSettings(control_plane_url="https://127.0.0.1:1", tls_ca=tmp_path / "nope.pem")
    with pytest.raises(SettingsError, match="MESH_TLS_CA"):
        ControlPlaneSource.from_settings(settings)


def test_reporter_only_with_a_service_name() -> None:
    """Without MESH_SERVICE_NAME the source does not report (no 'unknown' rows on the dashboard)."""
    anonymous = ControlPlaneSource.from_settings(
        MeshSettings(control_plane_url="http://127.0.0.1:1")
    )
    assert anonymous.reporter is None
    named = ControlPlaneSource.from_settings(
        MeshSettings(control_plane_url="http://127.0.0.1:1", service_name="orders")
    )
    assert named.reporter is not None
    assert named.reporter.service == "orders"


def test_same_version_number_with_other_content_is_still_applied() -> None:
    """A control plane whose history was reset (version 1 again, new content) is followed."""
    store = PolicyStore()
    with raw_server(good(1, DOC_V1)) as raw, started([raw.url], store, wait=0.1) as source:
        reset = good(1, DOC_V1 | {"trust_domain": "example.org"})
        raw.answer = reset.replace(f"{1:064d}".encode(), b"f" * 64).replace(b'"1-x"', b'"1-y"')
        assert wait_until(lambda: store.current.policy.trust_domain == "example.org")
        assert store.current.revision == "1-ffffffff"
        assert source.hash == "sha256:" + "f" * 64


def test_service_name_in_code_shows_the_client_on_the_dashboard(
    policy_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MeshClient(service_name=...) reports under that name without MESH_SERVICE_NAME; a second name warns."""
    from meshlib import MeshClient

    with serve_plane(policy_dir) as server:
        monkeypatch.setenv("MESH_CONTROL_PLANE_URL", server.url)
        settings = MeshSettings(cache_dir=tmp_path, report_interval=1.0)
        assert settings.service_name is None
        with MeshClient(service_name="orders", settings=settings):

            def reported() -> bool:
                mesh = httpx.get(server.url + "/v1/mesh").json()
                return any(s["name"] == "orders" and s["instances"] for s in mesh["services"])

            assert wait_until(reported)
            assert "will not appear" not in caplog.text
            with MeshClient(service_name="orders", settings=settings):
                assert "will not appear" not in caplog.text  # the same name again is fine
            with MeshClient(service_name="billing", settings=settings):
                pass
            with MeshClient(service_name="billing", settings=settings):
                pass
    warnings = [r for r in caplog.records if "will not appear" in r.getMessage()]
    assert len(warnings) == 1
    assert "service_name='billing'" in warnings[0].getMessage()
    assert "reports as 'orders'" in warnings[0].getMessage()


def test_control_plane_clients_share_one_default_tls_context() -> None:
    """Every control-plane client of a process reuses one CA bundle load, over meshlib's aiohttp pool."""
    from meshlib.controlplane.connection import control_plane_client
    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    first, second = control_plane_client(True), control_plane_client(True)
    transports = [client._transport for client in (first, second)]
    assert all(isinstance(t, AiohttpTransport) for t in transports)
    assert transports[0]._ssl is transports[1]._ssl
