"""The control plane's instance registry: leases, expiry, auth, identity checks and the long-poll watch."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.controlplane.instances import (
    InstanceRegistry,
    Registration,
    RegistryConfig,
    expected_identity,
)
from tests.discovery.conftest import plane_app, serve

REG = {"authorization": "Bearer r3g1ster"}
PUB = {"authorization": "Bearer pub-s3cret"}
READ = {"authorization": "Bearer r3ad"}


def body(instance: str = "p-1", url: str = "http://127.0.0.1:9001", **kw: Any) -> dict[str, Any]:
    return {"instance": instance, "url": url, **kw}


def reg(**kw: Any) -> Registration:
    return Registration.model_validate(body(**kw))


# --------------------------------------------------------------------------- sans-IO registry


def test_lease_expiry_and_renewal() -> None:
    """An instance stays while renewed and is dropped once a whole lease passes without renewal."""
    clock = FakeClock()
    registry = InstanceRegistry(RegistryConfig(), clock)
    registry.register("payments", reg(lease="10s"))
    clock.advance(9)
    assert registry.renew("payments", "p-1") is not None
    clock.advance(9)
    assert registry.expire() == set()
    clock.advance(1)
    assert registry.expire() == {"payments"}
    assert registry.renew("payments", "p-1") is None
    assert registry.expired == 1
    assert registry.listing("payments")["instances"] == []


def test_lease_is_clamped_and_etag_moves_on_change_only() -> None:
    """Requested leases are held within [min, max]; the ETag changes with the list, not with renewals."""
    registry = InstanceRegistry(RegistryConfig(min_lease=2, max_lease=60), FakeClock())
    assert registry.register("payments", reg(lease="1ms")).lease == 2
    assert registry.register("payments", reg(instance="p-2", lease="1h")).lease == 60
    before = registry.etag("payments")
    registry.renew("payments", "p-1")
    registry.register("payments", reg(lease="1ms"))  # same content again
    assert registry.etag("payments") == before
    registry.register("payments", reg(zone="z2"))
    assert registry.etag("payments") != before
    assert registry.etag("orders") != before


def test_max_instances_is_enforced() -> None:
    """A full registry refuses new instances but still lets known ones re-register."""
    registry = InstanceRegistry(RegistryConfig(max_instances=1), FakeClock())
    registry.register("payments", reg())
    registry.register("payments", reg())
    with pytest.raises(OverflowError, match="maximum of 1"):
        registry.register("payments", reg(instance="p-2"))


def test_expected_identity_from_policy_document() -> None:
    """A service's identity is its policy identity, else spiffe://<trust_domain>/<service>."""
    doc = {"trust_domain": "example.org", "services": {"pay": {"identity": "spiffe://x.org/p"}}}
    assert expected_identity(doc, "pay") == "spiffe://x.org/p"
    assert expected_identity(doc, "orders") == "spiffe://example.org/orders"
    assert expected_identity(None, "orders") == "spiffe://cluster.local/orders"


# --------------------------------------------------------------------------- HTTP


def test_register_renew_deregister_over_http(policy_dir: Path) -> None:
    """Register, list, renew and deregister through the real server; unknown renewals are 404."""
    with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url) as http:
        r = http.post(
            "/v1/registry/payments/instances", json=body(lease="5s", zone="z1"), headers=REG
        )
        assert r.status_code == 201, r.text
        assert r.json()["lease_s"] == 5
        listing = http.get("/v1/registry/payments", headers=READ)
        assert listing.headers["etag"]
        assert [(i["url"], i["zone"]) for i in listing.json()["instances"]] == [
            ("http://127.0.0.1:9001", "z1")
        ]
        assert http.put("/v1/registry/payments/instances/p-1", headers=REG).json() == {"lease_s": 5}
        assert http.put("/v1/registry/payments/instances/nope", headers=REG).status_code == 404
        assert http.get("/v1/registry", headers=READ).json()["services"] == {"payments": 1}
        assert http.delete("/v1/registry/payments/instances/p-1", headers=REG).status_code == 204
        assert http.delete("/v1/registry/payments/instances/p-1", headers=REG).status_code == 404
        assert http.get("/v1/registry/payments", headers=READ).json()["instances"] == []


def test_registering_needs_register_or_publish_right(policy_dir: Path) -> None:
    """No token is 401, a read token is 403, a bad token 401; register and publish tokens may register."""
    with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url) as http:
        path = "/v1/registry/payments/instances"
        assert http.post(path, json=body()).status_code == 401
        assert http.post(path, json=body(), headers=READ).status_code == 403
        assert (
            http.post(path, json=body(), headers={"authorization": "Bearer x"}).status_code == 401
        )
        assert http.post(path, json=body(), headers=REG).status_code == 201
        assert http.post(path, json=body(instance="p-2"), headers=PUB).status_code == 201
        assert http.get("/v1/registry/payments").status_code == 401  # reading needs the read token
        assert http.put(f"{path}/p-1", headers=READ).status_code == 403


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (body(url="ftp://x"), "not an absolute URL"),
        (body(url="http://127.0.0.1:1/path"), "without a path"),
        (body(instance="bad name"), "instance"),
        (body(identity="payments"), "not a SPIFFE ID"),
        (body(lease="10"), "is not a duration"),
        (body(extra=1), "extra"),
    ],
)
def test_bad_registrations_are_422(policy_dir: Path, payload: dict[str, Any], message: str) -> None:
    """A registration with a bad URL, name, identity, lease or unknown field is refused, saying why."""
    with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url) as http:
        r = http.post("/v1/registry/payments/instances", json=payload, headers=REG)
        assert r.status_code == 422
        assert message in r.json()["error"]
        bad = http.post("/v1/registry/Pay_ments/instances", json=body(), headers=REG)
        assert bad.status_code == 400


def test_watch_long_polls_until_a_registration(policy_dir: Path) -> None:
    """A watcher holding the current ETag is woken by a registration, and times out with 304 otherwise."""
    with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url, headers=READ) as http:
        etag = http.get("/v1/registry/payments").headers["etag"]
        quiet = http.get(
            "/v1/registry/payments", params={"wait": "200ms"}, headers={"if-none-match": etag}
        )
        assert quiet.status_code == 304
        result: dict[str, httpx.Response] = {}

        def watch() -> None:
            result["r"] = http.get(
                "/v1/registry/payments", params={"wait": "10s"}, headers={"if-none-match": etag}
            )

        thread = threading.Thread(target=watch)
        thread.start()
        time.sleep(0.2)
        http.post("/v1/registry/payments/instances", json=body(), headers=REG)
        thread.join(timeout=10)
        assert result["r"].status_code == 200
        assert len(result["r"].json()["instances"]) == 1


def test_watch_wakes_when_a_lease_lapses(policy_dir: Path) -> None:
    """A parked watcher learns of an expiry without any other request arriving."""
    registry = InstanceRegistry(RegistryConfig(register_tokens=("r3g1ster",), min_lease=0.2))
    with (
        serve(plane_app(policy_dir, registry)) as cp,
        httpx.Client(base_url=cp.url, headers=READ) as http,
    ):
        http.post("/v1/registry/payments/instances", json=body(lease="1s"), headers=REG)
        listing = http.get("/v1/registry/payments")
        assert len(listing.json()["instances"]) == 1  # not lapsed yet: the watch below parks
        etag = listing.headers["etag"]
        started = time.monotonic()
        r = http.get(
            "/v1/registry/payments", params={"wait": "10s"}, headers={"if-none-match": etag}
        )
        assert r.status_code == 200
        assert r.json()["instances"] == []
        assert time.monotonic() - started < 5
        assert registry.expired == 1


class _WithPeerCert:
    """Puts a client certificate into the ASGI tls extension, as an mTLS server would."""

    def __init__(self, app: Any, pem: str) -> None:
        self.app = app
        self.pem = pem

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope)
            scope["extensions"] = {"tls": {"client_cert_chain": [self.pem]}}
        await self.app(scope, receive, send)


def test_mtls_identity_may_only_register_its_own_service(policy_dir: Path, tmp_path: Path) -> None:
    """Under mTLS, orders' certificate cannot register payments, even with a valid token."""
    from meshlib.security.ca import DevCA

    ca = DevCA.create("example.org", tmp_path / "ca")
    orders = ca.issue("orders").chain[0]
    payments = ca.issue("payments").chain[0]
    app = _WithPeerCert(plane_app(policy_dir), orders)
    with serve(app, lifespan="off") as cp, httpx.Client(base_url=cp.url) as http:
        r = http.post("/v1/registry/payments/instances", json=body(), headers=REG)
        assert r.status_code == 403
        assert "spiffe://example.org/orders may not register instances of 'payments'" in r.text
        ok = http.post("/v1/registry/orders/instances", json=body(), headers=REG)
        assert ok.status_code == 201
        claim = body(instance="o-2", identity="spiffe://example.org/payments")
        lie = http.post("/v1/registry/orders/instances", json=claim, headers=REG)
        assert lie.status_code == 403
    registry = InstanceRegistry(RegistryConfig(register_identities=("*",)))
    app = _WithPeerCert(plane_app(policy_dir, registry), payments)
    with serve(app, lifespan="off") as cp, httpx.Client(base_url=cp.url) as http:
        r = http.post("/v1/registry/payments/instances", json=body())
        assert r.status_code == 201  # its own service, identity allowed without a token


def test_config_from_control_plane_settings() -> None:
    """Register tokens, identities, lease and size come from the control plane's settings when set."""
    from types import SimpleNamespace

    from pydantic import SecretStr

    settings = SimpleNamespace(
        register_tokens=(SecretStr("bot=s3"),),
        register_identities=("*",),
        registry_lease=12.0,
        registry_max_instances=5,
    )
    config = RegistryConfig.from_settings(settings)
    assert config == RegistryConfig(
        default_lease=12.0,
        max_instances=5,
        register_tokens=("bot=s3",),
        register_identities=("*",),
    )
    assert RegistryConfig.from_settings(object()) == RegistryConfig()


def test_publish_identity_may_register_its_own_service(policy_dir: Path, tmp_path: Path) -> None:
    """An mTLS identity holding the publish right registers its own service without a token."""
    from meshlib.security.ca import DevCA

    ca = DevCA.create("example.org", tmp_path / "ca")
    payments = ca.issue("payments").chain[0]
    app = plane_app(policy_dir, publish_identities=("spiffe://example.org/payments",))
    with (
        serve(_WithPeerCert(app, payments), lifespan="off") as cp,
        httpx.Client(base_url=cp.url) as http,
    ):
        assert http.post("/v1/registry/payments/instances", json=body()).status_code == 201


def test_dashboard_shows_registered_instances_and_leases(policy_dir: Path) -> None:
    """/v1/mesh lists registered instances with their lease; the page has the table that shows them."""
    with serve(plane_app(policy_dir)) as cp, httpx.Client(base_url=cp.url) as http:
        http.post("/v1/registry/payments/instances", json=body(lease="20s", zone="z1"), headers=REG)
        mesh = http.get("/v1/mesh", headers=READ).json()
        assert [
            (i["service"], i["instance"], i["zone"], i["lease_s"]) for i in mesh["registry"]
        ] == [("payments", "p-1", "z1", 20.0)]
        assert 0 < mesh["registry"][0]["expires_in_s"] <= 20
        assert 'id="registry"' in http.get("/dashboard").text
        assert "renderRegistry(mesh.registry" in http.get("/dashboard/app.js").text
