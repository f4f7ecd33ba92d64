"""Watch a service's live instances on the control plane's registry (long-poll), as endpoints.

The same pattern as the policy watch: ``GET /v1/registry/<service>`` with
``If-None-Match`` and ``?wait=``, so a change (a registration, a drain, a
lapsed lease) reaches callers at once, and an idle watch costs one parked
request. An error keeps the endpoints last known, is counted, and is retried
with backoff, failing over between control plane URLs::

    watcher = RegistryWatcher("payments", "http://controlplane:8700", on_change=print)
    watcher.start()
    watcher.wait_synced(2.0)
    watcher.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from meshlib.discovery.registry import request_any
from meshlib.policy.model import Endpoint

__all__ = ["RegistryWatcher", "endpoints_from_listing"]

logger = logging.getLogger("meshlib.discovery")


def endpoints_from_listing(listing: Any) -> tuple[Endpoint, ...]:
    """Endpoints from a ``GET /v1/registry/<service>`` body; malformed instances are skipped."""
    found: list[Endpoint] = []
    for item in listing.get("instances", ()) if isinstance(listing, dict) else ():
        try:
            found.append(Endpoint(url=item["url"], zone=item.get("zone")))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring a registry instance that is not an endpoint: %s", exc)
    return tuple({e.url: e for e in found}.values())


class RegistryWatcher:
    """Follows one service's registered instances in a daemon thread."""

    def __init__(
        self,
        service: str,
        control_plane: str | Sequence[str],
        on_change: Callable[[tuple[Endpoint, ...]], None],
        *,
        token: str | None = None,
        wait: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.service = service
        self.bases = (control_plane,) if isinstance(control_plane, str) else tuple(control_plane)
        self.wait = wait
        self.endpoints: tuple[Endpoint, ...] | None = None
        self.etag: str | None = None
        self.errors = 0
        self.consecutive_errors = 0
        self.last_error: str | None = None
        self._on_change = on_change
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._own_client = client is None
        self._client = client or httpx.Client(trust_env=False)
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, wait: float | None = None) -> bool:
        """One (long-)poll; True when the endpoints changed. Errors are counted, not raised."""
        wait = self.wait if wait is None else wait
        headers = dict(self._headers)
        if self.etag:
            headers["if-none-match"] = self.etag
        try:
            response = request_any(
                self._client,
                self.bases,
                "GET",
                f"/v1/registry/{self.service}",
                params={"wait": f"{wait:g}s"} if self.etag else None,
                headers=headers,
                timeout=wait + 10.0,
            )
        except httpx.HTTPError as exc:
            return self._failed(repr(exc))
        if response.status_code == 304:
            self.consecutive_errors = 0
            return False
        if not response.is_success:
            return self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            endpoints = endpoints_from_listing(response.json())
        except ValueError as exc:
            return self._failed(f"not JSON: {exc}")
        self.consecutive_errors = 0
        self.etag = response.headers.get("etag")
        self._synced.set()
        if endpoints == self.endpoints:
            return False
        self.endpoints = endpoints
        logger.info("%s: the registry lists %d instances", self.service, len(endpoints))
        self._on_change(endpoints)
        return True

    def _failed(self, error: str) -> bool:
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a callback bug must not stop the watch
                logger.exception("%s: applying the registry's answer failed", self.service)
                self.consecutive_errors += 1
            if self.consecutive_errors:
                self._stop.wait(min(0.1 * 2 ** min(self.consecutive_errors, 6), 5.0))

    def start(self) -> None:
        """Start watching in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"meshlib-registry-watch:{self.service}", daemon=True
            )
            self._thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first answer; True if it came."""
        return self._synced.wait(timeout)

    def close(self) -> None:
        """Stop watching (waits for a parked long-poll up to ``wait``) and close our client."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.wait + 11.0)
        if self._own_client:
            self._client.close()
