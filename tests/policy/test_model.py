"""The policy model: defaults, shorthands, durations and the validation users rely on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from meshlib import Policy, PolicyError, load_policy
from meshlib.policy.durations import format_duration, parse_duration


def _policy(**services: Any) -> dict[str, Any]:
    """A document with `services`, each given an endpoint unless it says where its endpoints are."""
    for service in services.values():
        if "endpoints" not in service and "discovery" not in service:
            service["endpoints"] = ["http://127.0.0.1:8001"]
    return {"version": 1, "services": services}


def _fields(exc: pytest.ExceptionInfo[PolicyError]) -> list[str]:
    return [issue.field for issue in exc.value.issues]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    """Durations are a number and a unit; they become seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2", "2 sec", "-1s", "", "1d", True])
def test_bad_durations_are_refused(bad: object) -> None:
    """Anything without a known unit is refused with the units to use."""
    with pytest.raises(ValueError, match=r"ms, s, m, h|duration"):
        parse_duration(bad)


def test_bare_number_duration_says_to_add_a_unit() -> None:
    """A bare number gets a message suggesting '2s' and '2ms'."""
    with pytest.raises(ValueError, match="write '2s' for seconds or '2ms'"):
        parse_duration(2)


@pytest.mark.parametrize("seconds", [0.025, 0.25, 1.0, 2.0, 60.0, 90.0, 3600.0, 1.5])
def test_durations_round_trip(seconds: float) -> None:
    """Formatting then parsing gives the same number of seconds."""
    assert parse_duration(format_duration(seconds)) == seconds


def test_timedelta_is_accepted_in_code() -> None:
    """Code may pass a timedelta where documents write '2s'."""
    policy = load_policy(
        {"version": 1, "defaults": {"timeouts": {"attempt": timedelta(seconds=2)}}}
    )
    assert policy.defaults.timeouts.attempt == 2.0


def test_minimal_document_gets_the_documented_defaults() -> None:
    """`version: 1` alone is a valid policy with DESIGN.md's defaults."""
    policy = load_policy({"version": 1})
    assert policy.defaults.timeouts.total == 10.0
    assert policy.defaults.retry.attempts == 3
    assert policy.defaults.retry.methods == ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    assert policy.defaults.load_balancer == "round_robin"
    assert policy.trust_domain == "cluster.local"


def test_models_are_frozen() -> None:
    """A policy cannot be changed in place; a new one must be loaded."""
    policy = load_policy({"version": 1})
    with pytest.raises(ValueError, match="frozen"):
        policy.defaults.retry.attempts = 5  # type: ignore[misc]


def test_endpoint_shorthand_and_normalisation() -> None:
    """A string endpoint is {url: ...}; a trailing slash is dropped."""
    policy = load_policy(
        _policy(a={"endpoints": ["http://127.0.0.1:80/", {"url": "https://h:1", "zone": "z"}]})
    )
    endpoints = policy.services["a"].endpoints
    assert [e.url for e in endpoints] == ["http://127.0.0.1:80", "https://h:1"]
    assert endpoints[1].zone == "z"


@pytest.mark.parametrize(
    ("service", "field", "message"),
    [
        ({"retry": {"attempts": 0}}, "services.a.retry.attempts", "at least 1"),
        ({"endpoints": ["127.0.0.1:80"]}, "services.a.endpoints[0]", "not an absolute URL"),
        ({"endpoints": ["http://h/v1"]}, "services.a.endpoints[0]", "without a path"),
        ({"endpoints": ["http://h:99999"]}, "services.a.endpoints[0]", "out of range"),
        ({"endpoints": ["http://h", "http://h"]}, "services.a.endpoints", "listed twice"),
        ({"identity": "payments"}, "services.a.identity", "not a SPIFFE ID"),
        ({"retry": {"retry_on": ["flaky"]}}, "services.a.retry.retry_on", "unknown retry_on"),
        ({"retry": {"methods": ["FETCH"]}}, "services.a.retry.methods", "not an HTTP method"),
        ({"timeouts": {"total": "0s"}}, "services.a.timeouts.total", "longer than 0"),
        ({"load_balancer": "random"}, "services.a.load_balancer", "round_robin"),
        (
            {"routes": [{"match": {"path_prefix": "v1"}}]},
            "services.a.routes[0].match.path_prefix",
            "starts with '/'",
        ),
        (
            {"routes": [{"match": {"path_prefix": "/a", "path_exact": "/a"}}]},
            "services.a.routes[0].match",
            "only one of",
        ),
        (
            {"routes": [{"split": [{"service": "a", "weight": 0}]}]},
            "services.a.routes[0].split",
            "more than 0",
        ),
        (
            {"inbound": {"rate_limit": {"requests_per_second": 0}}},
            "services.a.inbound.rate_limit.requests_per_second",
            "greater than 0",
        ),
    ],
)
def test_invalid_fields_are_named(service: dict[str, Any], field: str, message: str) -> None:
    """Each invalid value is reported at its dotted field with a message saying what to write."""
    with pytest.raises(PolicyError) as exc:
        load_policy(_policy(a=service))
    assert field in _fields(exc)
    assert message in str(exc.value)


def test_unknown_key_suggests_the_right_one() -> None:
    """An unknown key is an error that suggests the closest known key."""
    with pytest.raises(PolicyError) as exc:
        load_policy(_policy(a={"retry": {"atempts": 2}}))
    assert exc.value.field == "services.a.retry.atempts"
    assert "did you mean 'attempts'?" in str(exc.value)


def test_bad_service_name() -> None:
    """Service names are DNS labels, since they appear as URL hosts."""
    with pytest.raises(PolicyError, match="must be a DNS label"):
        load_policy(_policy(Payments_API={}))


def test_attempt_timeout_longer_than_total_is_refused_at_the_layer_that_set_it() -> None:
    """The cross-field rule names the route field that breaks it."""
    doc = _policy(
        a={"routes": [{"match": {"path_prefix": "/slow"}, "timeouts": {"attempt": "20s"}}]}
    )
    with pytest.raises(PolicyError) as exc:
        load_policy(doc)
    assert _fields(exc) == ["services.a.routes[0].timeouts.attempt"]
    assert "lower timeouts.attempt or raise timeouts.total" in str(exc.value)


def test_split_to_unknown_service_is_refused() -> None:
    """A split target must be a service in the policy."""
    doc = _policy(a={"routes": [{"split": [{"service": "b", "weight": 1}]}]})
    with pytest.raises(PolicyError) as exc:
        load_policy(doc)
    assert _fields(exc) == ["services.a.routes[0].split[0].service"]


def test_backoff_base_above_max_is_refused() -> None:
    """Backoff base must not exceed its cap."""
    with pytest.raises(PolicyError, match="larger than backoff max"):
        load_policy({"version": 1, "defaults": {"retry": {"backoff": {"base": "2s", "max": "1s"}}}})


def test_every_problem_is_reported_at_once() -> None:
    """Several invalid fields give several issues, not just the first."""
    with pytest.raises(PolicyError) as exc:
        load_policy(_policy(a={"retry": {"attempts": 0}, "endpoints": ["nope"]}))
    assert len(exc.value.issues) == 2


def test_wrong_version_is_refused() -> None:
    """Only version 1 exists."""
    with pytest.raises(PolicyError) as exc:
        load_policy({"version": 2})
    assert exc.value.field == "version"


def test_service_identity_defaults_to_trust_domain() -> None:
    """A service without `identity` proves spiffe://<trust_domain>/<name>."""
    policy = Policy.model_validate(
        {"version": 1, "trust_domain": "example.org", "services": {"a": {}}}
    )
    assert policy.service_identity("a") == "spiffe://example.org/a"


def test_concurrency_limit_shorthand() -> None:
    """`concurrency_limit: 64` is shorthand for {limit: 64}."""
    policy = load_policy(_policy(a={"inbound": {"concurrency_limit": 64}}))
    limit = policy.services["a"].inbound.concurrency_limit
    assert limit is not None
    assert limit.limit == 64
    assert limit.mode == "enforce"


def test_json_schema_is_generated() -> None:
    """The JSON Schema comes from the models, durations as patterned strings."""
    schema = Policy.model_json_schema()
    timeouts = schema["$defs"]["Timeouts"]["properties"]["total"]
    assert timeouts["type"] == "string"
    assert "ms" in timeouts["pattern"]


@pytest.mark.parametrize(
    "service",
    [
        {"endpoints": []},
        {"retry": {"attempts": 2}},
        {"identity": "spiffe://cluster.local/a"},
        {"routes": [{"match": {"path_prefix": "/v1"}}]},
        {"discovery": {"health_check": {"path": "/healthz"}}, "endpoints": []},
    ],
)
def test_a_called_service_without_endpoints_or_discovery_is_refused(
    service: dict[str, Any],
) -> None:
    """Every call to it would fail with NoEndpointsError: refused at load, naming the field."""
    with pytest.raises(PolicyError) as exc:
        load_policy({"version": 1, "services": {"a": service}})
    assert _fields(exc) == ["services.a.endpoints"]
    assert "no endpoints and no discovery" in str(exc.value)


def test_a_split_target_without_endpoints_is_refused() -> None:
    """A service only named by another's split still needs somewhere to send its share."""
    doc = {
        "version": 1,
        "services": {
            "a": {
                "endpoints": ["http://127.0.0.1:8001"],
                "routes": [{"split": [{"service": "b", "weight": 1}]}],
            },
            "b": {"inbound": {"authz": {"default": "deny"}}},
        },
    }
    with pytest.raises(PolicyError) as exc:
        load_policy(doc)
    assert _fields(exc) == ["services.b.endpoints"]


@pytest.mark.parametrize(
    "service",
    [
        {"inbound": {"authz": {"default": "deny"}}},
        {},
        {"discovery": {"registry": True}},
        {"discovery": {"dns": {"name": "a.internal", "port": 80}}},
    ],
)
def test_services_listed_for_their_inbound_rules_or_discovered_need_no_endpoints(
    service: dict[str, Any],
) -> None:
    """A service nobody is configured to call, or one whose endpoints are discovered, loads."""
    load_policy({"version": 1, "services": {"a": service}})
