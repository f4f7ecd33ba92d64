"""Authz rules compiled from the policy: first match decides, naming its rule."""

from __future__ import annotations

from meshlib.inbound.authz import CompiledAuthz
from meshlib.policy.model import Authz

ORDERS = "spiffe://example.org/orders"
BILLING = "spiffe://example.org/billing"


def compile_authz(**data: object) -> CompiledAuthz:
    return CompiledAuthz.compile(Authz.model_validate(data), "services.payments")


def test_default_allow_without_rules_is_inactive() -> None:
    """The default policy allows everyone and needs no identity work."""
    authz = compile_authz()
    assert not authz.active
    decision = authz.decide("GET", "/x", None)
    assert decision.allowed
    assert decision.rule == "services.payments.inbound.authz.default"


def test_first_matching_rule_decides_and_is_named() -> None:
    """Rules are tried in order; the decision names the rule's policy location."""
    authz = compile_authz(
        default="deny",
        rules=[
            {"path_prefix": "/v1/refunds", "methods": ["POST"], "allow": [BILLING]},
            {"path_prefix": "/v1/", "allow": [ORDERS, BILLING]},
        ],
    )
    refund = authz.decide("POST", "/v1/refunds/7", ORDERS)
    assert not refund.allowed
    assert refund.rule.endswith("authz.rules[0]")
    assert authz.decide("POST", "/v1/refunds/7", BILLING).allowed
    charge = authz.decide("GET", "/v1/refunds/7", ORDERS)
    assert charge.allowed
    assert charge.rule.endswith("authz.rules[1]")
    other = authz.decide("GET", "/admin", ORDERS)
    assert not other.allowed
    assert other.rule.endswith("authz.default")


def test_wildcard_allows_any_verified_identity_but_not_none() -> None:
    """'*' admits any caller with a certificate identity, never an anonymous one."""
    authz = compile_authz(default="allow", rules=[{"path_exact": "/private", "allow": ["*"]}])
    assert authz.decide("GET", "/private", ORDERS).allowed
    anonymous = authz.decide("GET", "/private", None)
    assert not anonymous.allowed
    assert anonymous.rule.endswith("rules[0]")


def test_templates_match_one_segment() -> None:
    """path_template {name} matches exactly one segment."""
    authz = compile_authz(default="deny", rules=[{"path_template": "/v1/{id}/x", "allow": ["*"]}])
    assert authz.decide("GET", "/v1/7/x", ORDERS).allowed
    assert not authz.decide("GET", "/v1/7/8/x", ORDERS).allowed


def test_get_rules_cover_head_and_methods_are_compared_upper_case() -> None:
    """A GET rule also decides HEAD (frameworks answer it with the GET handler); 'post' is POST."""
    authz = compile_authz(
        default="allow",
        rules=[
            {"path_prefix": "/reports", "methods": ["GET"], "allow": [BILLING]},
            {"path_prefix": "/admin", "methods": ["POST"], "allow": [BILLING]},
        ],
    )
    assert not authz.decide("HEAD", "/reports/1", ORDERS).allowed
    assert authz.decide("HEAD", "/reports/1", BILLING).allowed
    assert not authz.decide("post", "/admin", ORDERS).allowed
    assert authz.decide("OPTIONS", "/reports/1", ORDERS).allowed


def test_shadow_mode_is_reported() -> None:
    """mode: shadow is carried for the core to record instead of enforcing."""
    assert compile_authz(default="deny", mode="shadow").shadow
