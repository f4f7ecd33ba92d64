"""Who may call this service: the `inbound.authz` rules compiled once per policy snapshot.

The first rule whose path and methods match decides; when none matches,
`default` decides. A rule allows the SPIFFE IDs it lists, or `*` for any
caller with a verified identity; a caller without one (no client
certificate) is never allowed by a rule. Each decision names the rule that
made it, for telemetry and `policy explain`.

Rules see the request as the app's router will: the path exactly as routed
(the middleware refuses paths not in normal form first, see
`meshlib.inbound.paths`), the method upper-cased (werkzeug routes
`get` as `GET`), and a `GET` rule also covers `HEAD`, which
Starlette, FastAPI and Flask all answer with the `GET` handler:

```python
authz = CompiledAuthz.compile(policy.services["payments"].inbound.authz, "services.payments")
decision = authz.decide("POST", "/v1/charges", "spiffe://example.org/orders")
decision.allowed, decision.rule   # True, 'services.payments.inbound.authz.rules[0]'
```
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshlib.policy.model import Authz
from meshlib.policy.resolve import PathPredicate, compile_path_match

__all__ = ["AuthzDecision", "CompiledAuthz", "as_routed", "routed_methods"]


def routed_methods(methods: Iterable[str]) -> frozenset[str]:
    """The methods a rule listing `methods` covers: `HEAD` too when `GET` is listed (empty: any)."""
    covered = frozenset(methods)
    return covered | {"HEAD"} if "GET" in covered else covered


def as_routed(method: str) -> str:
    """The method as routers compare it: upper case (`"get"` -> `"GET"`)."""
    return method if method.isupper() else method.upper()


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """An authz verdict and the policy location of the rule that made it."""

    allowed: bool
    rule: str
    """e.g. `services.payments.inbound.authz.rules[0]` or `...authz.default`."""


@dataclass(frozen=True, slots=True)
class _Rule:
    path: PathPredicate
    methods: frozenset[str]
    identities: frozenset[str]
    any_identity: bool
    allow: AuthzDecision
    deny: AuthzDecision


class CompiledAuthz:
    """The authz section of one policy snapshot, ready to decide in a few comparisons."""

    __slots__ = ("_default", "_rules", "active", "shadow")

    def __init__(self, rules: tuple[_Rule, ...], default: AuthzDecision, shadow: bool) -> None:
        self._rules = rules
        self._default = default
        self.shadow = shadow
        self.active = bool(rules) or not default.allowed
        """False when every request is allowed anyway, so the caller may skip identity work."""

    @classmethod
    def compile(cls, authz: Authz, where: str) -> CompiledAuthz:
        """Compile `authz` found at `where` (e.g. `services.payments`) in the policy."""
        base = f"{where}.inbound.authz"
        rules = []
        for index, rule in enumerate(authz.rules):
            path, methods = compile_path_match(rule.path_match())
            name = f"{base}.rules[{index}]"
            rules.append(
                _Rule(
                    path=path,
                    methods=routed_methods(methods),
                    identities=frozenset(i for i in rule.allow if i != "*"),
                    any_identity="*" in rule.allow,
                    allow=AuthzDecision(True, name),
                    deny=AuthzDecision(False, name),
                )
            )
        default = AuthzDecision(authz.default == "allow", f"{base}.default")
        return cls(tuple(rules), default, authz.mode == "shadow")

    def decide(self, method: str, path: str, identity: str | None) -> AuthzDecision:
        """The decision for a caller (`None`: no verified identity) on `method path`.

        `path` is judged as given: the middleware has refused it already
        unless it is in normal form.
        """
        if self._rules:
            method = as_routed(method)
            for rule in self._rules:
                if (not rule.methods or method in rule.methods) and rule.path(path):
                    if identity is not None and (rule.any_identity or identity in rule.identities):
                        return rule.allow
                    return rule.deny
        return self._default
