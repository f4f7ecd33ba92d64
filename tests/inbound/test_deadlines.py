"""Incoming deadline headers: meshlib's, gRPC's and Envoy's, capped by policy."""

from __future__ import annotations

import pytest

from meshlib.clock import FakeClock
from meshlib.inbound.deadlines import grpc_timeout_seconds, incoming_deadline, milliseconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100m", 0.1),
        ("2S", 2.0),
        ("1H", 3600.0),
        ("3M", 180.0),
        ("1500u", 0.0015),
        ("2000000n", 0.002),
        ("99999999m", 99999.999),
        (" 5S ", 5.0),
    ],
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    """Every gRPC unit is understood."""
    assert grpc_timeout_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "m", "100", "100x", "123456789m", "-1S", "1.5S", "\u0661\u0662S"]
)
def test_malformed_grpc_timeout_is_ignored(value: str) -> None:
    """Bad units, more than 8 digits, signs and non-ASCII digits give None."""
    assert grpc_timeout_seconds(value) is None


@pytest.mark.parametrize(("value", "seconds"), [("250", 0.25), ("0", 0.0), (" 7 ", 0.007)])
def test_milliseconds(value: str, seconds: float) -> None:
    """Whole milliseconds parse to seconds."""
    assert milliseconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "-5", "1.5", "soon", "9" * 16])
def test_malformed_milliseconds_are_ignored(value: str) -> None:
    """Anything but plain digits gives None."""
    assert milliseconds(value) is None


def test_soonest_header_wins_and_max_caps() -> None:
    """Several headers: the soonest deadline; policy max caps it."""
    clock = FakeClock()
    deadline = incoming_deadline("900", "500m", "700", max_seconds=None, clock=clock)
    assert deadline is not None
    assert deadline.remaining(clock) == pytest.approx(0.5)
    capped = incoming_deadline("900", None, None, max_seconds=0.2, clock=clock)
    assert capped is not None
    assert capped.remaining(clock) == pytest.approx(0.2)
    assert incoming_deadline(None, None, None, max_seconds=0.2, clock=clock) is None


def test_malformed_headers_mean_no_deadline() -> None:
    """Only malformed values: the request has no deadline."""
    assert incoming_deadline("soon", "x", "-1", max_seconds=None, clock=FakeClock()) is None


def test_zero_is_already_expired() -> None:
    """x-mesh-deadline-ms: 0 is a deadline that has passed."""
    clock = FakeClock()
    deadline = incoming_deadline("0", None, None, max_seconds=None, clock=clock)
    assert deadline is not None
    assert deadline.expired(clock)
