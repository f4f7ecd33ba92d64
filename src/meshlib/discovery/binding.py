"""The outbound Router's view of discovery: which endpoints a service's destination gets.

The Router asks `DiscoveredEndpoints.endpoints` for each service when
it syncs to a policy snapshot. A service without a `discovery` section (and
no zones to prefer) gets its static `endpoints` back and nothing starts, so
the mesh costs nothing for what it does not use. Otherwise a
[`Discovery`][meshlib.discovery.manager.Discovery] is started on first need, and
the answer is the service's current selection: healthy, in the caller's zone
while it copes, every endpoint in panic.

When a selection changes (a DNS answer, a registration, a health
transition), `dirty` turns true; the Router re-syncs on its next call,
keeping the state of endpoints that stay. Nothing here blocks a request, and
no Router lock is ever taken from a discovery thread:

```python
discovered = DiscoveredEndpoints(store, settings=settings)
if snapshot is not router_synced or discovered.dirty:
    discovered.begin(snapshot)                         # under the Router's lock
    endpoints = discovered.endpoints("payments", snapshot.policy.services["payments"])
discovered.close()
```
"""

from __future__ import annotations

import threading

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.discovery.endpoints import Selection
from meshlib.discovery.manager import Discovery
from meshlib.policy.model import Endpoint, Service
from meshlib.policy.store import PolicySnapshot, PolicyStore
from meshlib.settings import MeshSettings

__all__ = ["DiscoveredEndpoints", "uses_discovery"]

FIRST_ANSWER_WAIT = 2.0
"""How long a DNS or registry source may hold up a client's first sync (its construction)."""


def uses_discovery(service: Service, local_zone: str | None) -> bool:
    """Whether a service's endpoints need discovery: a `discovery` section, or zones to prefer."""
    if service.discovery is not None:
        return True
    return local_zone is not None and any(e.zone is not None for e in service.endpoints)


class DiscoveredEndpoints:
    """Endpoints per service for the outbound Router, starting discovery only when a service needs it."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        settings: MeshSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.local_zone = (settings or MeshSettings()).zone
        self.dirty = False
        """True when a selection changed since the last `begin`: re-sync on the next call."""
        self.discovery: Discovery | None = None
        self._snapshot: PolicySnapshot | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _changed(self, service: str, selection: Selection) -> None:
        self.dirty = True

    def begin(self, snapshot: PolicySnapshot) -> None:
        """Start a Router sync to `snapshot`: bring discovery up to date, clear `dirty`."""
        with self._lock:
            if self._closed:
                return
            needed = any(
                uses_discovery(s, self.local_zone) for s in snapshot.policy.services.values()
            )
            first = self._snapshot is None
            if self.discovery is None and needed:
                self.discovery = Discovery(
                    self.store,
                    settings=self.settings,
                    clock=self.clock,
                    follow=False,
                    on_change=self._changed,
                )
            if self.discovery is not None and snapshot is not self._snapshot:
                # Only the client's first sync waits for first answers; later ones (which may
                # run on an event loop) never block.
                self.discovery.first_answer_wait = FIRST_ANSWER_WAIT if first else 0.0
                self.discovery.sync(snapshot)
            self._snapshot = snapshot
            self.dirty = False

    def endpoints(self, name: str, service: Service) -> tuple[Endpoint, ...]:
        """The endpoints the destination `name` should balance over now."""
        discovery = self.discovery
        if discovery is None or not uses_discovery(service, self.local_zone):
            return service.endpoints
        found = discovery.endpoint_set(name)
        return service.endpoints if found is None else found.selection.endpoints

    def close(self) -> None:
        """Stop discovery (watchers, probers); idempotent."""
        with self._lock:
            self._closed = True
            discovery, self.discovery = self.discovery, None
        if discovery is not None:
            discovery.close()
