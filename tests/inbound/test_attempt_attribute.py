"""The SERVER span records which try of its call a request is, from the caller's attempt header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.telemetry import names

from .conftest import Telemetry
from .test_servers import server_span
from .twins import KINDS, Twin, get, serve_twin


@pytest.fixture(params=KINDS)
def twin(request: pytest.FixtureRequest, telemetry: Telemetry) -> Iterator[Twin]:
    """The ASGI twin and the WSGI twin, with a policy that allows everything."""
    store = PolicyStore(Policy.model_validate({"version": 1, "services": {"payments": {}}}))
    with serve_twin(request.param, store, telemetry) as running:
        yield running


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-mesh-attempt": "2"}, 2),
        ({"x-envoy-attempt-count": "3"}, 3),
        ({}, None),
        ({"x-mesh-attempt": "²".encode()}, None),
        ({"x-mesh-attempt": "-1"}, None),
        ({"x-mesh-attempt": "9" * 40}, None),
        ({"x-mesh-attempt": "0"}, None),
    ],
)
def test_server_span_records_the_attempt(
    twin: Twin, telemetry: Telemetry, headers: dict[str, str | bytes], expected: int | None
) -> None:
    """A valid attempt header becomes meshlib.attempt on the SERVER span; garbage is ignored."""
    assert get(f"{twin.url}/items/7", headers=headers).status_code == 200
    assert server_span(telemetry).attributes.get(names.ATTR_ATTEMPT) == expected
