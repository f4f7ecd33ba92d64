"""Type-checked exercise of the outbound public API (run by mypy, never by pytest).

If a signature silently degrades to `Any` or changes shape, mypy fails here.
"""

from __future__ import annotations

import httpx
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from meshlib.clock import FakeClock
from meshlib.deadline import DEADLINE_HEADER, Deadline, current_deadline, deadline_scope
from meshlib.errors import CircuitOpenError, DeadlineExceeded
from meshlib.outbound import (
    ATTEMPTS_EXTENSION,
    AsyncMeshClient,
    AsyncMeshTransport,
    Attempt,
    MeshClient,
    MeshTransport,
    stats,
)
from meshlib.outbound.aiohttp_transport import AiohttpTransport
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from meshlib.testing import set_testing

policy = Policy.model_validate({"version": 1})


def sync_usage() -> int:
    with MeshClient(
        policy,
        service_name="orders",
        settings=MeshSettings(),
        transport=httpx.HTTPTransport(),
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        clock=FakeClock(),
        base_url="http://payments",
        headers={"x-team": "orders"},
        timeout=2.0,
    ) as client:
        response: httpx.Response = client.get("/v1/charges")
        attempts: tuple[Attempt, ...] = response.extensions[ATTEMPTS_EXTENSION]
        first: int | str = attempts[0].outcome
        return response.status_code + len(str(first))


async def async_usage() -> int:
    async with AsyncMeshClient(
        PolicyStore(policy), service_name="orders", endpoint_transport=AiohttpTransport
    ) as client:
        response = await client.post("http://payments/v1/charges", json={"amount": 5})
        return response.status_code


def transports() -> None:
    client = httpx.Client(transport=MeshTransport("mesh.yaml"))
    aclient = httpx.AsyncClient(transport=AsyncMeshTransport(policy, service_name="orders"))
    base: httpx.BaseTransport = MeshTransport(policy)
    abase: httpx.AsyncBaseTransport = AsyncMeshTransport(policy)
    del client, aclient, base, abase


def deadlines_and_errors(clock: FakeClock) -> float:
    with deadline_scope(Deadline.after(0.5, clock)) as deadline:
        assert deadline is not None
        assert current_deadline.get() is deadline
        header: str = DEADLINE_HEADER
        del header
        try:
            MeshClient(policy).get("http://payments/")
        except (CircuitOpenError, DeadlineExceeded) as exc:
            transport_error: httpx.TransportError | httpx.TimeoutException = exc
            del transport_error
        return deadline.remaining(clock)


def testing_mode() -> dict[str, object]:
    with set_testing(attempts=2, cap=True):
        pass
    return stats.snapshot()
