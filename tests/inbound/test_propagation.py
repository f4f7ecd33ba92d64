"""Trace context, baggage and x-request-id through a service: caller -> middleware -> app -> MeshClient.

The ASGI and WSGI twins call a downstream echo server through a MeshClient
while serving a request; what the echo saw is what the service propagated.
W3C Trace Context Level 2: the caller's `random` flag (0x02) is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from tests.support.servers import serve_asgi

from .conftest import Telemetry
from .twins import KINDS, Twin, echo, get, serve_twin

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(params=KINDS)
def twin(request: pytest.FixtureRequest, telemetry: Telemetry) -> Iterator[Twin]:
    """The ASGI or WSGI twin, whose /call goes to a downstream echo through a MeshClient."""
    with serve_asgi(echo) as downstream:
        policy = Policy.model_validate(
            {
                "version": 1,
                "services": {
                    "payments": {"inbound": {}},
                    "downstream": {"endpoints": [downstream.url]},
                },
            }
        )
        with serve_twin(
            str(request.param), PolicyStore(policy), telemetry, downstream=downstream.url
        ) as running:
            yield running


def _call(twin: Twin, **headers: str) -> dict[str, Any]:
    response = get(f"{twin.url}/call", headers=headers)
    assert response.status_code == 200
    seen: dict[str, Any] = response.json()
    return seen


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("03", 0x03), ("02", 0x02), ("01", 0x01), ("00", 0x00), ("ff", 0x03), ("fe", 0x02)],
)
def test_caller_flags_are_kept_random_included(twin: Twin, sent: str, kept: int) -> None:
    """The caller's sampled and random flags reach the next hop unchanged; reserved bits are zeroed."""
    seen = _call(twin, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-{sent}")
    version, trace_id, parent_id, flags = seen["traceparent"].split("-")
    assert version == "00"
    assert trace_id == TRACE_ID
    assert parent_id not in (PARENT_ID, "0" * 16)
    assert int(flags, 16) == kept


def test_tracestate_duplicate_keys_are_dropped_but_the_trace_is_kept(twin: Twin) -> None:
    """A tracestate with a duplicated key is discarded whole; the traceparent still continues."""
    seen = _call(twin, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", tracestate="foo=1,bar=2,foo=3")
    assert seen["traceparent"].split("-")[1] == TRACE_ID
    assert "tracestate" not in seen
    kept = _call(twin, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", tracestate="foo=1,bar@x=2")
    assert kept["tracestate"] == "foo=1,bar@x=2"


def test_baggage_is_extracted_and_passed_on(twin: Twin) -> None:
    """W3C baggage from the caller (default propagators) travels on with the trace."""
    seen = _call(twin, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", baggage="tenant=acme")
    assert seen["traceparent"].split("-")[1] == TRACE_ID
    assert seen["baggage"] == "tenant=acme"


def test_request_id_is_accepted_or_made_and_passed_on(twin: Twin) -> None:
    """x-request-id: the caller's reaches the next hop; without one (or a bad one) a UUID4 is made."""
    assert _call(twin, **{"x-request-id": "req-42"})["x-request-id"] == "req-42"
    made = _call(twin)["x-request-id"]
    assert UUID.match(made)
    replaced = _call(twin, **{"x-request-id": "has space"})["x-request-id"]
    assert UUID.match(replaced)
    assert replaced != made
