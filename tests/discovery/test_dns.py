"""DNS discovery: TTL-driven re-resolution, failures and empty answers, against a local DNS server."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from meshlib.clock import FakeClock
from meshlib.discovery.dns import (
    DnsAnswer,
    DnsError,
    DnspythonResolver,
    DnsTracker,
    DnsWatcher,
    SystemResolver,
)
from meshlib.policy.model import DnsDiscovery, Endpoint
from tests.discovery.dnsserver import Zone, serve_dns


def dns(**kw: object) -> DnsDiscovery:
    base: dict[str, object] = {"name": "api.test", "port": 8080, "min_ttl": "1s", "max_ttl": "60s"}
    return DnsDiscovery.model_validate(base | kw)


def answer(*hosts: str, ttl: float | None = 30) -> DnsAnswer:
    return DnsAnswer(tuple(Endpoint(url=f"http://{h}:8080") for h in hosts), ttl)


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- tracker (sans-IO)


def test_ttl_is_clamped_between_min_and_max() -> None:
    """The next resolution is due after the records' TTL, held within [min_ttl, max_ttl]."""
    clock = FakeClock()
    tracker = DnsTracker(dns(), clock)
    assert tracker.due()
    for ttl, wait in ((30, 30), (0, 1), (3600, 60), (None, 1)):
        tracker.on_answer(answer("10.0.0.1", ttl=ttl))
        assert tracker.next_at == clock.monotonic() + wait
    clock.advance(0.999)
    assert not tracker.due()
    clock.advance(0.001)
    assert tracker.due()


def test_failure_keeps_endpoints_and_backs_off() -> None:
    """A failed resolution keeps the last known endpoints, is counted and retried sooner, doubling."""
    clock = FakeClock()
    tracker = DnsTracker(dns(max_ttl="5s"), clock)
    assert tracker.on_answer(answer("10.0.0.1"))
    waits = []
    for _ in range(5):
        tracker.on_failure("SERVFAIL")
        waits.append(tracker.next_at - clock.monotonic())
    assert waits == [1, 2, 4, 5, 5]
    assert tracker.endpoints == answer("10.0.0.1").endpoints
    assert (tracker.failures, tracker.consecutive_failures, tracker.last_error) == (
        5,
        5,
        "SERVFAIL",
    )
    assert not tracker.on_answer(answer("10.0.0.1"))
    assert tracker.consecutive_failures == 0


def test_empty_answer_is_ignored_until_it_persists() -> None:
    """An empty answer keeps known endpoints until it has lasted max_ttl; then it is believed."""
    clock = FakeClock()
    tracker = DnsTracker(dns(max_ttl="10s"), clock)
    tracker.on_answer(answer("10.0.0.1", "10.0.0.2"))
    for _ in range(5):
        clock.advance(2)
        assert not tracker.on_answer(answer())
        assert len(tracker.endpoints or ()) == 2
        assert tracker.next_at == clock.monotonic() + 1  # rechecked at min_ttl
    assert tracker.empty_answers == 5
    clock.advance(2)
    assert tracker.on_answer(answer())
    assert tracker.endpoints == ()


def test_empty_streak_resets_on_a_real_answer() -> None:
    """A non-empty answer between empty ones restarts the grace period."""
    clock = FakeClock()
    tracker = DnsTracker(dns(max_ttl="10s"), clock)
    tracker.on_answer(answer("10.0.0.1"))
    tracker.on_answer(answer())
    clock.advance(9)
    tracker.on_answer(answer("10.0.0.1"))
    clock.advance(2)
    assert not tracker.on_answer(answer())
    assert tracker.endpoints == answer("10.0.0.1").endpoints


def test_first_empty_answer_is_accepted() -> None:
    """With nothing known, an empty answer is simply the state: there is nothing to eject."""
    tracker = DnsTracker(dns(), FakeClock())
    assert tracker.on_answer(answer())
    assert tracker.endpoints == ()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"port": None}, "carry no port"),
        ({"srv": True}, "not both"),
        ({"min_ttl": "2m"}, "longer than max_ttl"),
        ({"name": "bad name"}, "is not a DNS name"),
    ],
)
def test_dns_section_validation(kw: dict[str, object], message: str) -> None:
    """A dns section without a port source, with both, inverted TTL bounds or a bad name is refused."""
    with pytest.raises(ValueError, match=message):
        dns(**kw)


# --------------------------------------------------------------------------- real DNS server


def test_ttl_change_is_picked_up_after_the_ttl() -> None:
    """Against a local DNS server: records changed behind a 1 s TTL reach the watcher after it, not before."""
    zone = Zone()
    zone.set("api.test.", "A", "127.0.0.1", ttl=1)
    with serve_dns(zone) as port:
        seen: list[tuple[Endpoint, ...]] = []
        watcher = DnsWatcher(
            "api",
            dns(min_ttl="100ms", max_ttl="30s"),
            seen.append,
            resolver=DnspythonResolver(["127.0.0.1"], port=port, timeout=2),
        )
        watcher.start()
        try:
            assert watcher.wait_resolved(5)
            assert [e.url for e in seen[-1]] == ["http://127.0.0.1:8080"]
            zone.set("api.test.", "A", "127.0.0.2", "127.0.0.3", ttl=1)
            _wait_for(lambda: len(seen) == 2)
            assert [e.url for e in seen[-1]] == ["http://127.0.0.2:8080", "http://127.0.0.3:8080"]
        finally:
            watcher.close()
    times = zone.times("api.test.", "A")
    assert len(times) >= 2
    # Re-resolved on the 1 s TTL, not on the 100 ms floor.
    assert times[1] - times[0] >= 0.9
    assert watcher.tracker.failures == 0


def test_failure_and_empty_answer_keep_endpoints_on_a_real_server() -> None:
    """SERVFAIL and NXDOMAIN from the server leave the known endpoints in place and are counted."""
    zone = Zone()
    zone.set("api.test.", "A", "127.0.0.1", ttl=1)
    with serve_dns(zone) as port:
        seen: list[tuple[Endpoint, ...]] = []
        watcher = DnsWatcher(
            "api", dns(), seen.append, resolver=DnspythonResolver(["127.0.0.1"], port=port)
        )
        watcher.resolve_once()
        zone.rcode["api.test."] = "SERVFAIL"
        watcher.resolve_once()
        assert watcher.tracker.failures == 1
        del zone.rcode["api.test."]
        zone.records.clear()  # NXDOMAIN now
        watcher.resolve_once()
        assert watcher.tracker.empty_answers == 1
        assert watcher.tracker.endpoints == seen[0]
        assert len(seen) == 1


def test_srv_records_with_and_without_glue() -> None:
    """SRV gives ports and weights; targets are taken from glue or resolved; only the best priority counts."""
    zone = Zone()
    zone.set(
        "_http._tcp.api.test.",
        "SRV",
        "10 5 8001 a.api.test.",
        "10 7 8002 b.api.test.",
        "20 1 8003 backup.api.test.",
    )
    zone.additional["_http._tcp.api.test."] = [("a.api.test.", "A", "127.0.0.1")]
    zone.set("b.api.test.", "AAAA", "::1")
    zone.set("backup.api.test.", "A", "127.0.0.9")
    with serve_dns(zone) as port:
        resolver = DnspythonResolver(["127.0.0.1"], port=port)
        found = resolver.resolve(dns(name="_http._tcp.api.test", port=None, srv=True))
    assert [(e.url, e.weight) for e in found.endpoints] == [
        ("http://127.0.0.1:8001", 5),
        ("http://[::1]:8002", 7),
    ]
    assert found.ttl == 30
    assert zone.count("a.api.test.", "A") == 0  # glue was used


def test_resolver_timeout_is_a_dns_error() -> None:
    """A nameserver that does not answer gives DnsError within the timeout, never a hang."""
    from tests.support.servers import free_port

    resolver = DnspythonResolver(["127.0.0.1"], port=free_port(), timeout=0.3)
    with pytest.raises(DnsError, match=r"resolving A api\.test"):
        resolver.resolve(dns())


def test_system_resolver_fallback() -> None:
    """Without dnspython, A/AAAA come from getaddrinfo (no TTL); SRV is refused clearly."""
    found = SystemResolver().resolve(dns(name="localhost"))
    assert "http://127.0.0.1:8080" in [e.url for e in found.endpoints]
    assert found.ttl is None
    with pytest.raises(DnsError, match="need dnspython"):
        SystemResolver().resolve(dns(name="x.test", port=None, srv=True))
