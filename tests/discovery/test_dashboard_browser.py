"""The dashboard in headless Chromium shows the service registry's instances and their leases."""

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
