"""A minimal W3C WebDriver client over httpx, driving Debian's chromium through chromedriver.

No selenium: the handful of WebDriver commands a dashboard test needs are a
few HTTP calls to chromedriver on 127.0.0.1. Chromium runs headless with a
fresh profile, and every host but 127.0.0.1 resolves to nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
INSTALL = "apt-get install -y chromium chromium-driver"


class Browser:
    """One WebDriver session."""

    def __init__(self, client: httpx.Client, session: str) -> None:
        self._client = client
        self._base = f"/session/{session}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._client.request(method, self._base + path, json=body)
        payload = response.json()
        if response.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path} failed: {payload.get('value')}")
        return payload["value"]

    def get(self, url: str) -> None:
        """Navigate to `url` and wait for the load."""
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        """The element matching `css` (AssertionError if none)."""
        return str(self._call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT])

    def click(self, css: str) -> None:
        """Click the element matching `css` as a user would."""
        self._call("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        """Type `text` into the input matching `css`."""
        self._call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def script(self, source: str, *args: Any) -> Any:
        """Run JavaScript in the page and return its result."""
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def text(self, css: str) -> str:
        """The text content of the first element matching `css`, or '' if there is none."""
        result = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css
        )
        return str(result)

    def wait_text(self, css: str, expected: str, timeout: float = 10.0) -> str:
        """Wait until the element's text contains `expected`; fail with what it showed."""
        deadline = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < deadline:
            shown = self.text(css)
            if expected in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{css} never showed {expected!r}; it shows {shown!r}")


@contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    """A headless Chromium session; fails (not skips) when Chromium or chromedriver is missing."""
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(f"the dashboard test needs Debian's chromium and chromedriver: {INSTALL}")
    port = free_port()
    proc = subprocess.Popen(
        [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"chromedriver did not start ({driver}); reinstall with {INSTALL}")
            time.sleep(0.05)
        args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1400,1000",  # the width the dashboard must fit
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ]
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args},
        }
        created = client.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
        if created.status_code != 200:
            pytest.fail(f"Chromium did not start: {created.json().get('value')}")
        session = created.json()["value"]["sessionId"]
        try:
            yield Browser(client, session)
        finally:
            client.delete(f"/session/{session}")
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
