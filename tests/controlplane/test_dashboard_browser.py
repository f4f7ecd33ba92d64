"""The dashboard in headless Chromium: a reporting service shows up, and a version is rolled back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
                # error % is over the last report interval: a second report makes one
                report["destinations"]["orders"].update(requests=10, errors=10)  # type: ignore[index]
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


@pytest.mark.browser
def test_demo_dashboard_shows_the_split_per_edge_and_rolls_back(tmp_path: Path) -> None:
    """The demo with --keep-running: its dashboard at 1400 px shows the split of the demo's edges
    (no zero-traffic edges, no self-loops), a labelled error % window, a history table that fits,
    and a rollback made with the publish token the demo prints."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_"))}
    demo = subprocess.Popen(
        [sys.executable, "examples/demo.py", "--duration", "5", "--keep-running"],
        cwd=root,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: list[str] = []
    try:
        assert demo.stdout is not None
        dashboard = token = None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            printed.append(line)
            if line.startswith("Dashboard: "):
                dashboard = line.split()[1]
            elif line.startswith("Publish token: "):
                token = line.split()[2]
        assert dashboard, "".join(printed)
        assert token, "".join(printed)
        plane = dashboard.removesuffix("/dashboard")
        mesh = httpx.get(plane + "/v1/mesh").json()
        assert all(e["requests"] > 0 for e in mesh["edges"])
        assert all(e["source"] != e["destination"] for e in mesh["edges"])
        with chromium(tmp_path / "profile") as browser:
            browser.get(dashboard)
            for edge in ("frontend->orders", "orders->payments"):
                shown = browser.wait_text(f'#split tbody tr[data-edge="{edge}"]', " / ")
                service = browser.text(f'#split tbody tr[data-edge="{edge}"] td:nth-child(3)')
                assert service.split(" / ")[0] != "\u2013", shown  # an en dash: never measured
            assert "(last" in browser.text("#error-header")
            assert browser.script("return window.innerWidth;") == 1400
            fits = browser.script(
                "const t = document.querySelector('#history');"
                "return t.getBoundingClientRect().right <= t.parentElement.getBoundingClientRect().right + 1;"
            )
            assert fits
            document = httpx.get(plane + "/v1/policy").json()["document"]
            document["defaults"] = {**document.get("defaults", {}), "timeouts": {"total": "9s"}}
            published = httpx.put(
                plane + "/v1/policy",
                json=document,
                headers={"authorization": f"Bearer {token}", "x-mesh-comment": "from the test"},
            )
            assert published.status_code == 201, published.text
            version = published.json()["version"]
            browser.type("#token", token)
            browser.click("#save-token")
            browser.wait_text("#policy-version", f"version {version}")
            browser.click(f'#history button.rollback[data-version="{version - 1}"]')
            browser.wait_text("#message", f"rolled back to version {version - 1}")
    finally:
        demo.send_signal(signal.SIGTERM)  # the demo stops every process it started
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
