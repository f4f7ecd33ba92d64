"""The dashboard shows the service registry and what each caller's discovery sees (HTTP and headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib.discovery.registry import InstanceInfo, Registrar
from tests.controlplane.webdriver import chromium
from tests.discovery.conftest import plane_app, serve


@pytest.mark.browser
def test_dashboard_lists_registered_instances(policy_dir: Path, tmp_path: Path) -> None:
    """A self-registered instance appears in the dashboard's registry table with its zone."""
    with serve(plane_app(policy_dir, read_tokens=())) as cp:
        registrar = Registrar(
            InstanceInfo("payments", "http://127.0.0.1:9000", instance="payments-1", zone="z1"),
            cp.url,
            token="r3g1ster",
        )
        try:
            assert registrar.start(wait=5)
            with chromium(tmp_path / "profile") as browser:
                browser.get(cp.url + "/dashboard")
                browser.wait_text("#registry tbody", "payments-1")
                row = browser.text('#registry tbody tr[data-service="payments"]')
                assert "http://127.0.0.1:9000" in row
                assert "z1" in row
        finally:
            registrar.close()


def test_reports_carry_discovered_endpoints_to_the_mesh_view(policy_dir: Path) -> None:
    """A caller's report includes what its discovery sees (health, in use, panic); /v1/mesh lists it."""
    import httpx

    from meshlib.clock import FakeClock
    from meshlib.controlplane.reporter import StateReporter
    from meshlib.discovery.manager import Discovery
    from meshlib.policy.parse import parse_policy
    from meshlib.policy.store import PolicyStore
    from meshlib.settings import MeshSettings

    text = """\
version: 1
services:
  payments:
    endpoints: [{url: "http://127.0.0.1:1", zone: z1}, {url: "http://127.0.0.1:2", zone: z2}]
    discovery:
      health_check: {interval: 1m, healthy_threshold: 2, unhealthy_threshold: 1}
      panic_threshold: 0
"""
    # Every probe passes; whichever comes first, one failure flips :1 (threshold 1) and one
    # pass cannot bring it back (threshold 2).
    probes = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    discovery = Discovery(
        PolicyStore(parse_policy(text)),
        settings=MeshSettings(),
        clock=FakeClock(),
        probe_client=probes,
    )
    try:
        found = discovery.endpoint_set("payments")
        assert found is not None
        assert found.health is not None
        found.health.record("http://127.0.0.1:1", ok=False)
        report = StateReporter(service="orders", instance="orders-1").build_report(None)
        assert (
            report["discovery"]["payments"]["endpoints"]["http://127.0.0.1:1"]["health"]
            == "unhealthy"
        )
        with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url) as http:
            http.post(
                "/v1/reports", json=report, headers={"authorization": "Bearer r3ad"}
            ).raise_for_status()
            rows = http.get("/v1/mesh", headers={"authorization": "Bearer r3ad"}).json()[
                "discovery"
            ]
            assert [(r["instance"], r["destination"], r["url"], r["selected"]) for r in rows] == [
                ("orders-1", "payments", "http://127.0.0.1:1", False),
                ("orders-1", "payments", "http://127.0.0.1:2", True),
            ]
            assert rows[0]["health"] == "unhealthy"
            assert rows[1]["health"] in ("unknown", "healthy")  # its first probe may have run
            assert 'id="discovery"' in http.get("/dashboard").text
    finally:
        discovery.close()
        probes.close()
