"""ControlPlaneSource: fetch, watch and cache the policy the control plane serves.

Selected by `MESH_CONTROL_PLANE_URL` (several URLs fail over in order).
At start it fetches the current version; if no control plane answers it
boots from the last good document cached in `MESH_CACHE_DIR`, else from
`MESH_POLICY_FILE`, else it raises a ControlPlaneError naming all three.
Then it long-polls (`If-None-Match` + `?wait=`) on the process's
[`ControlPlaneLoop`][meshlib.controlplane.connection.ControlPlaneLoop] and
applies each new valid version to the store at once.

It does not trust what it is sent. One fetch is bounded in size
(`MESH_CONTROL_PLANE_MAX_BYTES`, read as a stream and abandoned past the
limit) and in total time (`wait` + `MESH_CONTROL_PLANE_READ_TIMEOUT`, so a
server sending a byte every few seconds cannot hold it); a version older
than the one in force is refused (a rollback is a new, higher version), so a
replica with a stale view cannot move a service back. A failure of any kind
keeps the last good policy, is counted (`meshlib.controlplane.fetch_failures`),
logged at WARNING at most every 30 s for as long as it lasts, and retried with
capped, jittered exponential backoff (tenacity), on the next URL:

```python
store = PolicyStore()
source = ControlPlaneSource(["http://cp-1:8700", "http://cp-2:8700"], cache_dir=Path(".cache"))
source.start(store)          # blocks only for the first fetch
...
source.close()
```
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import tenacity

from meshlib.controlplane.backoff import Backoff
from meshlib.controlplane.connection import (
    ControlPlaneLoop,
    control_plane_client,
    control_plane_verify,
)
from meshlib.controlplane.files import write_atomic
from meshlib.controlplane.reporter import StateReporter
from meshlib.controlplane.telemetry import RateLimitedLog, fetch_failed
from meshlib.errors import ControlPlaneError, PolicyError
from meshlib.policy.limits import read_policy_file
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings

__all__ = ["ControlPlaneSource", "FetchFailed"]

logger = logging.getLogger("meshlib.controlplane")

CACHE_NAME = "controlplane-policy.json"


class FetchFailed(ControlPlaneError):
    """One fetch failed; `outcome` names how, for the failure metric."""

    def __init__(self, message: str, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class ControlPlaneSource:
    """Feeds a PolicyStore from the control plane, with failover, backoff, bounds and a disk cache."""

    name = "control-plane"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: str | None = None,
        cache_dir: Path | None = None,
        bootstrap_file: Path | None = None,
        wait: float = 30.0,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        max_bytes: int = 8 << 20,
        min_interval: float = 1.0,
        warn_every: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        reporter: StateReporter | None = None,
    ) -> None:
        if not urls:
            raise ValueError("ControlPlaneSource needs at least one control plane URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.name = "control-plane " + ", ".join(self.urls)
        self.cache_file = cache_dir / CACHE_NAME if cache_dir is not None else None
        self.bootstrap_file = bootstrap_file
        self.wait = wait
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_bytes = max_bytes
        self.min_interval = min_interval
        self.reporter = reporter
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._backoff = Backoff(
            tenacity.wait_random_exponential(multiplier=backoff_base, max=backoff_max)
        )
        self._warn = RateLimitedLog(logger, every=warn_every)
        self._store: PolicyStore | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop: ControlPlaneLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._index = 0
        self.etag: str | None = None
        """The ETag of the last version seen (applied or rejected)."""
        self.version: int | None = None
        """The control plane version in force, or None when booted from the bootstrap file."""
        self.hash: str | None = None
        """The content hash of that version."""
        self.failures = 0
        """Failed fetches since start (unreachable, slow, too large, garbage, older)."""
        self.rejected = 0
        """Served documents the policy model refused."""
        self.applied = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ControlPlaneSource:
        """The source `MESH_CONTROL_PLANE_*` and friends describe.

        It reports this instance's state when `MESH_SERVICE_NAME` is set.

        Raises:
            SettingsError: the TLS files for an https:// control plane are unusable.
        """
        token = settings.control_plane_token
        return cls(
            settings.control_plane_url,
            token=token.get_secret_value() if token else None,
            cache_dir=settings.cache_dir,
            bootstrap_file=settings.policy_file,
            wait=settings.control_plane_wait,
            read_timeout=settings.control_plane_read_timeout,
            backoff_max=settings.control_plane_backoff_max,
            max_bytes=settings.control_plane_max_bytes,
            verify=control_plane_verify(settings),
            reporter=StateReporter.from_settings(settings) if settings.service_name else None,
        )

    # ------------------------------------------------------------------ fetching

    async def _read(self, url: str, etag: str | None, wait: float) -> dict[str, Any] | None:
        assert self._client is not None
        assert self._loop is not None
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": f"{wait:g}s"} if etag and wait > 0 else {}
        timeout = httpx.Timeout(self.read_timeout + wait, connect=self.connect_timeout)
        request = self._client.build_request(
            "GET",
            url + "/v1/policy",
            headers=headers,
            params=params,
            timeout=timeout,
            extensions=self._loop.extensions,
        )
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code == 304:
                return None
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchFailed(
                    f"{url} sent {declared} bytes, more than the {self.max_bytes}-byte limit",
                    "too_large",
                )
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchFailed(
                        f"{url} sent more than the {self.max_bytes}-byte limit", "too_large"
                    )
        finally:
            await response.aclose()
        if response.status_code != 200:
            text = bytes(body[:200]).decode("utf-8", "replace")
            raise FetchFailed(f"{url} answered {response.status_code}: {text}", "bad_answer")
        try:
            payload = json.loads(bytes(body))
        except ValueError as exc:
            raise FetchFailed(
                f"{url} answered something that is not JSON: {exc}", "bad_answer"
            ) from None
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("version"), int)
            and isinstance(payload.get("hash"), str)
            and isinstance(payload.get("document"), dict)
        ):
            raise FetchFailed(
                f"{url} answered JSON without version, hash and document", "bad_answer"
            )
        payload["etag"] = response.headers.get("etag") or payload.get("etag")
        return payload

    async def _fetch(self, url: str, etag: str | None, wait: float) -> dict[str, Any] | None:
        """One GET of the policy: the payload, None for 304, FetchFailed for anything unusable."""
        budget = self.connect_timeout + self.read_timeout + wait
        try:
            return await asyncio.wait_for(self._read(url, etag, wait), budget)
        except asyncio.TimeoutError:
            raise FetchFailed(
                f"{url}: no complete answer within {budget:g}s (a slow or stalled server)",
                "timeout",
            ) from None
        except httpx.HTTPError as exc:
            outcome = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
            raise FetchFailed(
                f"{url}: {type(exc).__name__}: {str(exc) or 'no detail'}", outcome
            ) from exc

    def _check_newer(self, payload: dict[str, Any], url: str) -> None:
        """Refuse a version older than the one in force (a stale replica, a failover)."""
        if self.version is not None and payload["version"] < self.version:
            raise FetchFailed(
                f"{url} serves version {payload['version']}, older than version {self.version} in "
                "force: refused (a replica with a stale view; a rollback would be a newer version)",
                "older",
            )

    def _apply(self, payload: dict[str, Any], source: str) -> bool:
        """Hand a payload to the store; a document the model refuses is logged and counted."""
        assert self._store is not None
        self.etag = payload.get("etag")
        revision = str(payload["version"])
        if payload["version"] == self.version and payload["hash"] != self.hash:
            # Same number, other content: the server's history was reset. Still apply it.
            revision += "-" + payload["hash"].removeprefix("sha256:")[:8]
        try:
            changed = self._store.update_from_data(
                payload["document"], source=source, revision=revision
            )
        except PolicyError:
            self.rejected += 1  # the store logged it; the last good policy stays
            fetch_failed("invalid")
            return False
        self.version = payload["version"]
        self.hash = payload["hash"]
        self.applied += int(changed)
        return True

    async def _save(self, payload: dict[str, Any], url: str) -> None:
        if self.cache_file is None:
            return
        data = json.dumps({"url": url, "saved_at": time.time(), "policy": payload}).encode()
        try:
            await asyncio.to_thread(write_atomic, self.cache_file, data)
        except OSError as exc:
            logger.warning("cannot cache the policy in %s: %s", self.cache_file, exc)

    def _new_client(self) -> httpx.AsyncClient:
        return control_plane_client(self._verify, headers=self._headers)

    async def _first_fetch(self) -> list[str]:
        """Try every URL once; returns the errors (empty when a version was applied)."""
        self._client = self._new_client()
        errors = []
        for i, url in enumerate(self.urls):
            try:
                payload = await self._fetch(url, None, 0.0)
            except FetchFailed as exc:
                self._count(exc)
                errors.append(str(exc))
                continue
            assert payload is not None
            if self._apply(payload, url):
                self._index = i
                await self._save(payload, url)
                return []
            errors.append(
                f"{url} served a policy that does not validate: {self._store and self._store.last_error}"
            )
        return errors

    # ------------------------------------------------------------------ fallbacks

    def _boot_from_cache(self) -> str | None:
        if self.cache_file is None or not self.cache_file.exists():
            return f"no cached policy at {self.cache_file}" if self.cache_file else "no cache_dir"
        try:
            payload = json.loads(self.cache_file.read_text(encoding="utf-8"))["policy"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"the cached policy {self.cache_file} is unreadable: {exc}"
        if not self._apply(payload, f"cache {self.cache_file}"):
            return f"the cached policy {self.cache_file} does not validate"
        logger.warning("control plane unreachable: serving cached policy version %s", self.version)
        return None

    def _boot_from_file(self) -> str | None:
        assert self._store is not None
        if self.bootstrap_file is None:
            return "no bootstrap policy file (MESH_POLICY_FILE)"
        try:
            text = read_policy_file(self.bootstrap_file)
            self._store.update_from_text(text, source=str(self.bootstrap_file))
        except PolicyError as exc:
            return f"bootstrap policy file {self.bootstrap_file}: {exc}"
        logger.warning("control plane unreachable: serving bootstrap file %s", self.bootstrap_file)
        return None

    # ------------------------------------------------------------------ lifecycle

    def start(self, store: PolicyStore) -> None:
        """Fetch (or fall back to the cache, then the bootstrap file), then watch in the background.

        Raises:
            ControlPlaneError: no control plane answered and there is no cache or bootstrap file.
        """
        self._store = store
        self._loop = loop = ControlPlaneLoop.acquire()
        budget = len(self.urls) * (self.connect_timeout + self.read_timeout) + 1.0
        try:
            errors = loop.call(self._first_fetch(), budget)
        except TimeoutError:
            errors = [f"no answer within {budget:g}s"]
        if errors:
            for problem in errors:
                logger.warning("control plane fetch failed: %s", problem)
            cache = self._boot_from_cache()
            bootstrap = self._boot_from_file() if cache else None
            if cache and bootstrap:
                self.close()
                raise ControlPlaneError(
                    "no policy: the control plane did not serve one ("
                    + "; ".join(errors)
                    + f"), {cache}, and {bootstrap}. Start the control plane, fix "
                    "MESH_CONTROL_PLANE_URL, or set MESH_POLICY_FILE to a local bootstrap policy."
                )
        if self._client is None:
            self._client = self._new_client()
        self._tasks.append(loop.start(self._watch(), name="meshlib-policy-watch"))
        if self.reporter is not None:
            self._tasks.append(
                loop.start(
                    self.reporter.run(self._client, self.urls, store, extensions=loop.extensions),
                    name="meshlib-reporter",
                )
            )

    async def _poll(self) -> None:
        """One long-poll against the current URL; FetchFailed (and the next URL) on failure."""
        url = self.urls[self._index]
        started = time.monotonic()
        payload = await self._fetch(url, self.etag, self.wait)
        if payload is not None and payload.get("etag") and payload.get("etag") == self.etag:
            payload = None  # the version we have, from a server that ignores If-None-Match
        if payload is not None:
            self._check_newer(payload, url)
        if self._backoff.failures:
            logger.warning(
                "control plane %s answers again after %d failures", url, self._backoff.failures
            )
            self._warn.reset()
        self._backoff.succeeded()
        if payload is None:
            # A server that answers at once without holding the request must not make us spin.
            await asyncio.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))
        elif self._apply(payload, url):
            await self._save(payload, url)

    def _count(self, exc: FetchFailed) -> None:
        self.failures += 1
        self.last_error = str(exc)
        fetch_failed(exc.outcome)

    async def _watch(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except FetchFailed as exc:
                self._count(exc)
                self._index = (self._index + 1) % len(self.urls)
                delay = self._backoff.failed()
                self._warn.warning(
                    "control plane fetch failed (%d in a row), keeping policy version %s in "
                    "force; retrying in %.1fs: %s",
                    self._backoff.failures,
                    self.version if self.version is not None else "from the bootstrap file",
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
            except Exception:  # a bug here must not end the watch: log it and go on
                logger.exception("control plane watcher failed")
                await asyncio.sleep(1.0)

    def close(self) -> None:
        """Stop watching and reporting, and close the HTTP client; idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            loop.cancel(task)
        client, self._client = self._client, None
        if client is not None:
            try:
                loop.call(client.aclose(), 5.0)
            except Exception:
                logger.debug("closing the control-plane client failed", exc_info=True)
        loop.release()
