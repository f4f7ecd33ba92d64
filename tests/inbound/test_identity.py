"""Caller identity from the mTLS peer certificate and authz decisions, over real TLS servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509

from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore

from .certs import Issued, TestCA
from .conftest import Telemetry
from .twins import KINDS, Twin, serve_twin

ORDERS = "spiffe://example.org/orders"
RULE = "services.payments.inbound.authz.rules[0]"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA with certificates for the server and for callers."""
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def certs(ca: TestCA) -> dict[str, Issued]:
    """Client certificates: orders (allowed), billing (not), and one with no SPIFFE ID."""
    return {
        "server": ca.server(),
        "orders": ca.spiffe("orders"),
        "billing": ca.spiffe("billing"),
        "dns-only": ca.issue("dns-only", x509.DNSName("orders.example.org")),
    }


@pytest.fixture(params=KINDS)
def twin(
    request: pytest.FixtureRequest, ca: TestCA, certs: dict[str, Issued], telemetry: Telemetry
) -> Iterator[Twin]:
    """The twin over TLS asking for client certificates; only orders may call /items."""
    inbound = {
        "authz": {"default": "deny", "rules": [{"path_prefix": "/items", "allow": [ORDERS]}]}
    }
    store = PolicyStore(
        Policy.model_validate({"version": 1, "services": {"payments": {"inbound": inbound}}})
    )
    server = certs["server"]
    with serve_twin(
        request.param,
        store,
        telemetry,
        tls=(str(server.cert), str(server.key), str(ca.path)),
        wsgi_ssl=ca.server_context(server),
    ) as running:
        yield running


def call(twin: Twin, ca: TestCA, client: Issued | None, **kwargs: Any) -> httpx.Response:
    with httpx.Client(verify=ca.client_context(client), timeout=10) as http:
        return http.get(f"https://127.0.0.1:{twin.server.port}/items/7", **kwargs)


def denied_points(telemetry: Telemetry, count: int) -> list[tuple[dict[str, Any], Any]]:
    deadline = time.monotonic() + 5
    while True:
        points = telemetry.points("meshlib.server.denied")
        if sum(p.value for _, p in points) >= count or time.monotonic() > deadline:
            return points
        time.sleep(0.005)


def test_allowed_identity_gets_200(
    twin: Twin, ca: TestCA, certs: dict[str, Issued], telemetry: Telemetry
) -> None:
    """The certificate's SPIFFE ID matches the rule: the request reaches the app."""
    response = call(twin, ca, certs["orders"])
    assert response.status_code == 200
    assert twin.state.hits == 1


@pytest.mark.parametrize("caller", ["billing", "dns-only", None])
def test_other_callers_get_403_naming_no_internals(
    twin: Twin, ca: TestCA, certs: dict[str, Issued], telemetry: Telemetry, caller: str | None
) -> None:
    """Wrong identity, no SPIFFE ID or no certificate: 403 'forbidden', the rule recorded."""
    response = call(twin, ca, certs[caller] if caller else None)
    assert response.status_code == 403
    assert response.text == "forbidden\n"
    assert twin.state.hits == 0
    ((attributes, point),) = denied_points(telemetry, 1)
    assert attributes["meshlib.authz.rule"] == RULE
    assert attributes["meshlib.caller"] == (
        "spiffe://example.org/billing" if caller == "billing" else ""
    )
    assert point.value == 1


def test_headers_cannot_assert_an_identity(
    twin: Twin, ca: TestCA, certs: dict[str, Issued], telemetry: Telemetry
) -> None:
    """Headers that look like identity (forwarded client certs) are ignored."""
    headers = {
        "ssl-client-cert": certs["orders"].pem.replace("\n", ""),
        "x-forwarded-client-cert": f"URI={ORDERS}",
        "x-client-identity": ORDERS,
    }
    assert call(twin, ca, None, headers=headers).status_code == 403
    assert call(twin, ca, certs["billing"], headers=headers).status_code == 403


def test_decision_is_on_the_span(
    twin: Twin, ca: TestCA, certs: dict[str, Issued], telemetry: Telemetry
) -> None:
    """The SERVER span carries the decision, the rule and the caller; a denial adds an event."""
    call(twin, ca, certs["orders"])
    call(twin, ca, certs["billing"])
    deadline = time.monotonic() + 5
    while len(telemetry.spans()) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    allowed, denied = sorted(telemetry.spans(), key=lambda s: s.start_time or 0)
    assert (allowed.attributes or {})["meshlib.authz.decision"] == "allow"
    assert (allowed.attributes or {})["meshlib.caller"] == ORDERS
    assert (denied.attributes or {})["meshlib.authz.decision"] == "deny"
    assert (denied.attributes or {})["meshlib.authz.rule"] == RULE
    assert [e.name for e in denied.events] == ["meshlib.denied"]
