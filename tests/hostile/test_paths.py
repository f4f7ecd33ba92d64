"""Authz decides on the path the app routes: hostile path forms through Starlette, FastAPI and Flask.

The policy lets `orders` call only under `/v1/` (default deny). An
attacker holding the `orders` certificate tries every way to spell a path
outside `/v1/` that a cleaned-up decision would judge as inside it: dot
segments plain and encoded, encoded slashes and backslashes, overlong UTF-8,
NUL, `;` parameters, absolute-form targets. Each is either refused with
400 before the app, or reaches the `v1` handler; the `admin` and
catch-all handlers never run.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from tests.inbound.certs import Issued, TestCA

from .apps import FRAMEWORKS, Service, raw_request, serve_service

ORDERS = "spiffe://example.org/orders"
OPS = "spiffe://example.org/ops"

# Paths a decision that cleans the path up would judge as /v1/..., while the app routes them
# elsewhere; each must be refused before the app (400).
TRAVERSALS = [
    b"/admin/../v1/x",
    b"/admin/%2e%2e/v1/x",
    b"/admin/%2E%2E/v1/x",
    b"/admin/..%2fv1/x",
    b"/admin%2f..%2fv1/x",
    b"/admin/.%2e/v1/x",
    b"/admin/./../v1/x",
    b"/admin/x/../../v1/x",
    b"/v1/../admin",
    b"/v1/%2e%2e/admin",
    b"/v1/..%2fadmin",
    b"/v1%2f..%2fadmin",
    b"/v1/..%2Fadmin",
    b"/v1/./../admin",
    b"/v1/x/..",
    b"/./v1/x",
    b"/v1//x",
    b"/v1/x\\..\\..\\admin",
    b"/v1\\..\\admin",
    b"/v1/%5c..%5cadmin",
    b"/v1/x%2fy",
    b"/v1/%c0%ae%c0%ae/admin",
    b"/v1/%c0%af..%c0%afadmin",
    b"/v1/%e0%80%ae%e0%80%ae/admin",
    b"/v1/%ff/../admin",
    b"/v1/%00/../../admin",
    b"/v1/x%00",
    b"/v1/x;/../../admin",
    b"/v1/x%0d%0aX-Injected:%201",
    b"*",
]
# Odd but unambiguous: every router and the policy agree; allowed under /v1/ or denied elsewhere.
UNAMBIGUOUS = [
    (b"/v1/..;/admin", "v1"),  # '..;' is a segment name, not '..'
    (b"/v1/%252e%252e/admin", "v1"),  # double encoding stays '%2e%2e' literally
    (b"/v1/%ef%bc%8e%ef%bc%8e/admin", "v1"),  # fullwidth dots are not dots
    (b"/v1/x;jsessionid=1", "v1"),
    (b"/v1", "v1"),  # path_prefix /v1/ matches /v1 (documented)
    (b"/admin;/v1/x", None),
    (b"/admin/v1/", None),
    (b"/v1x", None),  # segment-wise: /v1/ does not match /v1x
    (b"/V1/x", None),  # paths are case-sensitive, as routers compare them
]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA for the server and the callers."""
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def certs(ca: TestCA) -> dict[str, Issued]:
    """The server's certificate and the orders caller's."""
    return {"server": ca.server(), "orders": ca.spiffe("orders")}


@pytest.fixture(scope="module")
def orders(ca: TestCA, certs: dict[str, Issued]) -> ssl.SSLContext:
    """The attacker's TLS context: a valid certificate for orders."""
    return ca.client_context(certs["orders"])


def _store(inbound: dict[str, Any]) -> PolicyStore:
    return PolicyStore(
        Policy.model_validate(
            {
                "version": 1,
                "trust_domain": "example.org",
                "services": {"payments": {"inbound": inbound}},
            }
        )
    )


V1_ONLY = {"authz": {"default": "deny", "rules": [{"path_prefix": "/v1/", "allow": [ORDERS]}]}}


@pytest.fixture(scope="module", params=FRAMEWORKS)
def service(
    request: pytest.FixtureRequest, ca: TestCA, certs: dict[str, Issued]
) -> Iterator[tuple[Service, InMemoryMetricReader]]:
    """Each framework's app, allowing orders only under /v1/."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with serve_service(
        str(request.param), _store(V1_ONLY), ca, certs["server"], meter_provider=provider
    ) as running:
        yield running, reader
    provider.shutdown()


def _rejected(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    counts: dict[str, int] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "meshlib.server.rejected":
                    for point in metric.data.data_points:
                        reason = str((point.attributes or {})["meshlib.reject.reason"])
                        counts[reason] = counts.get(reason, 0) + int(point.value)
    return counts


def test_the_rule_works_for_plain_paths(
    service: tuple[Service, InMemoryMetricReader], orders: ssl.SSLContext
) -> None:
    """Controls: /v1/x reaches v1; /admin and the catch-all are denied."""
    running, _ = service
    assert raw_request(running, orders, b"/v1/x") == (200, "v1 /v1/x")
    assert raw_request(running, orders, b"/admin")[0] == 403
    assert raw_request(running, orders, b"/elsewhere")[0] == 403


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1"))
def test_ambiguous_paths_are_refused_before_the_app(
    service: tuple[Service, InMemoryMetricReader], orders: ssl.SSLContext, target: bytes
) -> None:
    """Each traversal spelling is a 400 naming the problem; no handler runs."""
    running, _ = service
    before = sum(running.hits.values())
    status, body = raw_request(running, orders, target)
    assert status == 400, body
    assert body.startswith("the request path ")
    assert sum(running.hits.values()) == before


def test_absolute_form_targets_are_judged_as_routed(
    service: tuple[Service, InMemoryMetricReader], orders: ssl.SSLContext
) -> None:
    """`GET https://host/admin/../v1/x` never reaches admin (uvicorn keeps the URL, werkzeug the path)."""
    running, _ = service
    port = running.server.port
    for target in (
        f"https://127.0.0.1:{port}/admin/../v1/x".encode(),
        f"https://127.0.0.1:{port}/admin".encode(),
    ):
        status, _ = raw_request(running, orders, target)
        assert status in (400, 403)
    assert running.hits["admin"] == running.hits["other"] == 0


@pytest.mark.parametrize(("target", "handler"), UNAMBIGUOUS, ids=lambda t: repr(t))
def test_unambiguous_odd_paths_are_decided_as_routed(
    service: tuple[Service, InMemoryMetricReader],
    orders: ssl.SSLContext,
    target: bytes,
    handler: str | None,
) -> None:
    """Odd paths every router reads one way reach v1 when under /v1/, else get 403."""
    running, _ = service
    status, body = raw_request(running, orders, target)
    if handler is None:
        assert status == 403, body
    else:
        assert status == 200, body
        assert body.split(" ")[0] == handler


def test_no_hostile_request_ever_reached_admin_or_the_catch_all(
    service: tuple[Service, InMemoryMetricReader], orders: ssl.SSLContext
) -> None:
    """After every form above (and lower-case, HEAD and POST methods), admin and other never ran."""
    running, _ = service
    for target in TRAVERSALS + [t for t, _ in UNAMBIGUOUS]:
        for method in (b"GET", b"HEAD", b"POST", b"get", b"post"):
            raw_request(running, orders, target, method)
    assert running.hits["admin"] == 0
    assert running.hits["other"] == 0


def test_refusals_are_counted_by_reason(
    service: tuple[Service, InMemoryMetricReader], orders: ssl.SSLContext
) -> None:
    """meshlib.server.rejected counts each refusal with its reason."""
    running, reader = service
    before = _rejected(reader)
    raw_request(running, orders, b"/v1/../admin")
    raw_request(running, orders, b"/v1/a%2Fb")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = _rejected(reader)
        if after.get("escaped-slash", 0) > before.get("escaped-slash", 0):
            break
        time.sleep(0.01)
    assert after.get("dot-segment", 0) == before.get("dot-segment", 0) + 1
    assert after.get("escaped-slash", 0) == before.get("escaped-slash", 0) + 1


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_refusals_and_denials_are_logged_with_caller_path_and_rule(
    framework: str,
    ca: TestCA,
    certs: dict[str, Issued],
    orders: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each refusal is an access-denied line on meshlib.access; a CRLF in the path stays escaped."""
    with (
        caplog.at_level(logging.WARNING, logger="meshlib.access"),
        serve_service(framework, _store(V1_ONLY), ca, certs["server"]) as running,
    ):
        raw_request(running, orders, b"/v1/../admin")
        raw_request(running, orders, b"/admin/%0d%0aforged")
        raw_request(running, orders, b"/admin")
        deadline = time.monotonic() + 5
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshlib.access"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("access denied: service=payments status=400 ")
    assert (
        f'caller="{ORDERS}" method=GET path="/v1/../admin" '
        "rule=path-normal-form reason=dot-segment client=127.0.0.1:" in lines[0]
    )
    assert 'path="/admin/\\r\\nforged" rule=path-normal-form reason=control-character' in lines[1]
    assert (
        f'status=403 caller="{ORDERS}" method=GET path="/admin" '
        "rule=services.payments.inbound.authz.default" in lines[2]
    )
    assert all("\n" not in line and "\r" not in line for line in lines)


def test_paths_are_not_judged_when_nothing_depends_on_them(
    ca: TestCA, certs: dict[str, Issued], orders: ssl.SSLContext
) -> None:
    """With no rule or route on the path, odd paths pass to the app untouched (nothing to bypass)."""
    with serve_service("starlette", _store({}), ca, certs["server"]) as running:
        status, body = raw_request(running, orders, b"/v1//x")
        assert status == 200
        assert body == "v1 /v1//x"


def test_shadow_authz_counts_odd_paths_but_lets_them_through(
    ca: TestCA, certs: dict[str, Issued], orders: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """authz in shadow mode only records: an odd path is logged as would-be refused, not refused."""
    inbound = {"authz": {**V1_ONLY["authz"], "mode": "shadow"}}
    with (
        caplog.at_level(logging.INFO, logger="meshlib.access"),
        serve_service("starlette", _store(inbound), ca, certs["server"]) as running,
    ):
        status, _ = raw_request(running, orders, b"/v1/../admin")
        assert status == 200
    assert any("shadow=true" in r.getMessage() for r in caplog.records)


def test_get_rules_also_guard_head(
    ca: TestCA, certs: dict[str, Issued], orders: ssl.SSLContext
) -> None:
    """Default allow with /admin reserved for ops: HEAD, lower-case and POST spellings stay out."""
    inbound = {
        "authz": {
            "default": "allow",
            "rules": [{"path_prefix": "/admin", "methods": ["GET", "POST"], "allow": [OPS]}],
        }
    }
    for framework in FRAMEWORKS:
        with serve_service(framework, _store(inbound), ca, certs["server"]) as running:
            for method in (b"HEAD", b"get", b"GET", b"post", b"POST"):
                status, _ = raw_request(running, orders, b"/admin", method)
                assert status in (403, 400, 405), (framework, method, status)
            assert running.hits["admin"] == 0, framework
            assert raw_request(running, orders, b"/v1/x")[0] == 200
