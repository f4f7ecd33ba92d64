"""Resolution: defaults <- service <- route, route matching, provenance and the memo."""

from __future__ import annotations

import pytest

from meshlib import parse_policy
from meshlib.policy.resolve import resolve, resolver_for
from tests.policy.conftest import GOOD_YAML


@pytest.fixture
def policy():  # type: ignore[no-untyped-def]
    """The reference policy."""
    return parse_policy(GOOD_YAML, source="mesh.yaml")


def test_unknown_destination_gets_defaults(policy) -> None:  # type: ignore[no-untyped-def]
    """A host not in the policy is called under `defaults`, with no endpoints."""
    eff = resolve(policy, "example.com", "GET", "/")
    assert eff.service is None
    assert eff.endpoints == ()
    assert eff.retry.attempts == 3
    assert eff.source_of("retry.attempts") == "defaults"


def test_service_layer_overrides_only_what_it_spells_out(policy) -> None:  # type: ignore[no-untyped-def]
    """`retry: {attempts: 2}` keeps the default backoff and budget."""
    eff = resolve(policy, "payments", "GET", "/v1/charges")
    assert eff.route_name is None
    assert eff.retry.attempts == 2
    assert eff.retry.backoff.base == 0.025
    assert eff.source_of("retry.attempts") == "services.payments"
    assert eff.source_of("retry.backoff.base") == "defaults"
    assert eff.fault.abort is not None
    assert eff.source_of("fault.abort.status") == "services.payments"


def test_route_layer_merges_nested_keys(policy) -> None:  # type: ignore[no-untyped-def]
    """A route's backoff.max keeps the service's attempts and the default backoff.base."""
    eff = resolve(policy, "payments", "POST", "/v1/refunds/7")
    assert eff.route_name == "refunds"
    assert eff.timeouts.total == 30.0
    assert eff.retry.backoff.max == 2.0
    assert eff.retry.attempts == 2
    assert eff.retry.backoff.base == 0.025
    assert eff.source_of("timeouts.total") == "services.payments.routes[0]"
    assert eff.source_of("retry.backoff.max") == "services.payments.routes[0]"
    assert eff.source_of("retry.attempts") == "services.payments"
    assert eff.source_of("timeouts.connect") == "defaults"


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1/refunds", "refunds"),
        ("POST", "/v1/refunds/7/items", "refunds"),
        ("POST", "/v1/refundsx", None),
        ("GET", "/v1/refunds", None),
    ],
)
def test_prefix_matches_whole_segments_and_methods(
    policy, method: str, path: str, route: str | None
) -> None:  # type: ignore[no-untyped-def]
    """path_prefix matches whole segments; methods must match."""
    assert resolve(policy, "payments", method, path).route_name == route


def test_template_and_header_match(policy) -> None:  # type: ignore[no-untyped-def]
    """A template matches one segment per {name}; header values must match exactly."""
    headers = {"x-canary": "yes"}
    eff = resolve(policy, "payments", "GET", "/v1/charges/42", headers)
    assert eff.route_name == "routes[1]"
    assert [t.service for t in eff.split] == ["payments", "payments-v2"]
    assert resolve(policy, "payments", "GET", "/v1/charges/42/x", headers).route_name is None
    assert (
        resolve(policy, "payments", "GET", "/v1/charges/42", {"x-canary": "no"}).route_name is None
    )
    assert resolve(policy, "payments", "GET", "/v1/charges/42").route_name is None


def test_explicit_null_clears_an_inherited_value() -> None:
    """`fault: {abort: null}` on a route switches off the service's abort."""
    policy = parse_policy(
        "version: 1\nservices:\n  a:\n    endpoints: [http://127.0.0.1:8001]\n"
        "    fault: {abort: {status: 503, percent: 50}}\n"
        "    routes:\n      - match: {path_prefix: /safe}\n        fault: {abort: null}\n"
    )
    assert resolve(policy, "a", "GET", "/x").fault.abort is not None
    eff = resolve(policy, "a", "GET", "/safe")
    assert eff.fault.abort is None
    assert eff.source_of("fault.abort") == "services.a.routes[0]"


def test_resolution_is_memoised_per_snapshot(policy) -> None:  # type: ignore[no-untyped-def]
    """The same (destination, route) gives the same object; a new policy gets a new resolver."""
    first = resolve(policy, "payments", "GET", "/a")
    assert resolve(policy, "payments", "HEAD", "/b") is first
    copy = policy.model_copy()
    assert resolver_for(copy) is not resolver_for(policy)
    assert resolver_for(copy).policy is copy


def test_the_load_time_checks_fill_the_snapshots_resolver(policy) -> None:  # type: ignore[no-untyped-def]
    """What validation merged for each service is what calls get, not merged a second time."""
    cached = resolver_for(policy).layered("payments")
    assert resolver_for(policy).layered("payments") is cached
    assert resolve(policy, "payments", "GET", "/nowhere") is cached


def test_leaves_cover_every_setting(policy) -> None:  # type: ignore[no-untyped-def]
    """`leaves()` lists each leaf setting once, for `policy explain`."""
    names = [name for name, _ in resolve(policy, "payments").leaves()]
    assert "retry.budget.ratio" in names
    assert "load_balancer" in names
    assert len(names) == len(set(names))


def test_resolving_does_not_change_equality() -> None:
    """The memoising resolver is a cache: equal documents stay equal policies after resolution."""
    first, second = parse_policy(GOOD_YAML), parse_policy(GOOD_YAML)
    resolve(first, "payments", "GET", "/")
    resolve(second, "payments", "POST", "/v1/refunds")
    assert first == second
    assert first != parse_policy(GOOD_YAML.replace("attempts: 2", "attempts: 3"))
