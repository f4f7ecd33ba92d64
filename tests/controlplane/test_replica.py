"""One replica on the embedded store: atomic CAS, refused publishes counted, forward-only, slow clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from meshlib.controlplane.storage import PolicyRepository
from meshlib.controlplane.watch import VersionHub, version_of_etag
from meshlib.errors import VersionConflictError
from tests.controlplane.conftest import POLICY_V1, POLICY_V2, PUBLISH_HEADERS, serve_plane
from tests.controlplane.test_watch import version


def _race(url: str, etag: str, bodies: list[str]) -> list[int]:
    """PUT every body at once with the same If-Match; the status codes."""
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def publish(body: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            barrier.wait()
            response = client.put(
                "/v1/policy", content=body, headers={**PUBLISH_HEADERS, "If-Match": etag}
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=publish, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return sorted(statuses)


def test_concurrent_publishes_with_one_etag_exactly_one_wins(policy_dir: Path) -> None:
    """Several PUTs carrying the same If-Match race; one gets 201, every other 412, none is lost."""
    with serve_plane(policy_dir) as server:
        etag = httpx.get(server.url + "/v1/policy").headers["etag"]
        bodies = [POLICY_V2.replace("attempts: 3", f"attempts: {n}") for n in (3, 4, 5, 6)]
        assert _race(server.url, etag, bodies) == [201, 412, 412, 412]
        history = httpx.get(server.url + "/v1/policy/history").json()
        assert [v["version"] for v in history["versions"]] == [2, 1]


def test_cas_is_checked_under_the_lock_across_processes_on_one_directory(policy_dir: Path) -> None:
    """Two repositories on one directory (two processes' view) with the same expected version: one wins."""
    first, second = PolicyRepository(policy_dir), PolicyRepository(policy_dir)
    first.refresh()
    second.refresh()
    first.publish(POLICY_V2, who="a", expected=1)
    with pytest.raises(VersionConflictError) as info:
        second.publish(POLICY_V1, who="b", expected=1)  # its own view still says 1
    assert info.value.current == 2
    assert [v.version for v in second.history()] == [2, 1]


def test_refused_publishes_are_logged_and_counted(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Invalid, conflicting, unauthenticated and oversized publishes are logged and counted on the server."""
    caplog.set_level(logging.WARNING, logger="meshlib.controlplane")
    with (
        serve_plane(policy_dir, max_policy_bytes=1024) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        assert (
            client.put("/v1/policy", content="version: 0\n", headers=PUBLISH_HEADERS).status_code
            == 422
        )
        stale = {**PUBLISH_HEADERS, "If-Match": '"99-abc"'}
        assert client.put("/v1/policy", content=POLICY_V2, headers=stale).status_code == 412
        assert client.put("/v1/policy", content=POLICY_V2).status_code == 401
        big = "#" * 2048 + "\n" + POLICY_V2
        assert client.put("/v1/policy", content=big, headers=PUBLISH_HEADERS).status_code == 413
        refused = client.get("/readyz").json()["publishes_refused"]
    assert refused == {"invalid": 1, "conflict": 1, "denied": 1, "too_large": 1}
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("publish by alice refused (invalid)" in m for m in logged)
    assert any("(conflict)" in m and "version 99 was expected" in m for m in logged)


def test_hub_never_goes_back_and_waits_for_a_newer_version() -> None:
    """An older version is ignored; a watcher holding a newer version than the hub waits for it."""

    async def scenario() -> tuple[int, int | None, int]:
        hub = VersionHub()
        hub.set(version(5))
        assert not hub.set(version(3))
        ahead = asyncio.ensure_future(hub.wait_newer(than=6, timeout=5))
        await asyncio.sleep(0.01)
        hub.set(version(6))
        await asyncio.sleep(0.01)
        assert not ahead.done()  # 6 is what the watcher already has
        hub.set(version(7))
        got = await ahead
        timed_out = await hub.wait_newer(than=7, timeout=0.01)
        return got.version if got else 0, timed_out.version if timed_out else None, hub.watchers

    assert asyncio.run(scenario()) == (7, 7, 0)
    assert version_of_etag('"12-abcdef"') == 12
    assert version_of_etag('W/"3-x"') == 3
    assert version_of_etag('"nope"') is None


def test_a_replica_behind_the_caller_answers_304_not_its_older_version(policy_dir: Path) -> None:
    """A caller holding version 9 asks a replica at version 1: it waits, then 304, never version 1."""
    with serve_plane(policy_dir) as server, httpx.Client(base_url=server.url) as client:
        ahead = client.get("/v1/policy", headers={"If-None-Match": '"9-0123456789abcdef"'})
        assert ahead.status_code == 304
        waited = client.get(
            "/v1/policy", params={"wait": "200ms"}, headers={"If-None-Match": '"9-0123"'}
        )
        assert waited.status_code == 304
        assert client.get("/v1/policy", headers={"If-None-Match": '"0-x"'}).json()["version"] == 1


def test_slow_request_headers_are_dropped(policy_dir: Path) -> None:
    """Connections that send half a request (or nothing) are closed after header_timeout; others work."""
    with serve_plane(policy_dir, header_timeout=0.5) as server:
        sockets = []
        for n in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port))
            if n % 2:
                sock.sendall(b"GET /v1/policy HTTP/1.1\r\nHost: x\r\n")  # never finished
            sockets.append(sock)
        started = time.monotonic()
        try:
            for sock in sockets:
                sock.settimeout(5)
                assert sock.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 4
            assert httpx.get(server.url + "/v1/policy").status_code == 200
        finally:
            for sock in sockets:
                sock.close()


def test_slow_request_body_is_refused(policy_dir: Path) -> None:
    """A publish whose body trickles in slower than body_timeout is answered 408 and refused."""
    with serve_plane(policy_dir, body_timeout=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"PUT /v1/policy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pub-s3cret\r\n"
                b"Content-Length: 100\r\n\r\nversion"
            )
            sock.settimeout(5)
            assert b" 408 " in sock.recv(4096).split(b"\r\n", 1)[0] + b" "
        assert httpx.get(server.url + "/readyz").json()["publishes_refused"] == {"slow_body": 1}
