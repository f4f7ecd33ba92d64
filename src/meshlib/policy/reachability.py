"""Can each service be reached, and reached as securely as the policy promises?

Two checks every policy passes at load, validate and publish time, each
naming the field to fix:

- **No plaintext under a promise of TLS.** Under `tls.mode: tls` or
  `mutual` (the service's own, else `defaults`), an `http://` endpoint is an
  error unless `tls.allow_plaintext` names its origin, and so is
  `discovery.dns.scheme: http`. Endpoints only known at run time (the
  registry, a direct URL) are refused then, with
  [`TLSRequiredError`][meshlib.errors.TLSRequiredError].
- **A service that is called has somewhere to send calls.** A service with
  outbound settings (`endpoints`, `routes`, `retry`, `tls`, `identity`...)
  or named by a `split` needs endpoints or discovery (`dns` or
  `registry`); otherwise every call to it would fail with
  [`NoEndpointsError`][meshlib.errors.NoEndpointsError]. A service listed
  only for its own `inbound` rules needs neither.

```python
issues = check_reachability(policy, Resolver(policy))   # [] for a sound policy
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meshlib.errors import PolicyIssue
from meshlib.policy.model import Service
from meshlib.policy.resolve import format_loc

if TYPE_CHECKING:
    from meshlib.policy.model import Policy
    from meshlib.policy.resolve import Resolver

__all__ = ["check_reachability"]

_OUTBOUND_FIELDS = frozenset(Service.model_fields) - {"inbound", "discovery"}
"""What a service says to its callers: setting any of it means it is meant to be called."""


def _is_called(name: str, service: Service, split_targets: set[str]) -> bool:
    return name in split_targets or not _OUTBOUND_FIELDS.isdisjoint(service.model_fields_set)


def check_reachability(policy: Policy, resolver: Resolver) -> list[PolicyIssue]:
    """Every plaintext endpoint under a TLS mode, and every called service with no endpoints."""
    issues: list[PolicyIssue] = []
    split_targets = {
        target.service
        for service in policy.services.values()
        for route in service.routes
        for target in route.split
    }
    for name, service in policy.services.items():
        where = ("services", name)
        effective = resolver.layered(name)
        tls = effective.tls
        if tls.mode != "disabled":
            promise = f"tls.mode is {tls.mode!r} (set in {effective.source_of('tls.mode')})"
            for index, endpoint in enumerate(service.endpoints):
                parts = urlsplit(endpoint.url)
                if not tls.allows_plaintext(parts.scheme, parts.hostname or "", parts.port):
                    issues.append(
                        PolicyIssue(
                            f"{endpoint.url} would be called in plain HTTP, but {promise}: use "
                            "https://, or name the origin in tls.allow_plaintext",
                            format_loc((*where, "endpoints", index)),
                        )
                    )
            dns = service.discovery.dns if service.discovery is not None else None
            if dns is not None and dns.scheme == "http":
                issues.append(
                    PolicyIssue(
                        f"endpoints found by DNS would be called in plain HTTP, but {promise}: "
                        "set scheme: https",
                        format_loc((*where, "discovery", "dns", "scheme")),
                    )
                )
        discovery = service.discovery
        discovers = discovery is not None and (discovery.dns is not None or discovery.registry)
        if not service.endpoints and not discovers and _is_called(name, service, split_targets):
            issues.append(
                PolicyIssue(
                    f"service {name!r} has no endpoints and no discovery, so every call to it "
                    "would fail: list endpoints, or add discovery (dns or registry: true)",
                    format_loc((*where, "endpoints")),
                )
            )
    return issues
