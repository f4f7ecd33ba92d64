"""Routing: from a request and the policy snapshot to a compiled plan and a destination.

A URL whose host is a service in the policy goes to that service's
endpoints (a route's `split` may send it to another service's); any other
URL goes where it says, under `defaults`. Everything per call is a few
dictionary look-ups: `Plan` objects are compiled once per effective
policy and `Destination` state lives across snapshots:

```python
router = Router(store, pools, base_transport, clock)
plan, dest = router.route(snapshot, request)
```

A policy swap (`Router.sync`, subscribed to the store) reconfigures
destinations, keeps the pools of kept endpoints and retires the others; so
does a change of the endpoints discovery found (DNS, a registry, health,
zones: `meshlib.discovery.binding`), on the next call.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from meshlib.clock import Clock
from meshlib.discovery.binding import DiscoveredEndpoints
from meshlib.outbound.destination import Destination, EndpointSpec
from meshlib.outbound.endpoints import PoolKey, Pools
from meshlib.outbound.fault import has_fault
from meshlib.outbound.retry import RetryRules
from meshlib.outbound.secure import NamedTLSFailures, PlaintextRefused
from meshlib.policy.model import TLS, Endpoint
from meshlib.policy.resolve import EffectivePolicy
from meshlib.policy.store import PolicySnapshot, PolicyStore

__all__ = ["Plan", "Router"]

logger = logging.getLogger("meshlib.outbound")

_MAX_ORIGINS = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Plan:
    """One effective policy compiled for the hot path; built once, shared by every call it governs."""

    __slots__ = (
        "attempt",
        "connect",
        "effective",
        "fault",
        "retry",
        "route",
        "split",
        "split_total",
        "timeout",
        "total",
    )

    def __init__(self, effective: EffectivePolicy) -> None:
        self.effective = effective
        t = effective.timeouts
        self.connect = t.connect
        self.attempt = t.attempt
        self.total = t.total
        self.timeout = {
            "connect": t.connect,
            "read": t.attempt,
            "write": t.attempt,
            "pool": t.attempt,
        }
        """The httpx `timeout` extension of an attempt with time to spare."""
        self.retry = RetryRules(effective.retry)
        self.fault = effective.fault if has_fault(effective.fault) else None
        self.route = effective.route_name
        self.split = tuple((s.service, s.weight) for s in effective.split if s.weight > 0)
        self.split_total = sum(w for _, w in self.split)


class Router:
    """Maps requests to plans and destinations; owns the destinations of one transport."""

    def __init__(
        self,
        store: PolicyStore,
        pools: Pools[Any],
        base: Any,
        clock: Clock,
        discovered: DiscoveredEndpoints | None = None,
    ) -> None:
        self.store = store
        self.pools = pools
        self.base = base
        self.discovered = discovered
        """Where services with `discovery` (or zones to prefer) get their endpoints from."""
        self.clock = clock
        self.caller: str | None = None
        """The calling service (the transport's `service_name`), for per-edge stats."""
        self.destinations: dict[str, Destination] = {}
        self.origins: dict[tuple[str, str, int | None], Destination] = {}
        self._default_plan: Plan | None = None
        self._plans: dict[int, Plan] = {}
        self._synced: PolicySnapshot | None = None
        self._keys: dict[str, set[PoolKey]] = {}
        self._lock = threading.Lock()

    def plan_for(self, effective: EffectivePolicy) -> Plan:
        """The compiled plan of an effective policy (cached on the object's identity, per snapshot)."""
        plan = self._plans.get(id(effective))
        if plan is None or plan.effective is not effective:
            plan = self._plans[id(effective)] = Plan(effective)
        return plan

    def route(self, snapshot: PolicySnapshot, request: httpx.Request) -> tuple[Plan, Destination]:
        """The plan and destination for `request` under `snapshot`."""
        discovered = self.discovered
        if (snapshot is not self._synced or (discovered is not None and discovered.dirty)) and (
            snapshot is self.store.peek()
        ):
            self.sync(snapshot)
        url = request.url
        # httpx's parsed form, when present, spares three property decodes per call.
        ref = getattr(url, "_uri_reference", None)
        host = url.host if ref is None else ref.host
        dest = self.destinations.get(host)
        if dest is None:
            plan = self._default_plan
            if plan is None:
                plan = self._default_plan = self.plan_for(snapshot.resolver.resolve(None))
            key = (url.scheme, host, url.port) if ref is None else (ref.scheme, host, ref.port)
            dest = self.origins.get(key)
            if dest is None or dest.effective is not plan.effective:
                dest = self._origin(key, url, plan)
            return plan, dest
        effective = snapshot.resolver.resolve(host, request.method, url.path, request.headers)
        plan = self.plan_for(effective)
        if plan.split:
            dest = self.destinations.get(self._split(plan), dest)
        return plan, dest

    def _split(self, plan: Plan) -> str:
        roll = self.clock.random() * plan.split_total
        for service, weight in plan.split:
            roll -= weight
            if roll < 0:
                return service
        return plan.split[-1][0]

    def _origin(self, key: tuple[str, str, int | None], url: httpx.URL, plan: Plan) -> Destination:
        """The destination of a non-mesh origin, made (or reconfigured) under `plan`."""
        name = f"{url.scheme}://{url.host}:{url.port or _DEFAULT_PORTS.get(url.scheme, 0)}"
        with self._lock:
            dest = self.origins.get(key) or Destination(name, self.clock)
            spec = EndpointSpec(
                name,
                _guarded(self.base, plan.effective.tls, name, name, url.scheme, url.host, url.port),
                address=(url.scheme, url.host, url.port),
            )
            dest.configure(plan.effective, [spec], rewrite=False)
            if len(self.origins) >= _MAX_ORIGINS and key not in self.origins:
                self.origins.pop(next(iter(self.origins)))
            self.origins[key] = dest
        return dest

    def sync(self, snapshot: PolicySnapshot) -> None:
        """Bring destinations and pools in line with `snapshot` (idempotent, thread-safe).

        Also runs when discovery changed a service's endpoints (`discovered.dirty`).
        """
        discovered = self.discovered
        with self._lock:
            if snapshot is self._synced and (discovered is None or not discovered.dirty):
                return
            if self._synced is not None and snapshot is not self.store.peek():
                return  # an older snapshot, told late (or asked for by an in-flight call)
            if discovered is not None:
                discovered.begin(snapshot)
            resolver = snapshot.resolver
            keys: set[PoolKey] = set()
            destinations: dict[str, Destination] = {}
            for name, service in snapshot.policy.services.items():
                effective = resolver.resolve(name)
                dest = self.destinations.get(name) or Destination(name, self.clock)
                identity = snapshot.policy.peer_identity(name, effective.tls.mode)
                endpoints = (
                    service.endpoints if discovered is None else discovered.endpoints(name, service)
                )
                wanted: set[PoolKey] = set()
                try:
                    fresh = [
                        self._endpoint(name, e, effective, identity, wanted) for e in endpoints
                    ]
                except Exception as exc:
                    # A bad certificate path for one service must not take the others down:
                    # it keeps what it had (or gets no endpoints, and says why when called).
                    logger.error(
                        "cannot set up endpoints of %r; keeping the last good: %s", name, exc
                    )
                    dest.problem = f"its endpoints could not be set up: {exc}"
                    if dest.effective is None:
                        dest.configure(effective, [])
                    keys.update(self._keys.get(name, ()))
                    destinations[name] = dest
                    continue
                dest.problem = None
                dest.configure(effective, fresh)  # dropped endpoints' pools retire below
                self._keys[name] = wanted
                keys.update(wanted)
                destinations[name] = dest
            self.pools.keep_only(keys)
            self.destinations = destinations
            self._plans = {}
            self._default_plan = None
            self._synced = snapshot

    def _endpoint(
        self,
        service: str,
        endpoint: Endpoint,
        effective: EffectivePolicy,
        identity: str | None,
        keys: set[PoolKey],
    ) -> EndpointSpec:
        tls = effective.tls
        url = httpx.URL(endpoint.url)
        pool = None
        # A plaintext endpoint under TLS gets no pool: only the registry can name one (the policy
        # refuses the rest), and every call to it is refused.
        if tls.allows_plaintext(url.scheme, url.host, url.port):
            keys.add((endpoint.url, tls, identity))
            pool = self.pools.get(endpoint.url, tls, identity)
        transport = _guarded(pool, tls, service, endpoint.url, url.scheme, url.host, url.port)
        return EndpointSpec(endpoint.url, transport, endpoint.weight)


def _guarded(
    transport: Any,
    tls: TLS,
    destination: str,
    endpoint: str,
    scheme: str,
    host: str,
    port: int | None,
) -> Any:
    """`transport`, refusing plaintext `tls` forbids and naming its certificate failures (secure.py)."""
    if not tls.allows_plaintext(scheme, host, port):
        origin = f"{scheme}://{host}:{port or _DEFAULT_PORTS.get(scheme, 0)}"
        return PlaintextRefused(destination=destination, origin=origin, mode=tls.mode)
    if scheme == "https":
        return NamedTLSFailures(transport, destination=destination, endpoint=endpoint)
    return transport
