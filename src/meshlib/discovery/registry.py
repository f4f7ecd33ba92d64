"""Self-registration: register this instance with the control plane, renew its lease, drain and leave.

:class:`LeaseState` decides (sans-IO) when to register, when to renew (every
third of the lease, so two heartbeats may fail before it lapses) and how to
back off after errors; a 404 on renewal means the control plane forgot us
(lease lapsed, or it restarted) and we register again at once.
:class:`Registrar` is the driver thread doing the HTTP calls::

    registrar = Registrar(
        InstanceInfo("payments", "http://10.0.0.7:8080", zone="eu-1"),
        "http://controlplane:8700", token="r3gister", lease=10.0,
    )
    registrar.start(wait=2.0)
    registrar.on_drain(mesh_middleware.drain)                      # /readyz turns 503
    ...
    registrar.drain(delay=2.0, in_flight=lambda: app_in_flight)   # on SIGTERM

A graceful drain turns :attr:`Registrar.ready` false first (wire it to
``/readyz``), deregisters so watching callers drop this instance, waits
``delay`` for them to notice, then waits for in-flight requests to finish.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.discovery import telemetry
from meshlib.discovery.http import control_plane_verify, request_any
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
        """``"register"`` or ``"renew"`` when one is due now, else None."""
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
        backoff = min(0.1 * 2 ** min(self.consecutive_failures - 1, 10), max(self.lease / 6, 0.1))
        self.next_at = now + backoff
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
    """Keeps this instance registered with the control plane from a daemon thread."""

    def __init__(
        self,
        info: InstanceInfo,
        control_plane: str | Sequence[str],
        *,
        token: str | None = None,
        lease: float = 30.0,
        client: httpx.Client | None = None,
        owns_client: bool | None = None,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 5.0,
    ) -> None:
        self.info = info
        self.bases = (control_plane,) if isinstance(control_plane, str) else tuple(control_plane)
        if not self.bases:
            raise ValueError("Registrar needs at least one control plane URL")
        self.state = LeaseState(lease, clock)
        self.last_error: str | None = None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._own_client = client is None if owns_client is None else owns_client
        self._client = client or httpx.Client(timeout=timeout, trust_env=False)
        self._headers = headers
        self._ready = True
        self._drain_callbacks: list[Callable[[], None]] = []
        self._registered = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

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
        client: httpx.Client | None = None,
    ) -> Registrar:
        """A registrar for this process, from ``MESH_SERVICE_NAME``, ``MESH_INSTANCE_ID``, ``MESH_ZONE``.

        The control plane comes from ``MESH_CONTROL_PLANE_URL``, its TLS from ``MESH_TLS_*``,
        the token from ``token`` or else ``MESH_CONTROL_PLANE_TOKEN`` (it needs the register or
        publish right); ``url`` is where this instance listens.

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
        owned = client is None
        if client is None:
            client = httpx.Client(
                verify=control_plane_verify(settings), trust_env=False, timeout=5.0
            )
        return cls(
            info,
            settings.control_plane_url,
            token=token,
            lease=lease,
            client=client,
            owns_client=owned,
        )

    @property
    def ready(self) -> bool:
        """False once draining began: answer /readyz with 503 from then on."""
        return self._ready

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when draining begins (before deregistering)."""
        self._drain_callbacks.append(callback)

    @property
    def _path(self) -> str:
        return f"/v1/registry/{self.info.service}/instances"

    def step(self) -> str | None:
        """Do the registration or renewal due now, if any; returns what was done."""
        with self._lock:
            action = self.state.next_action()
            if action is None:
                return None
            service = self.info.service
            try:
                if action == "register":
                    response = request_any(
                        self._client,
                        self.bases,
                        "POST",
                        self._path,
                        json=self.info.body(self.state.requested),
                        headers=self._headers,
                    )
                else:
                    response = request_any(
                        self._client,
                        self.bases,
                        "PUT",
                        f"{self._path}/{self.info.instance}",
                        headers=self._headers,
                    )
            except httpx.HTTPError as exc:
                self._failed(f"{action}: {exc!r}")
                return action
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

    def _failed(self, error: str) -> None:
        self.state.on_error()
        self.last_error = error
        logger.warning("%s: registration %s", self.info.service, error)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # never let the heartbeat die
                logger.exception("%s: registrar failed", self.info.service)
                self.state.on_error()
            self._wake.wait(self.state.wait_time())
            self._wake.clear()

    def start(self, wait: float = 0.0) -> bool:
        """Start registering in the background; with ``wait``, block that long for the first success."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"meshlib-registrar:{self.info.service}", daemon=True
            )
            self._thread.start()
        return self._registered.wait(wait) if wait > 0 else self._registered.is_set()

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def deregister(self) -> bool:
        """Remove this instance from the registry now; True when the control plane confirmed."""
        try:
            response = request_any(
                self._client,
                self.bases,
                "DELETE",
                f"{self._path}/{self.info.instance}",
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            logger.warning("%s: deregistering failed: %r", self.info.service, exc)
            return False
        telemetry.lease_event(self.info.service, "deregistered")
        return response.status_code in (204, 404)

    def drain(
        self,
        *,
        delay: float = 2.0,
        in_flight: Callable[[], int] | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], object] | None = None,
    ) -> bool:
        """Leave gracefully: unready, deregister, wait ``delay``, then for in-flight requests.

        Returns True when every in-flight request finished within ``timeout``.
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
        """Stop the thread and close the client we own; does not deregister (see :meth:`drain`)."""
        self.stop()
        if self._own_client:
            self._client.close()
