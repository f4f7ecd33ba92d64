"""Watch a service's live instances on the control plane's registry (long-poll), as endpoints.

The same pattern as the policy watch: `GET /v1/registry/<service>` with
`If-None-Match` and `?wait=`, so a change (a registration, a drain, a
lapsed lease) reaches callers at once, and an idle watch costs one parked
request. An error keeps the endpoints last known, is counted, and is retried
with tenacity's jittered backoff, failing over between control plane URLs:

```python
watcher = RegistryWatcher("payments", "http://controlplane:8700", on_change=print)
watcher.start()
watcher.wait_synced(2.0)
watcher.close()
```

The watch is a task on the process's
[`ControlPlaneLoop`][meshlib.controlplane.connection.ControlPlaneLoop], beside
the policy watch, the heartbeats and the reports; `close()` cancels a parked
long-poll at once. `on_change` is called on that loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import tenacity

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.backoff import Backoff
from meshlib.controlplane.connection import ControlPlaneLoop, control_plane_client
from meshlib.policy.model import Endpoint

__all__ = ["RegistryWatcher", "endpoints_from_listing"]

logger = logging.getLogger("meshlib.discovery")


def endpoints_from_listing(listing: Any) -> tuple[Endpoint, ...]:
    """Endpoints from a `GET /v1/registry/<service>` body; malformed instances are skipped."""
    found: list[Endpoint] = []
    for item in listing.get("instances", ()) if isinstance(listing, dict) else ():
        try:
            found.append(Endpoint(url=item["url"], zone=item.get("zone")))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring a registry instance that is not an endpoint: %s", exc)
    return tuple({e.url: e for e in found}.values())


class RegistryWatcher:
    """Follows one service's registered instances; `on_change(endpoints)` on every change.

    `verify` is what httpx's `verify=` takes (an `ssl.SSLContext` for a
    control plane behind mTLS). When the registry restarts (its `boot` id
    changes) it lists nobody until the instances' next heartbeats; the
    instances known before are kept for `grace` seconds meanwhile, so a
    control-plane restart never empties a service.
    """

    def __init__(
        self,
        service: str,
        control_plane: str | Sequence[str],
        on_change: Callable[[tuple[Endpoint, ...]], None],
        *,
        token: str | None = None,
        wait: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        grace: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.service = service
        self.bases = (control_plane,) if isinstance(control_plane, str) else tuple(control_plane)
        if not self.bases:
            raise ValueError("RegistryWatcher needs at least one control plane URL")
        self.wait = wait
        self.verify = verify
        self.grace = grace
        self.clock = clock
        self._boot: str | None = None
        self._listed: tuple[Endpoint, ...] = ()
        self._carried: tuple[Endpoint, ...] = ()
        self._carry_until = 0.0
        self.endpoints: tuple[Endpoint, ...] | None = None
        self.etag: str | None = None
        self.errors = 0
        self.consecutive_errors = 0
        self.last_error: str | None = None
        self._on_change = on_change
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.AsyncClient | None = None
        self._synced = threading.Event()
        self._loop: ControlPlaneLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(tenacity.wait_random_exponential(multiplier=0.1, max=5.0))
        self._closed = False

    def _request(self, wait: float) -> dict[str, Any]:
        carrying = self._carry_until - self.clock.monotonic()
        if self._carried and carrying > 0:  # come back when the grace period ends
            wait = min(wait, carrying + 0.01)
        headers = dict(self._headers)
        if self.etag:
            headers["if-none-match"] = self.etag
        return {
            "params": {"wait": f"{wait:g}s"} if self.etag else None,
            "headers": headers,
            "timeout": wait + 10.0,
        }

    def _path(self, base: str) -> str:
        return f"{base.rstrip('/')}/v1/registry/{self.service}"

    def _handle(self, response: httpx.Response) -> bool:
        """Apply one answer; True when the endpoints changed."""
        if response.status_code == 304:
            self.consecutive_errors = 0
            return self._publish()
        if not response.is_success:
            return self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            listing = response.json()
            listed = endpoints_from_listing(listing)
        except ValueError as exc:
            return self._failed(f"not JSON: {exc}")
        self.consecutive_errors = 0
        self.etag = response.headers.get("etag")
        boot = listing.get("boot") if isinstance(listing, dict) else None
        if boot is not None and self._boot is not None and boot != self._boot and self._listed:
            # A restarted control plane (or another replica) knows nobody until the instances'
            # next heartbeats: keep the ones we knew for a grace period rather than drop them all.
            logger.warning(
                "%s: the registry restarted; keeping %d known instances for %gs while they "
                "register again",
                self.service,
                len(self._listed),
                self.grace,
            )
            self._carried = self._listed
            self._carry_until = self.clock.monotonic() + self.grace
        self._boot = boot
        self._listed = listed
        self._synced.set()
        return self._publish()

    def _publish(self) -> bool:
        """Tell `on_change` about the listed endpoints (plus those carried over a restart)."""
        endpoints = self._listed
        if self._carried:
            if self.clock.monotonic() < self._carry_until:
                known = {e.url for e in endpoints}
                endpoints += tuple(e for e in self._carried if e.url not in known)
            else:
                self._carried = ()
        if not self._synced.is_set() or endpoints == self.endpoints:
            return False
        self.endpoints = endpoints
        logger.info("%s: the registry lists %d instances", self.service, len(endpoints))
        self._on_change(endpoints)
        return True

    def _failed(self, error: str) -> bool:
        if self._closed:  # the read close() interrupted
            return False
        self.errors += 1
        self.consecutive_errors += 1
        self.last_error = error
        logger.warning(
            "%s: watching the registry failed (%d in a row), keeping the last known endpoints: %s",
            self.service,
            self.consecutive_errors,
            error,
        )
        return False

    async def _poll(self, wait: float) -> bool:
        client = self._client
        if client is None:
            client = self._client = control_plane_client(
                self.verify, limits=httpx.Limits(max_connections=2)
            )
        assert self._loop is not None
        kwargs = self._request(wait)
        error: Exception | None = None
        for base in self.bases:
            try:
                response = await asyncio.wait_for(
                    client.get(self._path(base), extensions=self._loop.extensions, **kwargs),
                    kwargs["timeout"] + 5.0,
                )
            except (httpx.HTTPError, asyncio.TimeoutError) as exc:
                error = exc
            else:
                return self._handle(response)
        return self._failed(repr(error))

    def _acquire(self) -> ControlPlaneLoop:
        if self._loop is None:
            self._loop = ControlPlaneLoop.acquire()
        return self._loop

    def poll(self, wait: float | None = None) -> bool:
        """One (long-)poll now, from a thread; True when the endpoints changed. Errors are counted."""
        wait = self.wait if wait is None else wait
        return self._acquire().call(self._poll(wait), wait + 20.0)

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._poll(self.wait)
            except asyncio.CancelledError:
                raise
            except Exception:  # a callback bug must not stop the watch
                logger.exception("%s: applying the registry's answer failed", self.service)
                self.consecutive_errors += 1
            if self.consecutive_errors:
                await asyncio.sleep(self._backoff.failed())
            else:
                self._backoff.succeeded()

    def start(self) -> None:
        """Start watching in the background (idempotent)."""
        if self._task is None and not self._closed:
            self._task = self._acquire().start(
                self._run(), name=f"meshlib-registry-watch:{self.service}"
            )

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first answer; True if it came."""
        return self._synced.wait(timeout)

    def close(self) -> None:
        """Stop watching, cancelling a parked long-poll at once; idempotent."""
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is None:
            return
        task, self._task = self._task, None
        loop.cancel(task)
        client, self._client = self._client, None
        if client is not None:
            try:
                loop.call(client.aclose(), 5.0)
            except Exception:
                logger.debug("closing the registry watch client failed", exc_info=True)
        loop.release()
