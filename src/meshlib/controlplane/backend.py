"""The two stores behind a control-plane replica: policy versions, and the instance registry.

A replica holds no state of its own. It reads policy and registrations from
a [`PolicyBackend`][meshlib.controlplane.backend.PolicyBackend] and a
[`RegistryBackend`][meshlib.controlplane.backend.RegistryBackend], follows
the policy backend's `watch()` to wake its long-polls, and serves what it
read. Two implementations exist:

| store                         | policy                                   | registry                      |
|-------------------------------|------------------------------------------|-------------------------------|
| embedded (default, dev)       | files: `policy.yaml` + `history/`        | memory of this one replica    |
| `etcd://host:2379[,host:2379]`| keys; the etcd revision is the version   | keys under etcd leases        |

Both backends give the same guarantees to the routes: versions only grow, a
publish with `expected=` is an atomic compare-and-set (the loser gets
[`VersionConflictError`][meshlib.errors.VersionConflictError]), and a
rollback is a new, higher version with old content.

```python
policy, registry = backends_from_settings(ControlPlaneSettings(store="etcd://127.0.0.1:2379"))
await policy.start()
version = await policy.publish(text, fmt="yaml", who="alice", expected=7)  # CAS on version 7
async for newer in policy.watch():   # the version in force first, then each newer one
    ...
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from meshlib.controlplane.storage import PolicyVersion
from meshlib.policy.parse import Format

if TYPE_CHECKING:
    from meshlib.controlplane.config import ControlPlaneSettings
    from meshlib.controlplane.instances import Instance, Registration

__all__ = ["PolicyBackend", "RegistryBackend", "backends_from_settings"]


@runtime_checkable
class PolicyBackend(Protocol):
    """Where policy versions live: current, by number, history, CAS publish, rollback, watch."""

    name: str
    """What the store is, for logs and `/readyz` (`files:/srv/mesh`, `etcd://10.0.0.1:2379`)."""

    async def start(self) -> None:
        """Connect and read the version in force; raises `StoreUnavailableError` if it cannot."""

    async def close(self) -> None:
        """Release connections; idempotent."""

    async def current(self) -> PolicyVersion | None:
        """The version in force as the store says now (None before the first publish)."""

    async def get(self, version: int) -> PolicyVersion:
        """Version `version`; `KeyError` when there is no such version."""

    async def history(self, limit: int = 50) -> list[PolicyVersion]:
        """The newest `limit` versions, newest first."""

    async def publish(
        self,
        text: str,
        *,
        fmt: Format | None,
        who: str,
        comment: str = "",
        expected: int | None = None,
    ) -> PolicyVersion:
        """Validate and store `text` as a new, higher version.

        Args:
            text: The document (YAML, JSON or TOML).
            fmt: Its format, or None to guess.
            who: The publisher, for the history.
            comment: Why, for the history.
            expected: Compare-and-set: the version that must be current (0: none yet).
                None publishes unconditionally, which never fails because of a race.

        Raises:
            PolicyError: the document is invalid (nothing is stored).
            VersionConflictError: `expected` is no longer the version in force.
            StoreUnavailableError: the store cannot be written now.
        """

    async def rollback(
        self, version: int, *, who: str, expected: int | None = None
    ) -> PolicyVersion:
        """Publish version `version`'s content again as a new version (`KeyError` if unknown)."""

    def watch(self) -> AsyncIterator[PolicyVersion]:
        """The version in force, then every newer one as it is stored; never an older one.

        Raises `StoreUnavailableError` when the store is lost; call again to resume.
        """

    def status(self) -> dict[str, Any]:
        """Store-specific facts for `/readyz` and the history (e.g. a bad hand edit)."""


@runtime_checkable
class RegistryBackend(Protocol):
    """Where instance registrations live: leases, renewals, listings and per-service change waits."""

    name: str

    async def start(self) -> None:
        """Connect and load every registration; raises `StoreUnavailableError` if it cannot."""

    async def close(self) -> None:
        """Stop watching and release connections; idempotent."""

    async def register(self, service: str, body: Registration, *, who: str) -> Instance:
        """Add or replace an instance and start its lease (`OverflowError` when full)."""

    async def renew(self, service: str, instance: str) -> Instance | None:
        """Extend a lease by its length; None when the instance is unknown (it must register)."""

    async def deregister(self, service: str, instance: str) -> bool:
        """Remove an instance; False when it was not registered."""

    def listing(self, service: str) -> dict[str, Any]:
        """`{"service", "boot", "revision", "instances": [...]}` as this replica knows it now."""

    def etag(self, service: str) -> str:
        """A strong ETag of the service's instance list, the same on every replica."""

    def services(self) -> dict[str, int]:
        """Every service with registered instances, and how many."""

    async def wait(self, service: str, etag: str, timeout: float) -> None:
        """Return when the service's list no longer has `etag`, or after `timeout` seconds."""

    def status(self) -> dict[str, Any]:
        """Counters for `/readyz` and the dashboard (e.g. `expired`)."""


def backends_from_settings(
    settings: ControlPlaneSettings, *, clock: Any = None
) -> tuple[PolicyBackend, RegistryBackend]:
    """The backends `MESH_CONTROLPLANE_STORE` names: files + memory when unset, else etcd.

    Raises:
        SettingsError: the store URL or its TLS/auth options are unusable.
    """
    from meshlib.clock import SYSTEM_CLOCK

    clock = clock or SYSTEM_CLOCK
    if settings.store is None:
        from meshlib.controlplane.files_backend import FilePolicyBackend
        from meshlib.controlplane.instances import MemoryRegistryBackend, RegistryConfig

        return (
            FilePolicyBackend(settings.policy, poll_interval=settings.poll_interval, clock=clock),
            MemoryRegistryBackend(RegistryConfig.from_settings(settings), clock),
        )
    from meshlib.controlplane.etcd_backend import etcd_backends

    return etcd_backends(settings, clock=clock)
