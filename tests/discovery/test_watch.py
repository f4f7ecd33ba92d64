"""RegistryWatcher: the instance list as endpoints, kept through control-plane outages."""

from __future__ import annotations

from pathlib import Path

import httpx

from meshlib.discovery.watch import RegistryWatcher, endpoints_from_listing
from tests.discovery.conftest import plane_app, serve


def test_outage_keeps_last_known_endpoints(policy_dir: Path) -> None:
    """When the control plane goes away the watcher counts errors and keeps what it knew."""
    seen: list[tuple[object, ...]] = []
    with serve(plane_app(policy_dir)) as cp:
        with httpx.Client(base_url=cp.url) as http:
            http.post(
                "/v1/registry/payments/instances",
                json={"instance": "p-1", "url": "http://127.0.0.1:9"},
                headers={"authorization": "Bearer r3g1ster"},
            ).raise_for_status()
        watcher = RegistryWatcher("payments", cp.url, seen.append, token="r3ad", wait=0.2)
        assert watcher.poll()
        assert not watcher.poll()  # long-poll timed out: 304
        assert watcher.consecutive_errors == 0
    try:
        assert not watcher.poll()
        assert watcher.errors == 1
        assert [e.url for e in watcher.endpoints or ()] == ["http://127.0.0.1:9"]
        assert len(seen) == 1
    finally:
        watcher.close()


def test_refused_watch_is_an_error_not_an_empty_list(policy_dir: Path) -> None:
    """A 401 is counted as an error; it never empties the endpoints."""
    with serve(plane_app(policy_dir)) as cp:
        watcher = RegistryWatcher("payments", cp.url, lambda eps: None, token="wrong", wait=0.2)
        try:
            assert not watcher.poll()
            assert watcher.endpoints is None
            assert "HTTP 401" in (watcher.last_error or "")
        finally:
            watcher.close()


def test_malformed_instances_are_skipped() -> None:
    """An instance without a usable URL is skipped, the rest kept."""
    listing = {"instances": [{"url": "http://127.0.0.1:1", "zone": "z"}, {"url": "nope"}, {}]}
    assert [(e.url, e.zone) for e in endpoints_from_listing(listing)] == [
        ("http://127.0.0.1:1", "z")
    ]
    assert endpoints_from_listing([]) == ()


def test_close_cancels_a_parked_long_poll(policy_dir: Path) -> None:
    """close() does not wait out a 30 s long-poll: the parked request is cancelled."""
    import time

    with serve(plane_app(policy_dir)) as cp:
        watcher = RegistryWatcher("payments", cp.url, lambda eps: None, token="r3ad", wait=30)
        watcher.start()
        assert watcher.wait_synced(5)
        time.sleep(0.2)  # let the second request park on the server
        started = time.monotonic()
        watcher.close()
        assert time.monotonic() - started < 10  # far below the 30 s it would park
        assert watcher._task is None


def test_registry_restart_keeps_known_instances_for_a_grace_period(policy_dir: Path) -> None:
    """A restarted registry lists nobody at first; known instances stay until the grace ends."""
    from meshlib.clock import FakeClock
    from meshlib.controlplane.instances import (
        InstanceRegistry,
        MemoryRegistryBackend,
        RegistryConfig,
    )

    reg = {"authorization": "Bearer r3g1ster"}
    app = plane_app(policy_dir)
    clock = FakeClock()
    seen: list[list[str]] = []
    with serve(app) as cp, httpx.Client(base_url=cp.url, headers=reg) as http:
        http.post(
            "/v1/registry/payments/instances", json={"instance": "a", "url": "http://127.0.0.1:1"}
        )
        watcher = RegistryWatcher(
            "payments",
            cp.url,
            lambda eps: seen.append([e.url for e in eps]),
            token="r3ad",
            wait=0.2,
            grace=10,
            clock=clock,
        )
        try:
            assert watcher.poll()
            app.state.plane.registry = MemoryRegistryBackend(
                InstanceRegistry(RegistryConfig(register_tokens=("r3g1ster",)))
            )
            assert not watcher.poll()  # empty, but a new boot: "a" is kept
            http.post(
                "/v1/registry/payments/instances",
                json={"instance": "b", "url": "http://127.0.0.1:2"},
            )
            assert watcher.poll()
            clock.advance(10)
            assert watcher.poll()  # the grace ended: only what registered again
        finally:
            watcher.close()
    assert seen == [
        ["http://127.0.0.1:1"],
        ["http://127.0.0.1:2", "http://127.0.0.1:1"],
        ["http://127.0.0.1:2"],
    ]
