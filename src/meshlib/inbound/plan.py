"""`services.<self>.inbound` compiled once per policy snapshot into fast matchers.

An `InboundPlan` holds the compiled authz rules, the admission limits
that apply to each inbound route (a route's own `rate_limit` or
`concurrency_limit` replaces the service-wide one for matching requests;
unset, the service-wide one applies) and the deadline settings. Requests
read the plan of the snapshot in force, so a policy reload takes effect on
the next request without a restart:

```python
plan = InboundPlan.compile(snapshot.policy, "payments", registry)
limits = plan.limits_for("GET", "/v1/orders")
```
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from meshlib.inbound.admission import ConcurrencyLimiter, LimiterRegistry, TokenBucket
from meshlib.inbound.authz import CompiledAuthz, as_routed, routed_methods
from meshlib.policy.model import ConcurrencyLimit, Inbound, Policy, RateLimit
from meshlib.policy.resolve import PathPredicate, compile_path_match

__all__ = ["InboundPlan", "Limits", "RateLimiter", "SlotLimiter"]


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """A token bucket with where it was configured and whether it only counts."""

    bucket: TokenBucket
    where: str
    shadow: bool


@dataclass(frozen=True, slots=True)
class SlotLimiter:
    """A concurrency limiter with where it was configured and whether it only counts."""

    limiter: ConcurrencyLimiter
    where: str
    shadow: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """The admission limits for one kind of request; either may be absent."""

    rate: RateLimiter | None
    concurrency: SlotLimiter | None


_NO_LIMITS = Limits(None, None)


@dataclass(frozen=True, slots=True)
class _Route:
    path: PathPredicate
    methods: frozenset[str]
    limits: Limits


def _rate(
    config: RateLimit | None, where: str, registry: LimiterRegistry, used: dict[Hashable, object]
) -> RateLimiter | None:
    if config is None:
        return None
    burst = config.burst if config.burst is not None else max(1.0, config.requests_per_second)
    bucket = registry.bucket((where, config), config.requests_per_second, burst, used)
    return RateLimiter(bucket, where, config.mode == "shadow")


def _slots(
    config: ConcurrencyLimit | None,
    where: str,
    registry: LimiterRegistry,
    used: dict[Hashable, object],
) -> SlotLimiter | None:
    if config is None:
        return None
    limiter = registry.concurrency((where, config), config.limit, used)
    return SlotLimiter(limiter, where, config.mode == "shadow")


class InboundPlan:
    """What one policy snapshot says about requests into this service, precompiled."""

    __slots__ = (
        "authz",
        "deadline_max",
        "deadline_reject",
        "deadline_shadow",
        "path_sensitive",
        "path_shadow",
        "policy",
        "routes",
        "service_limits",
    )

    def __init__(
        self,
        policy: Policy,
        authz: CompiledAuthz,
        service_limits: Limits,
        routes: tuple[_Route, ...],
        inbound: Inbound,
    ) -> None:
        self.policy = policy
        self.authz = authz
        self.service_limits = service_limits
        self.routes = routes
        self.deadline_max = inbound.deadline.max
        self.deadline_reject = inbound.deadline.reject_expired
        self.deadline_shadow = inbound.deadline.mode == "shadow"
        self.path_sensitive = bool(routes or inbound.authz.rules)
        """Whether a rule or route depends on the path, so a path not in normal form is refused."""
        self.path_shadow = not routes and authz.shadow
        """Whether only shadow-mode rules depend on the path: count such paths, let them through."""

    @classmethod
    def compile(cls, policy: Policy, service: str, registry: LimiterRegistry) -> InboundPlan:
        """Compile `services.<service>.inbound` (defaults when the service is not listed)."""
        svc = policy.services.get(service)
        inbound = svc.inbound if svc is not None else Inbound()
        where = f"services.{service}.inbound"
        used: dict[Hashable, object] = {}
        rate = _rate(inbound.rate_limit, f"{where}.rate_limit", registry, used)
        slots = _slots(inbound.concurrency_limit, f"{where}.concurrency_limit", registry, used)
        service_limits = Limits(rate, slots) if rate or slots else _NO_LIMITS
        routes = []
        for index, route in enumerate(inbound.routes):
            path, methods = compile_path_match(route)
            at = f"{where}.routes[{index}]"
            limits = Limits(
                _rate(route.rate_limit, f"{at}.rate_limit", registry, used) or rate,
                _slots(route.concurrency_limit, f"{at}.concurrency_limit", registry, used) or slots,
            )
            routes.append(_Route(path, routed_methods(methods), limits))
        registry.swap(used)
        authz = CompiledAuthz.compile(inbound.authz, f"services.{service}")
        return cls(policy, authz, service_limits, tuple(routes), inbound)

    def limits_for(self, method: str, path: str) -> Limits:
        """The limits of the first matching inbound route, else the service-wide ones."""
        method = as_routed(method)
        for route in self.routes:
            if (not route.methods or method in route.methods) and route.path(path):
                return route.limits
        return self.service_limits
