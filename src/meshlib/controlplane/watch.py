"""The long-poll hub: watchers wait on one event per version, so idle watchers cost one future each.

A watcher parks on the current version's `asyncio.Event`; a newer version
sets that event (waking every watcher at once) and installs a fresh one.
There is no per-watcher timer task and no polling. Versions only move
forward: an older version offered to the hub (a late event, a replica that
lagged) is ignored, so no watcher is ever answered with a version older than
one this replica already served:

```python
hub = VersionHub()
hub.set(version)                                   # in the event loop's thread
newer = await hub.wait_newer(than=3, timeout=30.0)  # the version in force afterwards
hub.close()                                        # shutting down: wake everyone now
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meshlib.controlplane.storage import PolicyVersion

__all__ = ["VersionHub", "version_of_etag"]

logger = logging.getLogger("meshlib.controlplane")


def version_of_etag(etag: str) -> int | None:
    """The version number in one of our ETags (`"7-ab12..."`), or None if it is not one."""
    number, dash, _ = etag.strip().removeprefix("W/").strip('"').partition("-")
    return int(number) if dash and number.isdigit() else None


class VersionHub:
    """The version in force and an event per version for the watchers waiting on it."""

    def __init__(self) -> None:
        self._current: PolicyVersion | None = None
        self._event = asyncio.Event()
        self.closed = False
        """True once the replica is shutting down: waits return at once."""
        self.watchers = 0
        """How many long-polls are parked right now."""

    @property
    def current(self) -> PolicyVersion | None:
        """The version in force, or None before the first."""
        return self._current

    def set(self, version: PolicyVersion | None) -> bool:
        """Make `version` current and wake its watchers; False if it is not newer."""
        current = self._current
        if version is None or (current is not None and version.version <= current.version):
            if version is not None and current is not None and version.version < current.version:
                logger.warning(
                    "ignoring policy version %d: version %d is already served",
                    version.version,
                    current.version,
                )
            return False
        self._current = version
        self._wake()
        return True

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_newer(self, than: int, timeout: float) -> PolicyVersion | None:
        """Wait up to `timeout` seconds for a version newer than `than`; the version in force then."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            current = self._current
            if current is not None and current.version > than:
                return current
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            event = self._event
            self.watchers += 1
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
            finally:
                self.watchers -= 1
        return self._current

    async def wait(self, etag: str | None, timeout: float) -> PolicyVersion | None:
        """Wait up to `timeout` seconds while the version in force has ETag `etag`."""
        current = self._current
        if timeout <= 0 or (current is not None and current.etag != etag):
            return current
        than = current.version if current is not None else 0
        return await self.wait_newer(than, timeout)

    def close(self) -> None:
        """Wake every parked watcher now and let no new one park (the replica is stopping)."""
        self.closed = True
        self._wake()
