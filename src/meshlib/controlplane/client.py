"""ControlPlaneSource: fetch, watch and cache the policy the control plane serves.

Selected by ``MESH_CONTROL_PLANE_URL`` (several URLs fail over in order).
At start it fetches the current version; if no control plane answers it
boots from the last good document cached in ``MESH_CACHE_DIR``, else from
``MESH_POLICY_FILE``, else it raises a ControlPlaneError naming all three.
Then a background thread long-polls (``If-None-Match`` + ``?wait=``) and
applies each new valid version to the store at once. A control plane that
is down, slow, or answering garbage changes nothing for the service: the
last good policy stays, the watcher retries with capped, jittered
exponential backoff (tenacity), and failures are logged and counted::

    store = PolicyStore()
    source = ControlPlaneSource(["http://cp-1:8700", "http://cp-2:8700"], cache_dir=Path(".cache"))
    source.start(store)          # blocks only for the first fetch
    ...
    source.close()

The watcher runs an asyncio loop in its own daemon thread, so ``close()``
can cancel a parked long-poll at once rather than wait for it to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import tenacity

from meshlib.controlplane.background import BackgroundLoop
from meshlib.controlplane.files import write_atomic
from meshlib.controlplane.reporter import StateReporter
from meshlib.errors import ControlPlaneError, PolicyError, SettingsError
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings

__all__ = ["ControlPlaneSource"]

logger = logging.getLogger("meshlib.controlplane")

CACHE_NAME = "controlplane-policy.json"


def _ssl_context(settings: MeshSettings) -> ssl.SSLContext | bool:
    if not any(u.startswith("https://") for u in settings.control_plane_url):
        return True
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert is not None:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"cannot build the TLS context for the control plane from MESH_TLS_CA "
            f"({settings.tls_ca}), MESH_TLS_CERT ({settings.tls_cert}) and MESH_TLS_KEY "
            f"({settings.tls_key}): {exc}"
        ) from None
    return context


class ControlPlaneSource:
    """Feeds a PolicyStore from the control plane, with failover, backoff and a disk cache."""

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
        backoff_max: float = 1.5,
        min_interval: float = 1.0,
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
        self.min_interval = min_interval
        self.reporter = reporter
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._wait_strategy = tenacity.wait_random_exponential(
            multiplier=backoff_base, max=backoff_max
        )
        self._store: PolicyStore | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop: BackgroundLoop | None = None
        self._index = 0
        self._streak = 0
        self._closing = False
        self._connecting = 0
        self._no_connects = asyncio.Event()
        self._no_connects.set()
        self.extensions = {"trace": self._trace}
        """Request extensions for every call this source (and its reporter) makes."""
        self.etag: str | None = None
        """The ETag of the last version seen (applied or rejected)."""
        self.version: int | None = None
        """The control plane version in force, or None when booted from the bootstrap file."""
        self.hash: str | None = None
        """The content hash of that version."""
        self.failures = 0
        self.rejected = 0
        self.applied = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ControlPlaneSource:
        """The source ``MESH_CONTROL_PLANE_URL`` and friends describe.

        It reports this instance's state when ``MESH_SERVICE_NAME`` is set.

        Raises:
            SettingsError: the TLS files for an https:// control plane are unusable.
        """
        token = settings.control_plane_token
        return cls(
            settings.control_plane_url,
            token=token.get_secret_value() if token else None,
            cache_dir=settings.cache_dir,
            bootstrap_file=settings.policy_file,
            verify=_ssl_context(settings),
            reporter=StateReporter.from_settings(settings) if settings.service_name else None,
        )

    # ------------------------------------------------------------------ fetching

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        # anyio >= 4.14 warns "coroutine try_connect was never awaited" when a task is
        # cancelled while connect_tcp is starting; close() waits for connects to end first.
        if event == "connection.connect_tcp.started":
            self._connecting += 1
            self._no_connects.clear()
        elif event in ("connection.connect_tcp.complete", "connection.connect_tcp.failed"):
            self._connecting -= 1
            if self._connecting <= 0:
                self._no_connects.set()

    async def _quiesce(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._no_connects.wait(), self.connect_timeout + 0.5)

    async def _not_closing(self) -> None:
        """Park forever once close() began, so no new connect starts (close cancels us)."""
        if self._closing:
            await asyncio.Event().wait()

    async def _fetch(self, url: str, etag: str | None, wait: float) -> dict[str, Any] | None:
        """One GET of the policy: the payload, None for 304, ControlPlaneError for anything unusable."""
        assert self._client is not None
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": f"{wait:g}s"} if etag and wait > 0 else {}
        timeout = httpx.Timeout(self.read_timeout + wait, connect=self.connect_timeout)
        await self._not_closing()
        try:
            response = await self._client.get(
                url + "/v1/policy",
                headers=headers,
                params=params,
                timeout=timeout,
                extensions=self.extensions,
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneError(
                f"{url}: {type(exc).__name__}: {str(exc) or 'no detail'}"
            ) from exc
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise ControlPlaneError(f"{url} answered {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise ControlPlaneError(f"{url} answered something that is not JSON: {exc}") from None
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("version"), int)
            and isinstance(payload.get("hash"), str)
            and isinstance(payload.get("document"), dict)
        ):
            raise ControlPlaneError(f"{url} answered JSON without version, hash and document")
        payload["etag"] = response.headers.get("etag") or payload.get("etag")
        return payload

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

    async def _first_fetch(self) -> list[str]:
        """Try every URL once; returns the errors (empty when a version was applied)."""
        self._client = httpx.AsyncClient(headers=self._headers, verify=self._verify)
        errors = []
        for i, url in enumerate(self.urls):
            try:
                payload = await self._fetch(url, None, 0.0)
            except ControlPlaneError as exc:
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
            text = self.bootstrap_file.read_text(encoding="utf-8")
            self._store.update_from_text(text, source=str(self.bootstrap_file))
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
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
        self._loop = BackgroundLoop("meshlib-control-plane")
        budget = len(self.urls) * (self.connect_timeout + self.read_timeout) + 1.0
        try:
            errors = self._loop.submit(self._first_fetch()).result(budget)
        except concurrent.futures.TimeoutError:
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
        self._loop.submit(self._watch())
        if self.reporter is not None:
            self._loop.submit(
                self.reporter.run(
                    self._client_or_new(),
                    self.urls,
                    store,
                    before_send=self._not_closing,
                    extensions=self.extensions,
                )
            )

    def _client_or_new(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers, verify=self._verify)
        return self._client

    async def _poll(self) -> None:
        """One long-poll against the current URL; rotates to the next URL on failure."""
        url = self.urls[self._index]
        started = time.monotonic()
        try:
            payload = await self._fetch(url, self.etag, self.wait)
        except ControlPlaneError:
            self._index = (self._index + 1) % len(self.urls)
            self._streak += 1
            raise
        if self._streak:
            logger.warning("control plane %s answers again after %d failures", url, self._streak)
            self._streak = 0
        if payload is not None and payload.get("etag") and payload.get("etag") == self.etag:
            payload = None  # the version we have, from a server that ignores If-None-Match
        if payload is None:
            # A server that answers at once without holding the request must not make us spin.
            await asyncio.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))
        elif self._apply(payload, url):
            await self._save(payload, url)

    def _failed(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.failures += 1
        self.last_error = str(exc)
        level = logging.WARNING if self._streak == 1 else logging.DEBUG
        logger.log(
            level,
            "control plane watch failed (attempt %d), keeping policy in force: %s",
            state.attempt_number,
            exc,
        )

    async def _watch(self) -> None:
        retrying = tenacity.AsyncRetrying(
            wait=self._wait_strategy,
            retry=tenacity.retry_if_exception_type(ControlPlaneError),
            before_sleep=self._failed,
            reraise=True,
        )
        while True:
            try:
                async for attempt in retrying.copy():
                    with attempt:
                        await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the watch: log it and go on
                logger.exception("control plane watcher failed")
                await asyncio.sleep(1.0)

    def close(self) -> None:
        """Stop watching and reporting, and close the HTTP client; idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self._closing = True
        client = self._client

        async def cleanup() -> None:
            if client is not None:
                await client.aclose()

        loop.stop(self._quiesce(), cleanup())
        self._client = None
