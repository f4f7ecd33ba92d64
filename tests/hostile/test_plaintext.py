"""No plaintext under a promise of TLS: refused at load, validate and publish, and at run time.

Under `tls.mode: tls` or `mutual`, an `http://` endpoint is a PolicyError
naming the field; a direct `http://` URL, or an `http://` endpoint the
registry reports, is refused with `TLSRequiredError` before a byte is sent;
only the origins `tls.allow_plaintext` names get through in plain HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import AsyncMeshClient, MeshClient, MeshSettings, PolicyError, TLSRequiredError
from meshlib.cli import main
from meshlib.controlplane.instances import InstanceRegistry, RegistryConfig
from meshlib.discovery.registry import InstanceInfo, Registrar
from meshlib.policy.model import Policy
from meshlib.policy.parse import load_policy, parse_policy
from meshlib.policy.store import PolicyStore
from tests.controlplane.conftest import PUBLISH_HEADERS, serve_plane
from tests.discovery.conftest import plane_app, serve
from tests.support.servers import RunningServer, serve_asgi

CLIENTS = ("sync", "async-aiohttp", "async-httpcore")


class Counting:
    """An app that answers 200 and counts the requests that reached it."""

    def __init__(self) -> None:
        self.hits = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.hits += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})


@pytest.fixture
def upstream() -> Iterator[tuple[Counting, RunningServer]]:
    """A plain-HTTP server on 127.0.0.1 that counts what reached it."""
    app = Counting()
    with serve_asgi(app) as server:
        yield app, server


def _call(kind: str, policy: Policy | PolicyStore, url: str, **options: Any) -> httpx.Response:
    if kind == "sync":
        with MeshClient(policy, **options) as client:
            return client.get(url)

    async def main() -> httpx.Response:
        extra = dict(options)
        if kind == "async-httpcore":
            extra["endpoint_transport"] = httpx.AsyncHTTPTransport
        async with AsyncMeshClient(policy, **extra) as client:
            return await client.get(url)

    return asyncio.run(main())


MUTUAL_WITH_HTTP_ENDPOINT = """\
version: 1
trust_domain: example.org
defaults:
  tls: {mode: mutual}
services:
  payments:
    endpoints: ["https://127.0.0.1:8443", "http://127.0.0.1:8001"]
"""


@pytest.mark.parametrize("mode", ["tls", "mutual"])
def test_an_http_endpoint_under_a_tls_mode_is_a_policy_error(mode: str) -> None:
    """The error names the endpoint's field, its URL and where the mode was set."""
    text = MUTUAL_WITH_HTTP_ENDPOINT.replace("mode: mutual", f"mode: {mode}")
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="mesh.yaml")
    (issue,) = exc.value.issues
    assert issue.field == "services.payments.endpoints[1]"
    assert (issue.line, issue.column) == (7, 43)
    assert "http://127.0.0.1:8001 would be called in plain HTTP" in issue.message
    assert f"tls.mode is '{mode}' (set in defaults)" in issue.message
    assert "tls.allow_plaintext" in issue.message


def test_a_service_level_tls_mode_is_named_as_its_source() -> None:
    """A service's own tls section is the layer named."""
    doc = {
        "version": 1,
        "services": {
            "payments": {"endpoints": ["http://127.0.0.1:8001"], "tls": {"mode": "mutual"}}
        },
    }
    with pytest.raises(PolicyError, match=r"set in services\.payments\)"):
        load_policy(doc)


def test_dns_discovery_in_plain_http_under_tls_is_a_policy_error() -> None:
    """discovery.dns.scheme: http under a TLS mode is refused at that field."""
    doc = {
        "version": 1,
        "defaults": {"tls": {"mode": "tls"}},
        "services": {"payments": {"discovery": {"dns": {"name": "payments.internal", "port": 80}}}},
    }
    with pytest.raises(PolicyError) as exc:
        load_policy(doc)
    assert [i.field for i in exc.value.issues] == ["services.payments.discovery.dns.scheme"]


def test_cli_validate_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`meshlib policy validate` no longer says ok: it exits 1 naming file, line and field."""
    path = tmp_path / "mesh.yaml"
    path.write_text(MUTUAL_WITH_HTTP_ENDPOINT)
    assert main(["policy", "validate", str(path)]) == 1
    assert f"{path}:7:43: services.payments.endpoints[1]:" in capsys.readouterr().err


UNREACHABLE = "version: 1\nservices:\n  payments:\n    endpoints: []\n    retry: {attempts: 2}\n"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (MUTUAL_WITH_HTTP_ENDPOINT, "services.payments.endpoints[1]"),
        (UNREACHABLE, "services.payments.endpoints"),
    ],
    ids=["plaintext-under-mutual", "no-endpoints"],
)
def test_a_control_plane_publish_refuses_it(tmp_path: Path, document: str, field: str) -> None:
    """A publish is a 422 naming the field (plaintext under TLS, a service with nowhere to call)."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    (directory / "policy.yaml").write_text(
        'version: 1\nservices:\n  payments:\n    endpoints: ["http://127.0.0.1:8001"]\n'
    )
    with serve_plane(directory) as server, httpx.Client(base_url=server.url) as client:
        answer = client.put("/v1/policy", content=document.encode(), headers=PUBLISH_HEADERS)
        assert answer.status_code == 422
        assert answer.json()["issues"][0]["field"] == field
        assert client.get("/v1/policy").json()["version"] == 1


def test_allow_plaintext_names_the_exceptions_and_nothing_else() -> None:
    """A named origin is allowed (default port included); its neighbours are not; values are origins."""
    doc: dict[str, Any] = {
        "version": 1,
        "defaults": {"tls": {"mode": "mutual", "allow_plaintext": ["http://127.0.0.1:8001"]}},
        "services": {"agent": {"endpoints": ["http://127.0.0.1:8001"]}},
    }
    assert load_policy(doc).defaults.tls.allow_plaintext == ("http://127.0.0.1:8001",)
    doc["services"]["agent"]["endpoints"] = ["http://127.0.0.1:8002"]
    with pytest.raises(PolicyError, match=r"endpoints\[0\]"):
        load_policy(doc)
    doc["services"] = {}
    doc["defaults"]["tls"]["allow_plaintext"] = ["http://LocalHost"]
    assert load_policy(doc).defaults.tls.allow_plaintext == ("http://localhost:80",)
    for bad in ("https://127.0.0.1:8001", "127.0.0.1:8001", "http://h:1/path"):
        doc["defaults"]["tls"]["allow_plaintext"] = [bad]
        with pytest.raises(PolicyError, match=r"defaults\.tls\.allow_plaintext\[0\]"):
            load_policy(doc)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_direct_http_url_under_mutual_defaults_is_refused_before_sending(
    kind: str, upstream: tuple[Counting, RunningServer]
) -> None:
    """No byte reaches the server; the error names the origin and how to allow it; no retry."""
    app, server = upstream
    policy = load_policy({"version": 1, "defaults": {"tls": {"mode": "mutual"}}})
    with pytest.raises(TLSRequiredError) as exc:
        _call(kind, policy, f"{server.url}/x")
    assert app.hits == 0
    error = exc.value
    assert isinstance(error, httpx.UnsupportedProtocol)
    assert error.origin == f"http://127.0.0.1:{server.port}"
    assert f"refused to call http://127.0.0.1:{server.port} in plain HTTP" in str(error)
    assert "tls.allow_plaintext" in str(error)
    assert len(error.attempts) == 1


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_allowed_origin_is_called_in_plain_http(
    kind: str, upstream: tuple[Counting, RunningServer]
) -> None:
    """The exception the policy names works, and only it."""
    app, server = upstream
    origin = f"http://127.0.0.1:{server.port}"
    policy = load_policy(
        {"version": 1, "defaults": {"tls": {"mode": "mutual", "allow_plaintext": [origin]}}}
    )
    assert _call(kind, policy, f"{server.url}/x").text == "plain"
    assert app.hits == 1


def test_a_plaintext_endpoint_from_the_registry_is_refused(
    tmp_path: Path, upstream: tuple[Counting, RunningServer]
) -> None:
    """An http:// instance registered for a service under mutual TLS is never called."""
    app, server = upstream
    policy_dir = tmp_path / "mesh"
    policy_dir.mkdir()
    (policy_dir / "policy.yaml").write_text("version: 1\n")
    registry = InstanceRegistry(RegistryConfig(register_tokens=("r3g1ster",)))
    with serve(plane_app(policy_dir, registry)) as cp:
        registrar = Registrar(
            InstanceInfo("payments", server.url, instance="a"), cp.url, token="r3g1ster"
        )
        assert registrar.start(wait=5)
        try:
            text = (
                "version: 1\ndefaults: {tls: {mode: mutual}}\n"
                "services:\n  payments:\n    discovery: {registry: true}\n"
            )
            settings = MeshSettings(control_plane_url=cp.url, control_plane_token="r3ad")
            with MeshClient(PolicyStore(parse_policy(text)), settings=settings) as client:
                deadline = time.monotonic() + 10
                refused: TLSRequiredError | None = None
                while refused is None:
                    try:
                        client.get("http://payments/x")
                    except TLSRequiredError as exc:
                        refused = exc
                    except httpx.TransportError:  # not discovered yet: NoEndpointsError
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                assert refused.destination == "payments"
            assert app.hits == 0
        finally:
            registrar.close()
