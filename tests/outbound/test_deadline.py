"""Deadline arithmetic, the contextvar scope and the propagation header."""

from __future__ import annotations

from meshlib.clock import FakeClock
from meshlib.deadline import (
    DEADLINE_HEADER,
    Deadline,
    current_deadline,
    deadline_scope,
    format_deadline_header,
    parse_deadline_header,
)


def test_remaining_shrinks_and_expires() -> None:
    """remaining() counts down with the clock and never goes negative."""
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock)
    assert deadline.remaining(clock) == 2.0
    clock.advance(1.5)
    assert deadline.remaining(clock) == 0.5
    assert not deadline.expired(clock)
    clock.advance(1.0)
    assert deadline.remaining(clock) == 0.0
    assert deadline.expired(clock)


def test_scope_binds_and_restores() -> None:
    """deadline_scope sets current_deadline for the block and restores it after."""
    clock = FakeClock()
    assert current_deadline.get() is None
    deadline = Deadline.after(1.0, clock)
    with deadline_scope(deadline) as bound:
        assert bound is deadline
        assert current_deadline.get() is deadline
    assert current_deadline.get() is None


def test_nested_scope_never_extends_outer() -> None:
    """A nested, later deadline does not extend the outer, sooner one."""
    clock = FakeClock()
    outer = Deadline.after(1.0, clock)
    with deadline_scope(outer), deadline_scope(Deadline.after(5.0, clock)) as inner:
        assert inner is outer
    sooner = Deadline.after(0.5, clock)
    with deadline_scope(outer), deadline_scope(sooner) as inner:
        assert inner is sooner


def test_header_round_trip() -> None:
    """The header carries whole remaining milliseconds and parses back."""
    clock = FakeClock()
    assert DEADLINE_HEADER == "x-mesh-deadline-ms"
    assert format_deadline_header(Deadline.after(0.25, clock), clock) == "250"
    clock.advance(10.0)
    parsed = parse_deadline_header("250", clock)
    assert parsed is not None
    assert parsed.remaining(clock) == 0.25
    assert format_deadline_header(Deadline.after(-1.0, clock), clock) == "0"


def test_malformed_header_is_ignored() -> None:
    """Malformed header values parse to None instead of raising."""
    clock = FakeClock()
    for value in ["", "soon", "-5", "1.5", "9" * 40, "١٢"]:
        assert parse_deadline_header(value, clock) is None
