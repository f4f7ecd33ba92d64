"""The dashboard in headless Chromium: a reporting service shows up, and a version is rolled back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from meshlib.controlplane.client import ControlPlaneSource
from meshlib.controlplane.reporter import StateReporter
from meshlib.policy.store import PolicyStore
from tests.controlplane.conftest import POLICY_V2, PUBLISH_HEADERS, Applied, serve_plane
from tests.controlplane.webdriver import chromium


@pytest.mark.browser
def test_dashboard_shows_a_reporting_service_and_rolls_back(
    policy_dir: Path, tmp_path: Path
) -> None:
    """Chromium sees the reporting service and its policy version, clicks rollback, and clients follow."""
    with serve_plane(policy_dir) as server:
        assert (
            httpx.put(
                server.url + "/v1/policy", content=POLICY_V2, headers=PUBLISH_HEADERS
            ).status_code
            == 201
        )
        store = PolicyStore()
        applied = Applied(store)
        reporter = StateReporter(service="orders", instance="orders-1", interval=1.0)
        source = ControlPlaneSource([server.url], reporter=reporter, wait=5.0)
        source.start(store)
        try:
            with chromium(tmp_path / "profile") as browser:
                browser.get(server.url + "/dashboard")
                browser.wait_text("#instances tbody", "orders-1")
                row = browser.text('#instances tbody tr[data-service="orders"]')
                assert "orders" in row
                assert "2" in browser.text(
                    '#instances tbody tr[data-service="orders"] td:nth-child(4)'
                )
                report = {
                    "service": "checkout",
                    "instance": "co-1",
                    "policy_revision": "2",
                    "destinations": {
                        "orders": {
                            "requests": 5,
                            "errors": 5,
                            "endpoints": {
                                "http://127.0.0.1:9001": {"breaker": "open", "ejected": True}
                            },
                        }
                    },
                }
                assert httpx.post(server.url + "/v1/reports", json=report).status_code == 202
                browser.wait_text('#edges tbody tr[data-edge="checkout->orders"]', "100.0")
                browser.wait_text("#endpoints tbody", "open \u00d71")
                assert "by 1" in browser.text(
                    '#endpoints tr[data-endpoint="http://127.0.0.1:9001"]'
                )
                browser.wait_text("#policy-version", "version 2")
                browser.wait_text("#diff", "attempts: 3")
                browser.type("#token", "pub-s3cret")
                browser.click("#save-token")
                browser.wait_text("#history tbody", "loaded from policy.yaml")
                browser.click('#history button.rollback[data-version="1"]')
                browser.wait_text("#message", "rolled back to version 1 as version 3")
                browser.wait_text("#policy-version", "version 3")
                assert "pub-s3cret" not in browser.script("return document.body.innerText;")
            current = httpx.get(server.url + "/v1/policy").json()
            assert (current["version"], current["who"]) == (3, "alice")
            assert current["document"]["services"]["payments"]["retry"] == {"attempts": 2}
            assert applied.wait_for("3", timeout=5.0)
        finally:
            source.close()
