"""The example services for real: frontend -> orders -> payments on 127.0.0.1, as subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.examples.conftest import EXAMPLES

SERVICES = ("payments", "orders", "frontend")


class Mesh:
    """The three running services and a client to talk to them."""

    def __init__(self, ports: dict[str, int], client: httpx.Client) -> None:
        self.ports = ports
        self.client = client

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def checkout(self) -> httpx.Response:
        return self.client.post(
            self.url("frontend") + "/checkout", json={"item": "book", "amount_cents": 1200}
        )

    def fault(self, **fault: Any) -> None:
        response = self.client.put(self.url("payments") + "/admin/fault", json=fault)
        assert response.status_code == 200, response.text

    def stats(self, service: str) -> dict[str, Any]:
        return dict(self.client.get(self.url(service) + "/mesh/stats").json())

    def breaker(self) -> str:
        endpoints = self.stats("orders")["mesh"]["destinations"]["payments"]["endpoints"]
        return str(endpoints[self.url("payments")]["breaker"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """payments (Flask), orders and frontend (FastAPI) running on the dev policy, on free ports."""
    from demo import write_policy
    from demoprocs import Processes, child_environment, free_port

    workdir = tmp_path_factory.mktemp("mesh")
    ports = {name: free_port() for name in SERVICES}
    policy = write_policy(workdir / "policy", ports)
    with Processes(workdir) as procs, httpx.Client(timeout=10.0, trust_env=False) as client:
        for name in SERVICES:
            procs.start(
                name,
                [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(ports[name])],
                child_environment(MESH_POLICY_FILE=str(policy), MESH_SERVICE_NAME=name),
            )
        for name in SERVICES:
            procs.wait_ready(name, f"http://127.0.0.1:{ports[name]}/readyz")
        yield Mesh(ports, client)


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_checkout_flows_frontend_orders_payments(mesh: Mesh) -> None:
    """A checkout goes frontend -> orders -> payments, carrying the deadline to payments."""
    response = mesh.checkout()
    assert response.status_code == 200, response.text
    order = response.json()["order"]
    assert order["payment"]["charge_id"] == order["order_id"]
    assert order["payment_attempts"] == 1
    assert 0 < int(order["payment"]["deadline_ms"]) <= 800
    assert mesh.stats("payments")["app"]["charged"] >= 1
    assert mesh.stats("frontend")["mesh"]["destinations"]["orders"]["requests"] >= 1


def test_a_failed_charge_is_retried_and_the_retry_is_visible(mesh: Mesh) -> None:
    """payments' 503 is retried by orders' MeshClient; the retry shows in the order and the stats."""
    retries_before = mesh.stats("orders")["mesh"]["destinations"]["payments"]["retries"]
    mesh.fault(fail_next=1)
    response = mesh.checkout()
    assert response.status_code == 200, response.text
    assert response.json()["order"]["payment_attempts"] == 2
    assert mesh.stats("orders")["mesh"]["destinations"]["payments"]["retries"] == retries_before + 1
    assert mesh.stats("payments")["app"]["failed"] == 1


def test_the_checkout_deadline_stops_orders_waiting_on_slow_payments(mesh: Mesh) -> None:
    """With payments slower than the 800 ms checkout deadline, orders gives up and answers 504."""
    mesh.fault(delay=1.5)
    try:
        response = mesh.checkout()
    finally:
        mesh.fault()
    assert response.status_code == 504, response.text
    assert mesh.stats("orders")["app"]["deadline_exceeded"] >= 1


def test_the_breaker_opens_on_a_dead_payments_and_closes_when_it_recovers(mesh: Mesh) -> None:
    """Failing charges open orders' breaker (checkouts fail fast with 503); recovery closes it."""
    _wait_for(lambda: mesh.breaker() == "closed")
    mesh.fault(error_rate=1.0)
    responses = [mesh.checkout() for _ in range(8)]
    assert mesh.breaker() in ("open", "half-open")
    fast = [r for r in responses if r.status_code == 503]
    assert fast, [r.status_code for r in responses]
    assert all("circuit breaker is open" in r.text for r in fast)
    mesh.fault()
    _wait_for(lambda: mesh.checkout().status_code == 200)
    assert mesh.breaker() == "closed"


def test_examples_dev_and_production_policies_are_valid() -> None:
    """Both example policies load with meshlib's own validation."""
    import meshlib

    for path in (EXAMPLES / "mesh.yaml", EXAMPLES / "production" / "policy" / "policy.yaml"):
        policy = meshlib.load_policy(Path(path))
        assert set(policy.services) == set(SERVICES)


def _batch(mesh: Mesh, workdir: Path, *args: str) -> str:
    from demo import write_policy
    from demoprocs import child_environment

    policy = write_policy(workdir / "policy", mesh.ports)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch.py"), *args],
        env=child_environment(MESH_POLICY_FILE=str(policy)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_the_plain_asyncio_batch_places_orders_through_the_mesh(mesh: Mesh, tmp_path: Path) -> None:
    """examples/batch.py (AsyncMeshClient, no framework) pays every order when the mesh is healthy."""
    mesh.fault()
    assert _batch(mesh, tmp_path, "--orders", "6", "--within", "20") == "6 paid"


def test_the_batch_deadline_bounds_every_call_down_the_chain(mesh: Mesh, tmp_path: Path) -> None:
    """With payments slow, the batch's 0.5 s deadline ends every order early (504 or its own deadline)."""
    mesh.fault(delay=1.5)
    try:
        outcome = _batch(mesh, tmp_path, "--orders", "3", "--within", "0.5")
    finally:
        mesh.fault()
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (\w+)", outcome)}
    assert set(counts) <= {"deadline", "504"}, outcome
    assert sum(counts.values()) == 3, outcome
    assert mesh.stats("orders")["app"]["deadline_exceeded"] >= 1
