"""From a policy and a call to the policy that applies to it, and which layer set each value.

Merge rules, in order, each layer overriding only the keys it spells out:

```text
defaults  <-  services.<dest>  <-  services.<dest>.routes[i]   (the first route that matches)
```

Nested sections merge key by key (a route's `retry: {backoff: {max: 2s}}`
keeps the service's `attempts`); lists such as `retry_on` are replaced
whole; `null` set explicitly (`fault: {abort: null}`) clears the value.
A route matches when its path rule, methods and headers all match:
`path_prefix` matches whole segments (`/v1/orders` matches
`/v1/orders/7` but not `/v1/ordersx`), `path_template` matches one
segment per `{name}`. Routes are tried in document order.

The answer is memoised per policy snapshot and (destination, route), so the
hot path does a dictionary look-up and a short route scan:

```python
effective = resolve(policy, "payments", "POST", "/v1/refunds")
effective.timeouts.total            # 30.0
effective.source_of("timeouts.total")  # 'services.payments.routes[0]'
```
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from meshlib.errors import PolicyError, PolicyIssue

if TYPE_CHECKING:
    from meshlib.policy.model import (
        TLS,
        CircuitBreaker,
        Endpoint,
        Fault,
        LoadBalancer,
        OutlierDetection,
        PathMatch,
        Policy,
        Retry,
        Route,
        RouteMatch,
        SplitTarget,
        Timeouts,
    )

__all__ = [
    "DEFAULTS_LAYER",
    "EffectivePolicy",
    "Resolver",
    "check_policy",
    "compile_path_match",
    "format_loc",
    "resolve",
    "resolver_for",
]

DEFAULTS_LAYER = "defaults"
_LAYERED = (
    "timeouts",
    "retry",
    "circuit_breaker",
    "outlier_detection",
    "load_balancer",
    "tls",
    "fault",
)
_ROUTE_LAYERED = ("timeouts", "retry", "fault")


def format_loc(loc: tuple[str | int, ...]) -> str:
    """`("services", "a", "routes", 0, "retry")` -> `services.a.routes[0].retry`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """Everything that governs one kind of call, fully merged; immutable and shared."""

    service: str | None
    route_name: str | None
    timeouts: Timeouts
    retry: Retry
    circuit_breaker: CircuitBreaker
    outlier_detection: OutlierDetection
    load_balancer: LoadBalancer
    tls: TLS
    fault: Fault
    endpoints: tuple[Endpoint, ...] = ()
    identity: str | None = None
    split: tuple[SplitTarget, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    route_index: int = -1

    def source_of(self, dotted: str) -> str:
        """The layer that set a field, e.g. `source_of("retry.attempts")` -> `services.payments`."""
        probe = dotted
        while probe:
            layer = self.sources.get(probe)
            if layer is not None:
                return layer
            probe = probe.rpartition(".")[0]
        return DEFAULTS_LAYER

    def leaves(self) -> Iterator[tuple[str, Any]]:
        """Every leaf setting as `(dotted name, value)`, for `policy explain`."""
        for name in _LAYERED:
            yield from _leaves(name, getattr(self, name))


def _leaves(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _leaves(f"{prefix}.{name}", getattr(value, name))
    else:
        yield prefix, value


def _merge(base: Any, override: Any, layer: str, prefix: str, sources: dict[str, str]) -> Any:
    """Overlay the keys `override` spells out onto `base`, recording who set what."""
    if override is None:
        return base
    if not isinstance(override, BaseModel) or not isinstance(base, BaseModel):
        sources[prefix] = layer
        return override
    updates: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        current = getattr(base, name)
        path = f"{prefix}.{name}"
        if isinstance(value, BaseModel) and isinstance(current, BaseModel):
            updates[name] = _merge(current, value, layer, path, sources)
        else:
            updates[name] = value
            sources[path] = layer
    return base.model_copy(update=updates) if updates else base


PathPredicate = Callable[[str], bool]


def compile_path_match(match: PathMatch) -> tuple[PathPredicate, frozenset[str]]:
    """A fast predicate for a path rule, and the set of methods (empty: any)."""
    methods = frozenset(match.methods)
    if match.path_exact is not None:
        exact = match.path_exact
        return (lambda path: path == exact), methods
    if match.path_prefix is not None:
        prefix = match.path_prefix.rstrip("/")
        if not prefix:
            return (lambda path: True), methods
        slash = prefix + "/"
        return (lambda path: path == prefix or path.startswith(slash)), methods
    if match.path_template is not None:
        pattern = re.sub(r"\\\{[A-Za-z_][A-Za-z0-9_]*\\\}", "[^/]+", re.escape(match.path_template))
        regex = re.compile(pattern + r"\Z")
        return (lambda path: regex.match(path) is not None), methods
    return (lambda path: True), methods


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    index: int
    path: PathPredicate
    methods: frozenset[str]
    headers: tuple[tuple[str, str], ...]

    def matches(self, method: str, path: str, headers: Mapping[str, str] | None) -> bool:
        if self.methods and method not in self.methods:
            return False
        if not self.path(path):
            return False
        if self.headers:
            if headers is None:
                return False
            for name, value in self.headers:
                if headers.get(name) != value:
                    return False
        return True


def _compile_route(index: int, match: RouteMatch) -> _CompiledRoute:
    path, methods = compile_path_match(match)
    return _CompiledRoute(index, path, methods, tuple(match.headers.items()))


class Resolver:
    """Resolves calls against one policy snapshot, memoising per (destination, route)."""

    __slots__ = ("_cache", "_policy", "_routes")

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._routes: dict[str, tuple[_CompiledRoute, ...]] = {
            name: tuple(_compile_route(i, r.match) for i, r in enumerate(svc.routes))
            for name, svc in policy.services.items()
        }
        self._cache: dict[tuple[str | None, int], EffectivePolicy] = {}

    @property
    def policy(self) -> Policy:
        """The snapshot this resolver answers for."""
        return self._policy

    def route_index(
        self, service: str, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> int:
        """Index of the first matching route of `service`, or -1."""
        for route in self._routes.get(service, ()):
            if route.matches(method, path, headers):
                return route.index
        return -1

    def resolve(
        self,
        service: str | None,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
    ) -> EffectivePolicy:
        """The effective policy of a call; `service=None` (or unknown) gives `defaults`.

        `headers` must have lower-case names (httpx.Headers qualifies).
        """
        if service is not None and service not in self._policy.services:
            service = None
        index = -1 if service is None else self.route_index(service, method, path, headers)
        return self.layered(service, index)

    def layered(self, service: str | None, route_index: int = -1) -> EffectivePolicy:
        """[`effective`][meshlib.policy.resolve.Resolver.effective], memoised per (service, route)."""
        key = (service, route_index)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self.effective(service, route_index)
        return found

    def effective(self, service: str | None, route_index: int = -1) -> EffectivePolicy:
        """Merge the layers for a service and a route index (-1: no route), without the memo."""
        policy = self._policy
        defaults = policy.defaults
        sources: dict[str, str] = {}
        values: dict[str, Any] = {name: getattr(defaults, name) for name in _LAYERED}
        if service is None:
            return EffectivePolicy(service=None, route_name=None, **values)
        svc = policy.services[service]
        layer = f"services.{service}"
        for name in _LAYERED:
            values[name] = _merge(values[name], getattr(svc, name), layer, name, sources)
        route_name = None
        split: tuple[SplitTarget, ...] = ()
        if route_index >= 0:
            route: Route = svc.routes[route_index]
            route_name = route.name or f"routes[{route_index}]"
            layer = f"services.{service}.routes[{route_index}]"
            for name in _ROUTE_LAYERED:
                values[name] = _merge(values[name], getattr(route, name), layer, name, sources)
            split = route.split
        return EffectivePolicy(
            service=service,
            route_name=route_name,
            endpoints=svc.endpoints,
            identity=svc.identity,
            split=split,
            sources=sources,
            route_index=route_index,
            **values,
        )


def resolver_for(policy: Policy) -> Resolver:
    """The memoising resolver attached to a policy snapshot (built on first use)."""
    resolver = policy._resolver
    # model_copy() carries private attributes over, so check the resolver is ours.
    if not isinstance(resolver, Resolver) or resolver.policy is not policy:
        resolver = Resolver(policy)
        policy._resolver = resolver
    return resolver


def resolve(
    policy: Policy,
    destination: str | None,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
) -> EffectivePolicy:
    """The policy that applies to `method path` on `destination`; memoised per snapshot."""
    return resolver_for(policy).resolve(destination, method.upper(), path, headers)


def _check_effective(
    eff: EffectivePolicy, where: tuple[str | int, ...], issues: list[PolicyIssue]
) -> None:
    t = eff.timeouts
    if t.attempt > t.total:
        loc = (*where, "timeouts", "attempt")
        issues.append(
            PolicyIssue(
                f"the attempt timeout ({t.attempt:g}s) is longer than the total ({t.total:g}s) that "
                "covers every attempt; lower timeouts.attempt or raise timeouts.total",
                format_loc(loc),
            )
        )
    b = eff.retry.backoff
    if b.base > b.max:
        loc = (*where, "retry", "backoff", "base")
        issues.append(
            PolicyIssue(
                f"backoff base ({b.base:g}s) is larger than backoff max ({b.max:g}s); "
                "base is the first wait and max the cap",
                format_loc(loc),
            )
        )
    o = eff.outlier_detection
    if o.base_ejection_time > o.max_ejection_time:
        loc = (*where, "outlier_detection", "base_ejection_time")
        issues.append(
            PolicyIssue("base_ejection_time is longer than max_ejection_time", format_loc(loc))
        )


def check_policy(policy: Policy) -> None:
    """Cross-field rules the models cannot check alone; raises PolicyError naming each field."""
    issues: list[PolicyIssue] = []
    # The snapshot's own memoising resolver: what is merged here is what calls will use.
    resolver = resolver_for(policy)
    _check_effective(resolver.layered(None), ("defaults",), issues)
    for name, svc in policy.services.items():
        _check_effective(resolver.layered(name), ("services", name), issues)
        for i, route in enumerate(svc.routes):
            where: tuple[str | int, ...] = ("services", name, "routes", i)
            _check_effective(resolver.layered(name, i), where, issues)
            for j, target in enumerate(route.split):
                if target.service not in policy.services:
                    known = ", ".join(sorted(policy.services)) or "none"
                    issues.append(
                        PolicyIssue(
                            f"split names service {target.service!r}, which is not in services "
                            f"(known: {known})",
                            format_loc((*where, "split", j, "service")),
                        )
                    )
    # Imported here: reachability builds on this module.
    from meshlib.policy.reachability import check_reachability

    issues += check_reachability(policy, resolver)
    if issues:
        raise PolicyError(issues)
