"""The registry's state, without I/O: instances per service, their leases, and change events.

Used by the control plane's registry routes (`meshlib.controlplane.registry`);
tests drive it with a FakeClock:

```python
registry = InstanceRegistry(RegistryConfig(default_lease=10.0), clock)
registry.register("payments", Registration(instance="p-1", url="http://10.0.0.7:8080"))
clock.advance(11)
registry.expire()            # {"payments"}: the lease lapsed
```
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.policy.durations import parse_duration
from meshlib.policy.model import Endpoint, validate_spiffe_id

__all__ = [
    "Instance",
    "InstanceRegistry",
    "MemoryRegistryBackend",
    "Registration",
    "RegistryConfig",
    "expected_identity",
]

_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Leases and who may register; read from the control plane's settings where they have them."""

    default_lease: float = 30.0
    min_lease: float = 1.0
    max_lease: float = 300.0
    max_instances: int = 10_000
    register_tokens: tuple[str, ...] = ()
    register_identities: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> RegistryConfig:
        """Take `register_tokens` / `register_identities` / `registry_*` from `settings` if set."""
        tokens = getattr(settings, "register_tokens", ())
        return cls(
            default_lease=getattr(settings, "registry_lease", 30.0),
            max_instances=getattr(settings, "registry_max_instances", 10_000),
            register_tokens=tuple(
                t.get_secret_value() if hasattr(t, "get_secret_value") else str(t) for t in tokens
            ),
            register_identities=tuple(getattr(settings, "register_identities", ())),
        )


Text = Annotated[str, StringConstraints(max_length=256)]


class Registration(BaseModel):
    """The body of `POST /v1/registry/{service}/instances`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance: Annotated[str, StringConstraints(pattern=_INSTANCE.pattern)] = Field(
        description="This instance's name, unique within the service (e.g. host:pid)."
    )
    url: str = Field(description="Where the instance listens: scheme://host:port.")
    zone: Annotated[str, StringConstraints(max_length=64)] | None = None
    identity: str | None = Field(
        None, description="The SPIFFE ID the instance's certificate proves."
    )
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], Text] = Field(
        default_factory=dict, max_length=32
    )
    lease: str | None = Field(
        None, description="Requested lease, e.g. '10s'; clamped by the server."
    )

    def endpoint_url(self) -> str:
        """The URL, normalised like a policy endpoint (raises ValueError when it is not one)."""
        return Endpoint(url=self.url).url

    def checked_identity(self) -> str | None:
        """The identity, validated (raises ValueError)."""
        return None if self.identity is None else validate_spiffe_id(self.identity)


@dataclass(slots=True)
class Instance:
    """One registered instance and its lease."""

    service: str
    instance: str
    url: str
    zone: str | None
    identity: str | None
    metadata: Mapping[str, str]
    lease: float
    registered_at: float
    registered_by: str
    expires_at: float = 0.0

    def to_json(self, now: float) -> dict[str, Any]:
        """The instance as watchers see it (`expires_in` in seconds from now)."""
        return {
            "instance": self.instance,
            "url": self.url,
            "zone": self.zone,
            "identity": self.identity,
            "metadata": dict(self.metadata),
            "lease_s": self.lease,
            "expires_in_s": round(max(0.0, self.expires_at - now), 3),
            "registered_at": self.registered_at,
        }


@dataclass
class InstanceRegistry:
    """Live instances per service with lease expiry (sans-IO) and one wake-up event per service."""

    config: RegistryConfig = field(default_factory=RegistryConfig)
    clock: Clock = SYSTEM_CLOCK
    services: dict[str, dict[str, Instance]] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    _counter: int = 0
    _boot: str = field(default_factory=lambda: os.urandom(4).hex())
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    def _changed(self, service: str) -> None:
        self._counter += 1
        self.revisions[service] = self._counter
        event = self._events.pop(service, None)
        if event is not None:
            event.set()

    def etag(self, service: str) -> str:
        """A strong ETag of the service's instance list (changes on every change, survives nothing)."""
        return f'"{self._boot}-{self.revisions.get(service, 0)}"'

    def lease_for(self, requested: float | None) -> float:
        """The lease granted for a requested one."""
        config = self.config
        lease = config.default_lease if requested is None else requested
        return min(max(lease, config.min_lease), config.max_lease)

    def register(self, service: str, body: Registration, *, who: str = "") -> Instance:
        """Add or replace an instance and start its lease."""
        self.expire()
        instances = self.services.setdefault(service, {})
        if body.instance not in instances and self.count() >= self.config.max_instances:
            raise OverflowError(
                f"the registry holds its maximum of {self.config.max_instances} instances"
            )
        now = self.clock.monotonic()
        lease = self.lease_for(parse_duration(body.lease) if body.lease else None)
        instance = Instance(
            service=service,
            instance=body.instance,
            url=body.endpoint_url(),
            zone=body.zone,
            identity=body.checked_identity(),
            metadata=dict(body.metadata),
            lease=lease,
            registered_at=self.clock.wall(),
            registered_by=who,
            expires_at=now + lease,
        )
        previous = instances.get(body.instance)
        instances[body.instance] = instance
        if previous is None or previous.to_json(0) != instance.to_json(0):
            self._changed(service)
        return instance

    def renew(self, service: str, instance: str) -> Instance | None:
        """Extend a lease by its length; None when the instance is unknown (or already expired)."""
        self.expire()
        found = self.services.get(service, {}).get(instance)
        if found is not None:
            found.expires_at = self.clock.monotonic() + found.lease
        return found

    def deregister(self, service: str, instance: str) -> bool:
        """Remove an instance; False when it was not registered."""
        instances = self.services.get(service, {})
        if instances.pop(instance, None) is None:
            return False
        if not instances:
            del self.services[service]
        self._changed(service)
        return True

    def expire(self) -> set[str]:
        """Drop every instance whose lease lapsed; returns the services that changed."""
        now = self.clock.monotonic()
        changed: set[str] = set()
        for service, instances in list(self.services.items()):
            for name, instance in list(instances.items()):
                if instance.expires_at <= now:
                    del instances[name]
                    self.expired += 1
                    changed.add(service)
            if not instances:
                del self.services[service]
        for service in changed:
            self._changed(service)
        return changed

    def next_expiry(self) -> float | None:
        """The monotonic time the next lease lapses, or None when nothing is registered."""
        times = [i.expires_at for s in self.services.values() for i in s.values()]
        return min(times) if times else None

    def count(self) -> int:
        """Instances registered, over every service."""
        return sum(len(s) for s in self.services.values())

    def listing(self, service: str) -> dict[str, Any]:
        """What `GET /v1/registry/{service}` answers."""
        now = self.clock.monotonic()
        instances = sorted(self.services.get(service, {}).values(), key=lambda i: i.instance)
        return {
            "service": service,
            "boot": self._boot,
            "revision": self.revisions.get(service, 0),
            "instances": [i.to_json(now) for i in instances],
        }

    async def wait(self, service: str, etag: str, timeout: float) -> None:
        """Wait until the service's list changes from `etag` or `timeout` passes; expires on the way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.etag(service) == etag:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            nxt = self.next_expiry()
            if nxt is not None:  # wake when a lease lapses, so watchers see the expiry
                remaining = min(remaining, max(0.0, nxt - self.clock.monotonic()) + 0.005)
            event = self._events.setdefault(service, asyncio.Event())
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiter.cancel()
            self.expire()


class MemoryRegistryBackend:
    """The embedded registry backend: an [`InstanceRegistry`][meshlib.controlplane.instances.InstanceRegistry] in this replica's memory.

    Registrations are lost when the replica restarts (instances register again
    on their next heartbeat's 404) and are not shared between replicas: run
    several replicas on etcd (`MESH_CONTROLPLANE_STORE`).
    """

    name = "memory"

    def __init__(
        self, config: RegistryConfig | InstanceRegistry | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if isinstance(config, InstanceRegistry):
            self.registry = config
        else:
            self.registry = InstanceRegistry(config or RegistryConfig(), clock)
        self.config = self.registry.config
        self.clock = self.registry.clock

    async def start(self) -> None:
        """Nothing to load: the registry starts empty."""

    async def close(self) -> None:
        """Nothing to release."""

    async def register(self, service: str, body: Registration, *, who: str) -> Instance:
        """Add or replace an instance (`OverflowError` when the registry is full)."""
        return self.registry.register(service, body, who=who)

    async def renew(self, service: str, instance: str) -> Instance | None:
        """Extend a lease; None when unknown or lapsed."""
        return self.registry.renew(service, instance)

    async def deregister(self, service: str, instance: str) -> bool:
        """Remove an instance."""
        return self.registry.deregister(service, instance)

    def listing(self, service: str) -> dict[str, Any]:
        """The service's live instances (lapsed leases are expired first)."""
        self.registry.expire()
        return self.registry.listing(service)

    def etag(self, service: str) -> str:
        """The service's list ETag (lapsed leases are expired first)."""
        self.registry.expire()
        return self.registry.etag(service)

    def services(self) -> dict[str, int]:
        """Every service with live instances, and how many."""
        self.registry.expire()
        return {name: len(i) for name, i in sorted(self.registry.services.items())}

    async def wait(self, service: str, etag: str, timeout: float) -> None:
        """Wait for a change of the service's list (a lapsing lease counts)."""
        await self.registry.wait(service, etag, timeout)

    def status(self) -> dict[str, Any]:
        """How many leases lapsed since start."""
        return {"expired": self.registry.expired}


def expected_identity(policy_document: Any, service: str) -> str:
    """The SPIFFE ID `service` must prove: its policy `identity`, else `spiffe://<trust_domain>/<service>`."""
    doc = policy_document if isinstance(policy_document, Mapping) else {}
    svc = (doc.get("services") or {}).get(service) or {}
    if isinstance(svc, Mapping) and isinstance(svc.get("identity"), str):
        return str(svc["identity"])
    return f"spiffe://{doc.get('trust_domain') or 'cluster.local'}/{service}"
