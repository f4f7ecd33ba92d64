"""Breaker states and ejected endpoints, observed from live mesh clients at collection time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshlib.errors import CircuitOpenError
from meshlib.outbound.client import MeshClient
from meshlib.policy.model import Policy
from meshlib.telemetry import names
from meshlib.telemetry.state_metrics import MeshStateMetrics, observe_mesh_state
from tests.support.servers import RunningServer, serve_asgi

from .conftest import metric_points


async def unavailable(request: Request) -> PlainTextResponse:
    """Always 503."""
    return PlainTextResponse("down", status_code=503)


@pytest.fixture(scope="module")
def down() -> Iterator[RunningServer]:
    """A service that answers 503 to everything."""
    with serve_asgi(Starlette(routes=[Route("/{path:path}", unavailable)])) as server:
        yield server


def _points(reader: InMemoryMetricReader, spec: names.Instrument) -> dict[tuple[Any, ...], Any]:
    return {
        tuple(sorted(p.attributes.items())): p.value
        for p in metric_points(reader).get(spec.name, [])
    }


def test_open_breaker_of_a_real_client_is_reported(
    down: RunningServer, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """After two failures with failure_threshold 2, the endpoint's breaker state reads 2 (open)."""
    policy = Policy.model_validate(
        {
            "version": 1,
            "services": {
                "statetest": {
                    "endpoints": [down.url],
                    "retry": {"attempts": 1},
                    "circuit_breaker": {"failure_threshold": 2},
                    "outlier_detection": {"enabled": False},
                }
            },
        }
    )
    state = MeshStateMetrics(meter_provider=meter_provider)
    key = ((names.ATTR_DESTINATION, "statetest"), (names.ATTR_ENDPOINT, down.url))
    with MeshClient(policy) as client:
        client.get("http://statetest/")
        assert _points(metric_reader, names.CLIENT_BREAKER_STATE)[key] == 0
        client.get("http://statetest/")
        with pytest.raises(CircuitOpenError):
            client.get("http://statetest/")
        assert _points(metric_reader, names.CLIENT_BREAKER_STATE)[key] == 2
        assert _points(metric_reader, names.CLIENT_EJECTED_ENDPOINTS)[key[:1]] == 0
    state.close()


def test_states_and_ejections_map_from_the_snapshot(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Each breaker state maps to its number, and ejected endpoints are counted per destination."""
    snapshot = {
        "destinations": {
            "payments": {
                "endpoints": {
                    "http://a": {"breaker": "closed", "ejected": True},
                    "http://b": {"breaker": "half-open", "ejected": True},
                    "http://c": {"breaker": "open", "ejected": False},
                }
            },
            "users": {"endpoints": {}},
        }
    }
    state = MeshStateMetrics(meter_provider=meter_provider, snapshot=lambda: snapshot)
    breakers = _points(metric_reader, names.CLIENT_BREAKER_STATE)
    dest = (names.ATTR_DESTINATION, "payments")
    assert breakers == {
        (dest, (names.ATTR_ENDPOINT, "http://a")): 0,
        (dest, (names.ATTR_ENDPOINT, "http://b")): 1,
        (dest, (names.ATTR_ENDPOINT, "http://c")): 2,
    }
    assert _points(metric_reader, names.CLIENT_EJECTED_ENDPOINTS) == {
        (dest,): 2,
        ((names.ATTR_DESTINATION, "users"),): 0,
    }
    state.close()
    assert metric_points(metric_reader) == {}


def test_registration_is_once_per_provider(meter_provider: MeterProvider) -> None:
    """observe_mesh_state() returns one registration per provider (global included) until closed."""
    mine = observe_mesh_state(meter_provider=meter_provider)
    assert observe_mesh_state(meter_provider=meter_provider) is mine
    first = observe_mesh_state()
    assert first is not mine
    assert observe_mesh_state() is first
    first.close()
    second = observe_mesh_state()
    assert second is not first
    second.close()
    mine.close()
