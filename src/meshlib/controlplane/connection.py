"""The one background loop that owns every conversation a process has with the control plane.

The policy watch ([`ControlPlaneSource`][meshlib.controlplane.client.ControlPlaneSource]),
the registry watches ([`RegistryWatcher`][meshlib.discovery.watch.RegistryWatcher]),
the registration heartbeats ([`Registrar`][meshlib.discovery.registry.Registrar])
and the state reports ([`StateReporter`][meshlib.controlplane.reporter.StateReporter])
all run as tasks on one asyncio loop in one daemon thread, shared by the
process and stopped when its last user lets go. They back off with tenacity
([`Backoff`][meshlib.controlplane.backoff.Backoff]), fail over between the
control plane's URLs with [`request_any`][meshlib.controlplane.connection.request_any],
and verify it with [`control_plane_verify`][meshlib.controlplane.connection.control_plane_verify],
each over an httpx client from
[`control_plane_client`][meshlib.controlplane.connection.control_plane_client].

Sync callers (a constructor, `close()`, a test's `poll()`) use
[`call`][meshlib.controlplane.connection.ControlPlaneLoop.call]; a task is
cancelled with [`cancel`][meshlib.controlplane.connection.ControlPlaneLoop.cancel],
which first lets TCP connects in flight finish (anyio 4.14+ warns "coroutine
... was never awaited" when a task is cancelled while `connect_tcp` starts):

```python
loop = ControlPlaneLoop.acquire()
task = loop.start(watch_forever())          # a task on the shared loop
answer = loop.call(fetch_once(), timeout=5)  # run and wait, from any other thread
loop.cancel(task)
loop.release()                               # the thread stops with the last user
```
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import httpx

from meshlib.errors import SettingsError
from meshlib.settings import MeshSettings

__all__ = ["ControlPlaneLoop", "control_plane_client", "control_plane_verify", "request_any"]

logger = logging.getLogger("meshlib.controlplane")

T = TypeVar("T")


def control_plane_verify(settings: MeshSettings) -> ssl.SSLContext | bool:
    """How to verify an `https://` control plane: `MESH_TLS_CA`, and `MESH_TLS_CERT`/`_KEY` for mTLS.

    Raises:
        SettingsError: the TLS files are unusable.
    """
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


_default_context: ssl.SSLContext | None = None


def control_plane_client(verify: ssl.SSLContext | bool, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for control-plane conversations, over meshlib's aiohttp pool.

    aiohttp's pool costs a fraction of httpcore's CPU per request (see the
    benchmarks page), which matters when a publish wakes every watcher at
    once. `verify=True` shares one default TLS context per process: building
    one loads the CA bundle (tens of ms), once per client otherwise.
    `kwargs` go to `httpx.AsyncClient` (headers, timeout); proxies from the
    environment are never used.
    """
    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    global _default_context
    if verify is True:
        if _default_context is None:
            _default_context = httpx.create_ssl_context()
        verify = _default_context
    limits = kwargs.pop("limits", httpx.Limits(max_connections=10, max_keepalive_connections=10))
    transport = AiohttpTransport(verify=verify, limits=limits, trust_env=False)
    return httpx.AsyncClient(transport=transport, trust_env=False, **kwargs)


async def request_any(
    client: httpx.AsyncClient, bases: Sequence[str], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Send to the first control plane in `bases` that answers at all (failing over on errors)."""
    error: httpx.HTTPError | None = None
    for base in bases:
        try:
            return await client.request(method, base.rstrip("/") + path, **kwargs)
        except httpx.HTTPError as exc:
            error = exc
    assert error is not None, "no control plane URL given"
    raise error


class ControlPlaneLoop:
    """An asyncio loop in a daemon thread, shared by every control-plane user of the process."""

    _shared: ClassVar[ControlPlaneLoop | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self._connecting = 0
        self._no_connects = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="meshlib-control-plane", daemon=True)
        self._thread.start()
        self.extensions: dict[str, Any] = {"trace": self._trace}
        """Request extensions for every control-plane request (they track connects in flight)."""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._no_connects.set()
        self.loop.run_forever()

    @classmethod
    def acquire(cls) -> ControlPlaneLoop:
        """The process's loop (started on first use); pair with [`release`][meshlib.controlplane.connection.ControlPlaneLoop.release]."""
        with cls._lock:
            shared = cls._shared
            if shared is None or not shared._thread.is_alive():
                shared = cls._shared = cls()
            shared.users += 1
            return shared

    def release(self) -> None:
        """Let go; the last user's release stops the loop and its thread."""
        with ControlPlaneLoop._lock:
            self.users -= 1
            if self.users > 0:
                return
            if ControlPlaneLoop._shared is self:
                ControlPlaneLoop._shared = None
        self._shutdown()

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs on this loop's thread (where blocking calls would deadlock)."""
        return threading.current_thread() is self._thread

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            self._connecting += 1
            self._no_connects.clear()
        elif event in ("connection.connect_tcp.complete", "connection.connect_tcp.failed"):
            self._connecting = max(0, self._connecting - 1)
            if self._connecting == 0:
                self._no_connects.set()

    async def quiesce(self, timeout: float = 3.0) -> None:
        """Wait (at most `timeout` s) until no TCP connect is starting, so cancelling is clean."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._no_connects.wait(), timeout)

    def start(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task on the loop, from any thread; the task."""
        if self.in_loop:
            return self.loop.create_task(coro, name=name)
        created: concurrent.futures.Future[asyncio.Task[Any]] = concurrent.futures.Future()

        def create() -> None:
            created.set_result(self.loop.create_task(coro, name=name))

        self.loop.call_soon_threadsafe(create)
        return created.result(timeout=10)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result, from another thread.

        Raises:
            RuntimeError: called from the loop's own thread (it would wait for itself).
            TimeoutError: no result within `timeout` seconds (the coroutine is cancelled).
        """
        if self.in_loop:
            coro.close()
            raise RuntimeError("ControlPlaneLoop.call() from the loop's own thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s") from None

    async def _cancel(self, task: asyncio.Task[Any]) -> None:
        await self.quiesce()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    def cancel(self, task: asyncio.Task[Any] | None, timeout: float = 5.0) -> None:
        """Cancel `task` cleanly (connects in flight finish first) and wait for it to end."""
        if task is None or task.done() or self.loop.is_closed():
            return
        if self.in_loop:
            task.cancel()
            return
        with contextlib.suppress(Exception):
            self.call(self._cancel(task), timeout)

    def _shutdown(self) -> None:
        async def stop_all() -> None:
            await self.quiesce()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.in_loop:  # pragma: no cover - a user closing from a callback on the loop
            self.loop.call_soon(self.loop.stop)
            return
        try:
            self.call(stop_all(), 5.0)
        except Exception:
            logger.debug("control-plane loop shutdown was not clean", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()
