"""The embedded policy backend: a policy directory on this host's disk, for dev and single-host use.

It adapts [`PolicyRepository`][meshlib.controlplane.storage.PolicyRepository]
(blocking file I/O, run in worker threads) to the
[`PolicyBackend`][meshlib.controlplane.backend.PolicyBackend] protocol. Files
send no change notifications, so `watch()` re-reads the directory every
`poll_interval` seconds (hand edits, another process on the same directory)
and at once after a publish through this backend:

```python
backend = FilePolicyBackend("mesh/", poll_interval=0.5)
await backend.start()
async for version in backend.watch():
    print(version.version)
```

Several processes may share the directory on one host (the publish lock is
an `flock`); across hosts, use etcd (`MESH_CONTROLPLANE_STORE=etcd://...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.storage import PolicyRepository, PolicyVersion
from meshlib.errors import StoreUnavailableError
from meshlib.policy.parse import Format

__all__ = ["FilePolicyBackend"]

T = TypeVar("T")


class FilePolicyBackend:
    """Policy versions in a directory (`policy.yaml` + `history/`), watched by polling."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.repository = PolicyRepository(path, clock=clock)
        self.name = f"files:{path}"
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(call, *args)
        except OSError as exc:
            raise StoreUnavailableError(f"{self.name}: {exc}") from exc

    def _poke(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def start(self) -> None:
        """Adopt the history and the policy file as they are on disk now."""
        await self._run(self.repository.refresh)

    async def close(self) -> None:
        """Nothing to release: files are opened per operation."""

    async def current(self) -> PolicyVersion | None:
        """The newest version on disk (a hand edit of the policy file is published first)."""
        return await self._run(self.repository.refresh)

    async def get(self, version: int) -> PolicyVersion:
        """Version `version` from `history/`; `KeyError` if there is none."""
        return await self._run(self.repository.get, version)

    async def history(self, limit: int = 50) -> list[PolicyVersion]:
        """The newest `limit` versions, newest first."""
        return await self._run(self.repository.history, limit)

    async def publish(
        self,
        text: str,
        *,
        fmt: Format | None,
        who: str,
        comment: str = "",
        expected: int | None = None,
    ) -> PolicyVersion:
        """Validate and publish under the directory's lock (CAS checked under it too)."""
        version = await self._run(
            lambda: self.repository.publish(
                text, fmt=fmt, who=who, comment=comment, expected=expected
            )
        )
        self._poke()
        return version

    async def rollback(
        self, version: int, *, who: str, expected: int | None = None
    ) -> PolicyVersion:
        """Publish version `version`'s content as a new version."""
        new = await self._run(lambda: self.repository.rollback(version, who=who, expected=expected))
        self._poke()
        return new

    async def watch(self) -> AsyncIterator[PolicyVersion]:
        """The version in force, then each newer one, checking the disk every `poll_interval`."""
        last = 0
        while True:
            wake = self._wake
            version = await self.current()
            if version is not None and version.version > last:
                last = version.version
                yield version
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval)

    def status(self) -> dict[str, Any]:
        """Why the policy file on disk is not in force (a bad hand edit), if it is not."""
        error = self.repository.file_error
        return {"file_error": str(error) if error else None}
