"""MeshClient construction, the httpx API kept, stats snapshot, and no leaks."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from meshlib.errors import NoEndpointsError, SettingsError
from meshlib.outbound import MeshClient, stats
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from tests.outbound.conftest import Driver, mesh_policy

LEAK_CALLS = 3_000  # x3 drivers; 10_000 each passes too, in ~12 s per driver


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    # The event loop's default executor (aiohttp resolves names there) belongs to the loop.
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def test_no_leaks_after_many_calls_and_close(driver: Driver, up) -> None:
    """After many calls and close, no sockets, threads or ResourceWarnings remain."""
    _upstream, server = up
    gc.collect()
    fds, threads = _open_fds(), _threads()
    client = driver.client(mesh_policy([server.url]))
    results = driver.many(client, "http://payments/ok", count=LEAK_CALLS, concurrency=4)
    assert all(r.status_code == 200 for r in results)
    driver.close()
    driver._clients.clear()
    del client, results
    gc.collect()
    # The in-process upstream closes its side of each connection when it notices the client's
    # close; give it a moment (a real leak never returns to the baseline).
    deadline = time.monotonic() + 5
    while (_open_fds() > fds or _threads() > threads) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert _open_fds() <= fds
    assert _threads() <= threads


def test_httpx_api_kept(up) -> None:
    """base_url, headers, event hooks and streaming work as on httpx.Client."""
    upstream, server = up
    seen: list[int] = []
    with MeshClient(
        mesh_policy([server.url]),
        base_url="http://payments",
        headers={"x-team": "orders"},
        event_hooks={"response": [lambda r: seen.append(r.status_code)]},
    ) as client:
        with client.stream("GET", "/ok") as response:
            assert b"".join(response.iter_bytes()) == b"ok"
        assert upstream.headers[-1]["x-team"] == "orders"
        assert upstream.headers[-1]["host"] == "payments"
    assert seen == [200]


def test_built_from_file_store_or_settings(
    tmp_path: Path, up, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path (watched), a PolicyStore, or MESH_POLICY_FILE all give a working client."""
    _upstream, server = up
    path = tmp_path / "mesh.yaml"
    path.write_text(f"version: 1\nservices:\n  payments:\n    endpoints: ['{server.url}']\n")
    with MeshClient(str(path)) as client:
        assert client.get("http://payments/ok").status_code == 200
    with MeshClient(PolicyStore(mesh_policy([server.url]))) as client:
        assert client.get("http://payments/ok").status_code == 200
    with pytest.raises(SettingsError, match="MESH_POLICY_FILE"):
        MeshClient()
    monkeypatch.setenv("MESH_POLICY_FILE", str(path))
    with MeshClient() as client:
        assert client.get("http://payments/ok").status_code == 200


def test_service_without_endpoints_fails_clearly(caplog: pytest.LogCaptureFixture) -> None:
    """A service whose discovery finds no endpoint raises NoEndpointsError (an httpx.TransportError).

    (A policy giving a called service no endpoints and no discovery at all is
    refused when loaded: tests/policy/test_model.py.)
    """
    policy = Policy.model_validate(
        {"version": 1, "services": {"payments": {"discovery": {"registry": True}}}}
    )
    with MeshClient(policy) as client, pytest.raises(NoEndpointsError, match="payments"):
        client.get("http://payments/ok")
    assert issubclass(NoEndpointsError, httpx.TransportError)


def test_stats_snapshot_shape(up) -> None:
    """stats.snapshot() reports live clients per destination and endpoint, JSON-able."""
    _upstream, server = up
    with MeshClient(mesh_policy([server.url])) as client:
        client.get("http://payments/flaky/1/st")
        client.get("http://payments/status/500")
        snap = json.loads(json.dumps(stats.snapshot()))
        payments = snap["destinations"]["payments"]
        assert payments["requests"] == 2
        assert payments["retries"] == 1
        assert payments["errors"] == 1
        assert payments["budget_refusals"] == 0
        assert set(payments["latency_ms"]) == {"p50", "p99"}
        endpoint = payments["endpoints"][server.url]
        assert endpoint == {"breaker": "closed", "ejected": False, "requests": 3, "errors": 2}
    assert "payments" not in stats.snapshot()["destinations"]


def test_store_without_policy_yet_fails_calls_clearly_then_works(up) -> None:
    """A client on a store still waiting for policy refuses calls clearly, then serves once it lands."""
    _upstream, server = up
    store = PolicyStore()
    with MeshClient(store) as client:
        with pytest.raises(NoEndpointsError, match="no mesh policy is loaded yet"):
            client.get("http://payments/ok")
        store.update(mesh_policy([server.url]))
        assert client.get("http://payments/ok").status_code == 200


def test_bad_tls_files_for_one_service_leave_others_working(up, tmp_path: Path) -> None:
    """A service whose certificate files are missing fails clearly; other services keep working."""
    _upstream, server = up
    missing = str(tmp_path / "missing.pem")
    policy = Policy.model_validate(
        {
            "version": 1,
            "services": {
                "payments": {"endpoints": [server.url]},
                "ledger": {
                    "endpoints": ["https://127.0.0.1:1"],
                    "tls": {"mode": "mutual", "ca": missing, "cert": missing, "key": missing},
                },
            },
        }
    )
    with MeshClient(policy) as client:
        assert client.get("http://payments/ok").status_code == 200
        with pytest.raises(NoEndpointsError, match=r"ledger.*missing\.pem"):
            client.get("http://ledger/ok")
