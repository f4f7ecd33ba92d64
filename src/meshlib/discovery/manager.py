"""Discovery driven by the policy: one EndpointSet per service, fed by the sources its policy names.

For every service in the policy, [`Discovery`][meshlib.discovery.manager.Discovery] keeps an
[`EndpointSet`][meshlib.discovery.endpoints.EndpointSet] holding the static
`endpoints`, and starts what the service's `discovery` section asks for:
a [`DnsWatcher`][meshlib.discovery.dns.DnsWatcher], a
[`RegistryWatcher`][meshlib.discovery.watch.RegistryWatcher] (the control plane from
`MESH_CONTROL_PLANE_URL`) and a [`HealthProber`][meshlib.discovery.health.HealthProber].
A policy reload reconfigures them, keeping the state of what did not change;
sets outlive reloads, so a reader may hold on to one:

```python
discovery = Discovery(store, settings=MeshSettings(zone="eu-1"))   # follows the store
discovery.endpoint_set("payments").selection.endpoints
discovery.close()
```

`snapshot` reports every live Discovery's state (for reports and the
dashboard).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import httpx

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.connection import control_plane_verify
from meshlib.controlplane.reporter import add_section
from meshlib.discovery.dns import DnsResolver, DnsWatcher
from meshlib.discovery.endpoints import EndpointSet, Selection
from meshlib.discovery.health import HealthMonitor, HealthProber
from meshlib.discovery.watch import RegistryWatcher
from meshlib.policy.model import TLS, Endpoint, Service
from meshlib.policy.model import Discovery as DiscoveryPolicy
from meshlib.policy.store import PolicySnapshot, PolicyStore
from meshlib.settings import MeshSettings

__all__ = ["Discovery", "snapshot"]

logger = logging.getLogger("meshlib.discovery")

_live: weakref.WeakSet[Discovery] = weakref.WeakSet()


class _ServiceDiscovery:
    """The running parts of one service's discovery."""

    def __init__(self, name: str, endpoints: EndpointSet) -> None:
        self.name = name
        self.endpoints = endpoints
        self.peer: tuple[TLS, str | None] | None = None
        self.dns: DnsWatcher | None = None
        self.registry: RegistryWatcher | None = None
        self.prober: HealthProber | None = None

    def close(self) -> None:
        for part in (self.dns, self.registry, self.prober):
            if part is not None:
                part.close()
        self.dns = self.registry = self.prober = None


class Discovery:
    """Keeps an EndpointSet per policy service and runs its DNS, registry and health machinery."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        settings: MeshSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        dns_resolver: DnsResolver | None = None,
        probe_client: httpx.Client | None = None,
        registry_wait: float = 30.0,
        first_answer_wait: float = 0.0,
        follow: bool = True,
        on_change: Callable[[str, Selection], None] | None = None,
    ) -> None:
        settings = settings or MeshSettings()
        self.settings = settings
        self.store = store
        self.clock = clock
        self.local_zone = settings.zone
        self.control_plane = settings.control_plane_url
        token = settings.control_plane_token
        self.token = token.get_secret_value() if token is not None else None
        self.dns_resolver = dns_resolver
        self.probe_client = probe_client
        self.registry_wait = registry_wait
        self.first_answer_wait = first_answer_wait
        self.services: dict[str, _ServiceDiscovery] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._on_change = on_change
        snapshot = store.peek()
        self._unsubscribe: Callable[[], None] = (
            store.subscribe(lambda old, new: self.sync(new)) if follow else lambda: None
        )
        if snapshot is not None and follow:  # else the owner drives sync()
            self.sync(snapshot)
        _live.add(self)

    def endpoint_set(self, service: str) -> EndpointSet | None:
        """The EndpointSet of a service in the policy, or None."""
        running = self.services.get(service)
        return None if running is None else running.endpoints

    def sync(self, snapshot: PolicySnapshot) -> None:
        """Bring every service's discovery in line with `snapshot` (idempotent)."""
        with self._lock:
            if self._closed:
                return
            wanted = snapshot.policy.services
            for name in list(self.services):
                if name not in wanted:
                    self.services.pop(name).close()
            for name, service in wanted.items():
                running = self.services.get(name)
                if running is None:
                    endpoints = EndpointSet(name, local_zone=self.local_zone)
                    if self._on_change is not None:
                        endpoints.subscribe(functools.partial(self._on_change, name))
                    running = self.services[name] = _ServiceDiscovery(name, endpoints)
                try:
                    self._configure(running, service, snapshot)
                except Exception:  # one service's discovery must not stop the others'
                    logger.exception("%s: configuring discovery failed", name)

    def _configure(
        self, running: _ServiceDiscovery, service: Service, snapshot: PolicySnapshot
    ) -> None:
        policy = service.discovery or DiscoveryPolicy()
        endpoints = running.endpoints
        endpoints.configure(service.discovery)
        endpoints.set_source("static", service.endpoints)
        tls = snapshot.resolver.resolve(running.name).tls
        identity = snapshot.policy.peer_identity(running.name, tls.mode)
        self._configure_health(running, policy, (tls, identity))
        self._configure_dns(running, policy)
        self._configure_registry(running, policy)

    def _configure_health(
        self, running: _ServiceDiscovery, policy: DiscoveryPolicy, peer: tuple[TLS, str | None]
    ) -> None:
        config = policy.health_check
        prober = running.prober
        if prober is not None and prober.monitor.config == config and running.peer == peer:
            return
        running.peer = peer
        if prober is not None:
            prober.close()
            running.prober = None
        if config is None:
            running.endpoints.use_health(None)
            return
        monitor = HealthMonitor(config, self.clock)
        running.endpoints.use_health(monitor)
        client, owned = self.probe_client, False
        tls, identity = peer
        if client is None and tls.mode != "disabled":
            # Probes must pass the same TLS and identity checks as calls do.
            from meshlib.security.tls import client_context

            context = client_context(tls, identity=identity, settings=self.settings)
            client, owned = httpx.Client(verify=context or True, trust_env=False), True
        running.prober = HealthProber(
            monitor, service=running.name, client=client, owns_client=owned or client is None
        )
        running.prober.start()

    def _configure_dns(self, running: _ServiceDiscovery, policy: DiscoveryPolicy) -> None:
        config = policy.dns
        watcher = running.dns
        if watcher is not None and watcher.tracker.config == config:
            return
        if watcher is not None:
            watcher.close()
            running.dns = None
        if config is None:
            running.endpoints.set_source("dns", ())
            return
        endpoints = running.endpoints

        def on_change(found: tuple[Endpoint, ...]) -> None:
            endpoints.set_source("dns", found)
            if running.prober is not None:
                running.prober.wake()

        running.dns = DnsWatcher(
            running.name, config, on_change, resolver=self.dns_resolver, clock=self.clock
        )
        running.dns.start()
        if self.first_answer_wait > 0:
            running.dns.wait_resolved(self.first_answer_wait)

    def _configure_registry(self, running: _ServiceDiscovery, policy: DiscoveryPolicy) -> None:
        if not policy.registry:
            if running.registry is not None:
                running.registry.close()
                running.registry = None
                running.endpoints.set_source("registry", ())
            return
        if running.registry is not None:
            return
        if not self.control_plane:
            logger.error(
                "%s: discovery.registry is on but MESH_CONTROL_PLANE_URL is not set; "
                "using the other endpoint sources only",
                running.name,
            )
            return
        endpoints = running.endpoints

        def on_change(found: tuple[Endpoint, ...]) -> None:
            endpoints.set_source("registry", found)
            if running.prober is not None:
                running.prober.wake()

        running.registry = RegistryWatcher(
            running.name,
            self.control_plane,
            on_change,
            token=self.token,
            wait=self.registry_wait,
            clock=self.clock,
            verify=control_plane_verify(self.settings),
        )
        running.registry.start()
        if self.first_answer_wait > 0:
            running.registry.wait_synced(self.first_answer_wait)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state of every service's discovery."""
        out: dict[str, Any] = {}
        for name, running in list(self.services.items()):
            state: dict[str, Any] = dict(running.endpoints.snapshot())
            if running.dns is not None:
                tracker = running.dns.tracker
                state["dns"] = {
                    "name": tracker.config.name,
                    "resolutions": tracker.resolutions,
                    "failures": tracker.failures,
                    "empty_answers": tracker.empty_answers,
                    "last_error": tracker.last_error,
                }
            if running.registry is not None:
                state["registry"] = {
                    "errors": running.registry.errors,
                    "last_error": running.registry.last_error,
                }
            out[name] = state
        return out

    def close(self) -> None:
        """Stop every watcher and prober, and stop following the store; idempotent."""
        with self._lock:
            self._closed = True
            self._unsubscribe()
            services, self.services = self.services, {}
        for running in services.values():
            running.close()
        _live.discard(self)


def snapshot() -> dict[str, Any]:
    """Discovery state of every live [`Discovery`][meshlib.discovery.manager.Discovery] in the process, by service."""
    out: dict[str, Any] = {}
    for discovery in list(_live):
        out.update(discovery.snapshot())
    return {"services": out}


add_section("discovery", lambda: snapshot()["services"])
