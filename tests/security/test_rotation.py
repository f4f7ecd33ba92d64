"""Certificate rotation under steady traffic: leaves, then the CA with an overlap; no request fails."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from meshlib.security.ca import DevCA, IssuedCert
from meshlib.security.tls import RotatingSSLContext, client_context, server_context
from meshlib.settings import MeshSettings
from tests.security.conftest import ORDERS, PKI, RUNNERS, issue_server, serve_identity

RATE = 50  # requests per second, alternating a fresh connection and a kept-alive one
MAX_REQUESTS = 1500
MAX_SECONDS = 30.0
STEP_REQUESTS = 6  # sent after each rotation step, fresh and kept-alive connections alike


def _install(issued: IssuedCert, cert: Path, key: Path) -> None:
    # Key first, then certificate, each atomically: readers may briefly see a mismatched pair.
    for src, dst in ((issued.key_path, key), (issued.cert_path, cert)):
        tmp = dst.with_name(dst.name + ".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _write_bundle(path: Path, *cas: DevCA) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text("".join(ca.cert_pem for ca in cas))
    os.replace(tmp, path)


def _wait(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"rotation not picked up: {what}")
        time.sleep(0.02)


class Traffic:
    """~RATE req/s in a thread, bounded in count and time; records every failure."""

    def __init__(self, url: str, verify: RotatingSSLContext) -> None:
        self.url = url
        self.verify = verify
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=MAX_SECONDS)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        with httpx.Client(verify=self.verify) as fresh, httpx.Client(verify=self.verify) as kept:
            while (
                not self._stop.is_set() and self.sent < MAX_REQUESTS and time.monotonic() < deadline
            ):
                client, headers = (
                    (fresh, {"connection": "close"}) if self.sent % 2 == 0 else (kept, {})
                )
                try:
                    response = client.get(self.url, headers=headers)
                    if response.status_code != 200 or response.text != ORDERS:
                        self.failures.append(f"{response.status_code} {response.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.sent += 1
                time.sleep(1 / RATE)


def test_rotating_leaves_then_the_ca_drops_no_request(
    pki: PKI, tmp_path: Path, server_kind: str
) -> None:
    """Server leaf, client leaf, CA overlap bundle, new-CA leaves, new-CA-only bundle: zero failed requests."""
    live = tmp_path / "live"
    live.mkdir()
    server_cert, server_key = live / "server.pem", live / "server.key"
    client_cert, client_key = live / "client.pem", live / "client.key"
    bundle = live / "bundle.pem"
    _install(pki.server, server_cert, server_key)
    _install(pki.client, client_cert, client_key)
    _write_bundle(bundle, pki.ca)
    settings = MeshSettings(tls_cert=server_cert, tls_key=server_key, tls_ca=bundle)
    tls = pki.client_tls().model_copy(
        update={"ca": str(bundle), "cert": str(client_cert), "key": str(client_key)}
    )
    verify = client_context(tls, identity="spiffe://example.org/payments")
    assert isinstance(verify, RotatingSSLContext)
    new_ca = DevCA.create("example.org", tmp_path / "ca2")

    with serve_identity(server_kind, settings) as server, Traffic(server.url, verify) as traffic:
        assert isinstance(server.context, RotatingSSLContext)
        server_gen, client_gen = server.context.material, verify.material

        def step(what: str, action: Callable[[], None], *, server: bool, client: bool) -> None:
            before = (server_gen.generation, client_gen.generation)
            action()
            if server:
                _wait(f"{what} (server)", lambda: server_gen.generation > before[0])
            if client:
                _wait(f"{what} (client)", lambda: client_gen.generation > before[1])
            # Requests on the new material, however slowly a busy machine makes them.
            sent = traffic.sent
            _wait(f"{what} (traffic)", lambda: traffic.sent >= sent + STEP_REQUESTS)

        time.sleep(0.3)  # some traffic on the original material first
        step(
            "server leaf",
            lambda: _install(issue_server(pki.ca, "payments-2"), server_cert, server_key),
            server=True,
            client=False,
        )
        step(
            "client leaf",
            lambda: _install(pki.ca.issue("orders", name="orders-2"), client_cert, client_key),
            server=False,
            client=True,
        )
        step(
            "overlap bundle",
            lambda: _write_bundle(bundle, pki.ca, new_ca),
            server=True,
            client=True,
        )

        def new_leaves() -> None:
            _install(issue_server(new_ca), server_cert, server_key)
            _install(new_ca.issue("orders"), client_cert, client_key)

        step("new-CA leaves", new_leaves, server=True, client=True)
        step("new CA only", lambda: _write_bundle(bundle, new_ca), server=True, client=True)
        time.sleep(0.3)  # and some on the final material

    assert traffic.failures == []
    assert traffic.sent >= 5 * STEP_REQUESTS  # traffic really ran on every material

    # The old CA is really gone on the server: a fresh client with an old-CA leaf is refused.
    old = pki.client_tls(pki.ca.issue("orders", name="orders-old")).model_copy(
        update={"ca": str(bundle)}
    )
    with serve_identity(server_kind, settings) as server:
        with httpx.Client(verify=client_context(tls, identity=None)) as good:
            assert good.get(server.url).text == ORDERS
        with (
            httpx.Client(verify=client_context(old, identity=None)) as stale,
            pytest.raises(httpx.TransportError),
        ):
            stale.get(server.url)


def test_a_garbage_rotation_keeps_the_server_serving(
    pki: PKI, tmp_path: Path, server_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate file replaced by garbage is refused with a logged reason; the old one keeps serving."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    _install(pki.server, cert, key)
    settings = MeshSettings(tls_cert=cert, tls_key=key, tls_ca=pki.ca.cert_path)
    context = server_context(settings, interval=0.05)
    runner, app = RUNNERS[server_kind]
    verify = client_context(pki.client_tls(), identity="spiffe://example.org/payments")
    with runner(app, settings, ssl_context=context) as server:
        tmp = cert.with_name("garbage.tmp")
        tmp.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        os.replace(tmp, cert)

        def fresh_call() -> bool:  # checks are lazy: new connections trigger them
            with httpx.Client(verify=verify) as client:
                assert client.get(server.url).text == ORDERS
            return True

        _wait("the garbage file", lambda: fresh_call() and context.material.failures > 0)
        assert context.material.generation == 0  # still the original material
        _install(issue_server(pki.ca, "payments-fixed"), cert, key)
        _wait("the fixed file", lambda: fresh_call() and context.material.generation > 0)
        assert fresh_call()
    assert any(
        "changed but cannot be loaded, keeping the previous ones" in m and str(cert) in m
        for m in caplog.messages
    )
