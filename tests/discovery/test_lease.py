"""The registration lease as a state machine (FakeClock): when to register, renew and back off."""

from __future__ import annotations

from meshlib.clock import FakeClock
from meshlib.discovery.registry import InstanceInfo, LeasePhase, LeaseState


def test_register_then_renew_every_third_of_the_lease() -> None:
    """After registering, renewals fall due every lease/3, so two may fail before it lapses."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    assert lease.next_action() == "register"
    lease.on_registered(30.0)
    assert lease.next_action() is None
    assert lease.wait_time() == 10.0
    clock.advance(10)
    assert lease.next_action() == "renew"
    lease.on_renewed(12.0)  # the server may grant another lease
    assert lease.wait_time() == 4.0
    assert lease.expires_at == clock.monotonic() + 12


def test_lost_lease_registers_again_at_once() -> None:
    """A 404 on renewal (the control plane forgot us) makes the next action an immediate register."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    lease.on_registered(30.0)
    clock.advance(10)
    lease.on_lost()
    assert (lease.phase, lease.next_action(), lease.losses) == (
        LeasePhase.UNREGISTERED,
        "register",
        1,
    )


def test_errors_back_off_within_the_lease_and_notice_a_lapse() -> None:
    """Failed calls retry with doubling waits capped at lease/6; past the lease we register anew."""
    clock = FakeClock()
    lease = LeaseState(3.0, clock)
    lease.on_registered(3.0)
    clock.advance(1)
    waits = []
    for _ in range(5):
        lease.on_error()
        waits.append(round(lease.wait_time(), 3))
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert lease.phase is LeasePhase.REGISTERED
    clock.advance(2)
    lease.on_error()
    assert lease.phase is LeasePhase.UNREGISTERED
    assert lease.failures == 6


def test_draining_stops_renewals() -> None:
    """Once draining, nothing more is due."""
    clock = FakeClock()
    lease = LeaseState(30.0, clock)
    lease.on_registered(30.0)
    lease.drain()
    clock.advance(100)
    assert lease.next_action() is None


def test_instance_body() -> None:
    """The registration body names the instance, URL, zone, identity, metadata and requested lease."""
    info = InstanceInfo("payments", "http://127.0.0.1:9000", instance="p-1", zone="z1")
    assert info.body(1.5) == {
        "instance": "p-1",
        "url": "http://127.0.0.1:9000",
        "zone": "z1",
        "identity": None,
        "metadata": {},
        "lease": "1500ms",
    }
    assert ":" in InstanceInfo("payments", "http://x:1").instance  # host:pid by default
