"""VersionHub: parked watchers wake together on a new version, or time out with the old one."""

from __future__ import annotations

import asyncio

from meshlib.controlplane.storage import PolicyVersion
from meshlib.controlplane.watch import VersionHub


def version(n: int) -> PolicyVersion:
    """A PolicyVersion numbered n."""
    return PolicyVersion(
        n, f"sha256:{n:064d}", "version: 1\n", "yaml", "t", 0.0, "", {"version": 1}
    )


def test_new_version_wakes_every_watcher() -> None:
    """Many watchers parked on version 1 all get version 2 when it is set."""

    async def scenario() -> list[int]:
        hub = VersionHub()
        hub.set(version(1))
        etag = version(1).etag
        waiters = [asyncio.ensure_future(hub.wait(etag, 30)) for _ in range(50)]
        await asyncio.sleep(0)
        assert hub.watchers == 50
        hub.set(version(2))
        results = await asyncio.gather(*waiters)
        return [r.version for r in results if r is not None]

    assert asyncio.run(scenario()) == [2] * 50


def test_wait_times_out_with_the_same_version_and_stale_etag_returns_at_once() -> None:
    """A wait that sees no change returns the same version; an old ETag gets the new one at once."""

    async def scenario() -> tuple[int, int, int]:
        hub = VersionHub()
        hub.set(version(1))
        same = await hub.wait(version(1).etag, 0.01)
        hub.set(version(2))
        newer = await hub.wait(version(1).etag, 30)
        assert same is not None
        assert newer is not None
        return same.version, newer.version, hub.watchers

    assert asyncio.run(scenario()) == (1, 2, 0)


def test_setting_the_same_version_wakes_nobody() -> None:
    """Re-setting the current version is a no-op."""
    hub = VersionHub()
    assert hub.set(version(1))
    assert not hub.set(version(1))
    assert not hub.set(None)
