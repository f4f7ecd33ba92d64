"""Self-registration: register this instance with the control plane, renew its lease, drain and leave.

`LeaseState` decides (sans-IO) when to register, when to renew (every
third of the lease, so two heartbeats may fail before it lapses) and how to
back off after errors (tenacity's exponential wait, capped at a sixth of the
lease); a 404 on renewal means the control plane forgot us (lease lapsed, or
it restarted) and we register again at once. `Registrar` does the HTTP calls
as a task on the process's
[`ControlPlaneLoop`][meshlib.controlplane.connection.ControlPlaneLoop]:

```python
registrar = Registrar(
    InstanceInfo("payments", "http://10.0.0.7:8080", zone="eu-1"),
    "http://controlplane:8700", token="r3gister", lease=10.0,
)
registrar.start(wait=2.0)
registrar.on_drain(mesh_middleware.drain)                      # /readyz turns 503
...
registrar.drain(delay=2.0, in_flight=lambda: app_in_flight)   # on SIGTERM
```

A graceful drain turns [`Registrar.ready`][meshlib.discovery.registry.Registrar.ready] false first (wire it to
`/readyz`), deregisters so watching callers drop this instance, waits
`delay` for them to notice, then waits for in-flight requests to finish.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import tenacity

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.backoff import delay_for
from meshlib.controlplane.connection import (
    ControlPlaneLoop,
    control_plane_client,
    control_plane_verify,
    request_any,
)
from meshlib.discovery import telemetry
from meshlib.errors import SettingsError
from meshlib.policy.durations import format_duration
from meshlib.settings import MeshSettings

__all__ = [
    "InstanceInfo",
    "LeasePhase",
    "LeaseState",
    "Registrar",
]

logger = logging.getLogger("meshlib.discovery")


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What this instance registers: its service, URL, and optional identity, zone, metadata."""

    service: str
    url: str
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    zone: str | None = None
    identity: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def body(self, lease: float) -> dict[str, Any]:
        """The JSON body of a registration."""
        return {
            "instance": self.instance,
            "url": self.url,
            "zone": self.zone,
            "identity": self.identity,
            "metadata": dict(self.metadata),
            "lease": format_duration(lease),
        }


class LeasePhase(enum.Enum):
    """Where a registration stands."""

    UNREGISTERED = "unregistered"
    REGISTERED = "registered"
    DRAINING = "draining"
    STOPPED = "stopped"


class LeaseState:
    """When to register and renew, from the outcomes of the calls (sans-IO)."""

    def __init__(self, lease: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.requested = lease
        self.lease = lease
        self.clock = clock
        self.phase = LeasePhase.UNREGISTERED
        self.next_at = clock.monotonic()
        self.expires_at = 0.0
        """When the control plane will drop us if no renewal gets through (our estimate)."""
        self.registrations = 0
        self.renewals = 0
        self.losses = 0
        self.failures = 0
        self.consecutive_failures = 0

    def next_action(self) -> str | None:
        """`"register"` or `"renew"` when one is due now, else None."""
        if self.clock.monotonic() < self.next_at:
            return None
        if self.phase is LeasePhase.UNREGISTERED:
            return "register"
        if self.phase is LeasePhase.REGISTERED:
            return "renew"
        return None

    def _granted(self, lease: float) -> None:
        now = self.clock.monotonic()
        self.lease = lease
        self.phase = LeasePhase.REGISTERED
        self.expires_at = now + lease
        self.next_at = now + lease / 3
        self.consecutive_failures = 0

    def on_registered(self, lease: float) -> None:
        """The control plane accepted the registration with this lease."""
        self.registrations += 1
        self._granted(lease)

    def on_renewed(self, lease: float) -> None:
        """A heartbeat got through."""
        self.renewals += 1
        self._granted(lease)

    def on_lost(self) -> None:
        """The control plane does not know us (404): register again now."""
        self.losses += 1
        self.phase = LeasePhase.UNREGISTERED
        self.next_at = self.clock.monotonic()

    def on_error(self) -> None:
        """A call failed (network, 5xx, refused): retry soon, well within the lease."""
        self.failures += 1
        self.consecutive_failures += 1
        now = self.clock.monotonic()
        wait = tenacity.wait_exponential(multiplier=0.1, max=max(self.lease / 6, 0.1))
        self.next_at = now + delay_for(wait, self.consecutive_failures)
        if self.phase is LeasePhase.REGISTERED and now >= self.expires_at:
            self.phase = LeasePhase.UNREGISTERED  # it has lapsed on the server by now

    def drain(self) -> None:
        """Stop renewing: we are leaving."""
        self.phase = LeasePhase.DRAINING

    def wait_time(self) -> float:
        """Seconds until the next action (a minute when none is scheduled)."""
        if self.phase in (LeasePhase.DRAINING, LeasePhase.STOPPED):
            return 60.0
        return max(0.0, self.next_at - self.clock.monotonic())


class Registrar:
    """Keeps this instance registered with the control plane, from the process's control-plane loop."""

    def __init__(
        self,
        info: InstanceInfo,
        control_plane: str | Sequence[str],
        *,
        token: str | None = None,
        lease: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 5.0,
    ) -> None:
        self.info = info
        self.bases = (control_plane,) if isinstance(control_plane, str) else tuple(control_plane)
        if not self.bases:
            raise ValueError("Registrar needs at least one control plane URL")
        self.state = LeaseState(lease, clock)
        self.last_error: str | None = None
        self.timeout = timeout
        self._verify = verify
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.AsyncClient | None = None
        self._loop: ControlPlaneLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = True
        self._drain_callbacks: list[Callable[[], None]] = []
        self._registered = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: MeshSettings,
        url: str,
        *,
        lease: float = 30.0,
        identity: str | None = None,
        metadata: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> Registrar:
        """A registrar for this process, from `MESH_SERVICE_NAME`, `MESH_INSTANCE_ID`, `MESH_ZONE`.

        The control plane comes from `MESH_CONTROL_PLANE_URL`, its TLS from `MESH_TLS_*`,
        the token from `token` or else `MESH_CONTROL_PLANE_TOKEN` (it needs the register or
        publish right); `url` is where this instance listens.

        Raises:
            SettingsError: the service name or the control plane URL is not set.
        """
        if not settings.service_name:
            raise SettingsError("self-registration needs MESH_SERVICE_NAME (this service's name)")
        if not settings.control_plane_url:
            raise SettingsError("self-registration needs MESH_CONTROL_PLANE_URL")
        info = InstanceInfo(
            settings.service_name,
            url,
            zone=settings.zone,
            identity=identity,
            metadata=dict(metadata or {}),
            **({"instance": settings.instance_id} if settings.instance_id else {}),
        )
        if token is None and settings.control_plane_token is not None:
            token = settings.control_plane_token.get_secret_value()
        return cls(
            info,
            settings.control_plane_url,
            token=token,
            lease=lease,
            verify=control_plane_verify(settings),
        )

    @property
    def ready(self) -> bool:
        """False once draining began: answer /readyz with 503 from then on."""
        return self._ready

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when draining begins (before deregistering)."""
        self._drain_callbacks.append(callback)

    @property
    def _path(self) -> str:
        return f"/v1/registry/{self.info.service}/instances"

    def _acquire(self) -> ControlPlaneLoop:
        if self._loop is None:
            self._loop = ControlPlaneLoop.acquire()
        return self._loop

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            self._client = control_plane_client(self._verify, timeout=self.timeout)
        assert self._loop is not None
        return await request_any(
            self._client,
            self.bases,
            method,
            path,
            headers=self._headers,
            extensions=self._loop.extensions,
            **kwargs,
        )

    async def _step(self) -> str | None:
        with self._lock:
            action = self.state.next_action()
        if action is None:
            return None
        service = self.info.service
        try:
            if action == "register":
                response = await self._request(
                    "POST", self._path, json=self.info.body(self.state.requested)
                )
            else:
                response = await self._request("PUT", f"{self._path}/{self.info.instance}")
        except httpx.HTTPError as exc:
            self._failed(f"{action}: {exc!r}")
            return action
        with self._lock:
            if self.state.phase not in (LeasePhase.UNREGISTERED, LeasePhase.REGISTERED):
                return action  # draining began meanwhile: do not undo it
            if response.status_code == 404 and action == "renew":
                self.state.on_lost()
                telemetry.lease_event(service, "lost")
                logger.warning("%s: the control plane lost our lease; registering again", service)
            elif response.is_success:
                lease = float(response.json().get("lease_s", self.state.requested))
                if action == "register":
                    self.state.on_registered(lease)
                    self._registered.set()
                    telemetry.lease_event(service, "registered")
                    logger.info("%s: registered %s (lease %gs)", service, self.info.url, lease)
                else:
                    self.state.on_renewed(lease)
                    telemetry.lease_event(service, "renewed")
            else:
                self._failed(f"{action}: HTTP {response.status_code} {response.text[:200]}")
        return action

    def step(self) -> str | None:
        """Do the registration or renewal due now, if any, and wait for it; what was done."""
        return self._acquire().call(self._step(), self.timeout * len(self.bases) + 5.0)

    def _failed(self, error: str) -> None:
        self.state.on_error()
        self.last_error = error
        logger.warning("%s: registration %s", self.info.service, error)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the heartbeat die
                logger.exception("%s: registrar failed", self.info.service)
                self.state.on_error()
            await asyncio.sleep(self.state.wait_time())

    def start(self, wait: float = 0.0) -> bool:
        """Start registering in the background; with `wait`, block that long for the first success."""
        if self._task is None:
            self._task = self._acquire().start(
                self._run(), name=f"meshlib-registrar:{self.info.service}"
            )
        return self._registered.wait(wait) if wait > 0 else self._registered.is_set()

    def _halt(self) -> None:
        task, self._task = self._task, None
        if self._loop is not None:
            self._loop.cancel(task)

    async def _deregister(self) -> bool:
        try:
            response = await self._request("DELETE", f"{self._path}/{self.info.instance}")
        except httpx.HTTPError as exc:
            logger.warning("%s: deregistering failed: %r", self.info.service, exc)
            return False
        telemetry.lease_event(self.info.service, "deregistered")
        return response.status_code in (204, 404)

    def deregister(self) -> bool:
        """Remove this instance from the registry now; True when the control plane confirmed."""
        return self._acquire().call(self._deregister(), self.timeout * len(self.bases) + 5.0)

    def drain(
        self,
        *,
        delay: float = 2.0,
        in_flight: Callable[[], int] | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], object] | None = None,
    ) -> bool:
        """Leave gracefully: unready, deregister, wait `delay`, then for in-flight requests.

        Returns True when every in-flight request finished within `timeout`.
        """
        wait = sleep or time.sleep
        with self._lock:
            self._ready = False
            self.state.drain()
        for callback in list(self._drain_callbacks):
            try:
                callback()
            except Exception:
                logger.exception("drain callback %r failed", callback)
        self._halt()
        self.deregister()
        wait(delay)
        clock = self.state.clock
        deadline = clock.monotonic() + timeout
        drained = True
        while in_flight is not None and in_flight() > 0:
            if clock.monotonic() >= deadline:
                drained = False
                logger.warning("%s: drain timed out with requests in flight", self.info.service)
                break
            wait(0.02)
        self.close()
        return drained

    def stop(self) -> None:
        """Stop heartbeats without deregistering (the lease then lapses on its own)."""
        self._halt()
        self.state.phase = LeasePhase.STOPPED

    def close(self) -> None:
        """Stop heartbeats and release the connection; does not deregister (see `drain`)."""
        self.stop()
        loop, self._loop = self._loop, None
        if loop is None:
            return
        client, self._client = self._client, None
        if client is not None:
            try:
                loop.call(client.aclose(), 5.0)
            except Exception:
                logger.debug("closing the registrar's client failed", exc_info=True)
        loop.release()
