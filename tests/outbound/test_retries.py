"""Retries against real upstreams: statuses, methods, connect failures, Retry-After, streams."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from meshlib.clock import FakeClock
from meshlib.outbound import ATTEMPTS_EXTENSION, MeshClient
from meshlib.policy.model import Policy
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.servers import free_port


def test_503_twice_then_200_is_one_call_three_hits(driver: Driver, up) -> None:
    """Two 503s then a 200: the caller sees one 200; the server saw three requests."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))
    response = driver.request(client, "GET", "http://payments/flaky/2/a")
    assert response.status_code == 200
    assert upstream.hits["/flaky/2/a"] == 3
    attempts = response.extensions[ATTEMPTS_EXTENSION]
    assert [a.outcome for a in attempts] == [503, 503, 200]
    assert [a.note for a in attempts] == ["retry", "retry", ""]


def test_post_not_retried_on_503(driver: Driver, up) -> None:
    """A POST that got a 503 may have been processed: it is not retried."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))
    response = driver.request(client, "POST", "http://payments/status/503", content=b"x")
    assert response.status_code == 503
    assert upstream.hits["/status/503"] == 1


def test_post_retried_with_idempotency_key_added_by_route(driver: Driver, up) -> None:
    """A route asking for idempotency keys makes POST retryable; the same key is resent."""
    upstream, server = up
    policy = mesh_policy(
        [server.url],
        routes=[{"match": {"path_prefix": "/flaky"}, "retry": {"idempotency_key": True}}],
    )
    client = driver.client(policy)
    response = driver.request(client, "POST", "http://payments/flaky/1/p", content=b"x")
    assert response.status_code == 200
    assert upstream.hits["/flaky/1/p"] == 2
    keys = {h.get("idempotency-key") for h in upstream.headers}
    assert len(keys) == 1
    assert None not in keys


def test_connect_refused_retried_on_next_endpoint(driver: Driver, up) -> None:
    """Connection refused never reached a server: even a POST goes on to the next endpoint."""
    upstream, server = up
    dead = f"http://127.0.0.1:{free_port()}"
    client = driver.client(mesh_policy([dead, server.url]))
    response = driver.request(client, "POST", "http://payments/ok", content=b"x")
    assert response.status_code == 200
    attempts = response.extensions[ATTEMPTS_EXTENSION]
    assert [(a.endpoint, a.outcome) for a in attempts] == [
        (dead, "ConnectError"),
        (server.url, 200),
    ]
    assert upstream.hits["/ok"] == 1


def test_last_real_error_reraised_with_history(driver: Driver) -> None:
    """When every try fails, the last httpx error is raised with the attempts attached."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    client = driver.client(mesh_policy(dead, outlier_detection={"enabled": False}))
    with pytest.raises(httpx.ConnectError) as info:
        driver.request(client, "GET", "http://payments/ok")
    attempts = info.value.__meshlib_attempts__  # type: ignore[attr-defined]
    assert len(attempts) == 3
    assert {a.endpoint for a in attempts[:2]} == set(dead)


def test_retry_after_respected_and_capped(driver: Driver, up) -> None:
    """Retry-After within retry_after_max is waited for; a longer one returns the response."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url], retry={"retry_after_max": "2s"}))
    started = time.monotonic()
    response = driver.request(client, "GET", "http://payments/retry-after/1/a")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.95 <= elapsed < 2.0
    assert response.extensions[ATTEMPTS_EXTENSION][0].backoff == 1.0
    response = driver.request(client, "GET", "http://payments/retry-after/5/b")
    assert response.status_code == 503
    assert upstream.hits["/retry-after/5/b"] == 1


def test_streaming_request_body_not_retried(driver: Driver, up) -> None:
    """A request body that cannot be replayed is never retried."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url]))

    def chunks() -> Iterator[bytes]:
        yield b"a"

    async def achunks():  # type: ignore[no-untyped-def]
        yield b"a"

    content = achunks() if driver.is_async else chunks()
    response = driver.request(client, "PUT", "http://payments/flaky/1/s", content=content)
    assert response.status_code == 503
    assert upstream.hits["/flaky/1/s"] == 1
    assert response.extensions[ATTEMPTS_EXTENSION][0].note == "stream"


def test_shadow_retry_counts_without_retrying(driver: Driver, up) -> None:
    """retry mode shadow: the retry is counted, not made."""
    upstream, server = up
    client = driver.client(mesh_policy([server.url], retry={"mode": "shadow"}))
    response = driver.request(client, "GET", "http://payments/flaky/1/h")
    assert response.status_code == 503
    assert upstream.hits["/flaky/1/h"] == 1
    dest = client.mesh_transport.router.destinations["payments"]
    assert dest.shadow_retries == 1


def test_non_mesh_url_goes_where_it_says(driver: Driver, up) -> None:
    """A host that is not a service goes to its own address, under defaults (retries included)."""
    upstream, server = up
    client = driver.client(mesh_policy(["http://127.0.0.1:1"]))
    response = driver.request(client, "GET", f"{server.url}/flaky/1/n")
    assert response.status_code == 200
    assert upstream.hits["/flaky/1/n"] == 2
    assert "x-mesh-deadline-ms" not in upstream.headers[0]


def test_fault_abort_answers_without_sending(driver: Driver, up) -> None:
    """A 100% abort fault answers with its status and never touches the upstream."""
    upstream, server = up
    client = driver.client(
        mesh_policy([server.url], fault={"abort": {"status": 418, "percent": 100}})
    )
    response = driver.request(client, "GET", "http://payments/ok")
    assert response.status_code == 418
    assert response.headers["x-meshlib-fault"] == "abort"
    assert upstream.total == 0


def test_fault_delay_waits_then_sends(driver: Driver, up) -> None:
    """A 100% delay fault waits its duration before sending the request."""
    upstream, server = up
    policy = mesh_policy([server.url], fault={"delay": {"duration": "150ms", "percent": 100}})
    client = driver.client(policy)
    started = time.monotonic()
    assert driver.request(client, "GET", "http://payments/ok").status_code == 200
    assert time.monotonic() - started >= 0.15
    assert upstream.hits["/ok"] == 1


def test_route_split_sends_shares_to_other_services(up, up2) -> None:
    """A route's split sends each call to a service drawn by weight."""
    (stable, stable_server), (canary, canary_server) = up, up2
    policy = Policy.model_validate(
        {
            "version": 1,
            "services": {
                "payments": {
                    "endpoints": [stable_server.url],
                    "routes": [
                        {
                            "match": {"path_prefix": "/"},
                            "split": [
                                {"service": "payments", "weight": 50},
                                {"service": "payments-canary", "weight": 50},
                            ],
                        }
                    ],
                },
                "payments-canary": {"endpoints": [canary_server.url]},
            },
        }
    )
    clock = FakeClock(random_values=[0.25, 0.75, 0.25, 0.75, 0.75])
    with MeshClient(policy, clock=clock) as client:
        for _ in range(5):
            assert client.get("http://payments/ok").status_code == 200
    assert stable.hits["/ok"] == 2
    assert canary.hits["/ok"] == 3
    assert canary.headers[0]["host"] == "payments"
