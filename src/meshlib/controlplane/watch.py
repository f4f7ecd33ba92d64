"""The long-poll hub: watchers wait on one event per version, so idle watchers cost one future each.

A watcher that already holds the current ETag parks on the current
version's :class:`asyncio.Event`; a new version sets that event (waking every
watcher at once) and installs a fresh one. There is no per-watcher timer
task and no polling::

    hub = VersionHub()
    hub.set(version)                                    # in the event loop's thread
    newer = await hub.wait(etag='"3-ab12..."', timeout=30.0)   # the version in force afterwards
"""

from __future__ import annotations

import asyncio

from meshlib.controlplane.storage import PolicyVersion

__all__ = ["VersionHub"]


class VersionHub:
    """The version in force and an event per version for the watchers waiting on it."""

    def __init__(self) -> None:
        self._current: PolicyVersion | None = None
        self._event = asyncio.Event()
        self.watchers = 0
        """How many long-polls are parked right now."""

    @property
    def current(self) -> PolicyVersion | None:
        """The version in force, or None before the first."""
        return self._current

    def set(self, version: PolicyVersion | None) -> bool:
        """Make ``version`` current and wake its watchers; False if it is already current."""
        if version is None or (self._current is not None and self._current.etag == version.etag):
            return False
        self._current = version
        event, self._event = self._event, asyncio.Event()
        event.set()
        return True

    async def wait(self, etag: str | None, timeout: float) -> PolicyVersion | None:
        """Wait up to ``timeout`` seconds while the current version's ETag equals ``etag``."""
        current = self._current
        if timeout <= 0 or (current is not None and current.etag != etag):
            return current
        event = self._event
        self.watchers += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.watchers -= 1
        return self._current
