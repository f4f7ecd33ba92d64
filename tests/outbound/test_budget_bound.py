"""The retry budget's documented bound, checked at every retry under a dead upstream."""

from __future__ import annotations

from meshlib.clock import FakeClock
from meshlib.outbound import MeshClient
from meshlib.testing import set_testing
from tests.outbound.conftest import mesh_policy


def test_dead_upstream_stays_within_the_budget_bound(up) -> None:
    """Under steady load on a dead upstream, every window's retries stay within the documented bound."""
    upstream, server = up
    clock = FakeClock(start=1000.5)  # the load starts mid-second: windows never align with it
    ratio, floor, window = 0.2, 10.0, 10.0
    policy = mesh_policy(
        [server.url],
        retry={
            "attempts": 3,
            "budget": {"ratio": ratio, "min_per_second": floor, "window": f"{window:g}s"},
        },
        circuit_breaker={"enabled": False},
        outlier_detection={"enabled": False},
    )
    with set_testing(attempts=3), MeshClient(policy, clock=clock) as client:
        calls = 1_500
        for _ in range(calls):  # 15 s of fake time at 100 calls/s: one and a half windows
            sent_at = {"x-test-time": repr(clock.monotonic())}
            response = client.get("http://payments/status/503", headers=sent_at)
            assert response.status_code == 503
            clock.advance(0.01)
    # One caller: each call's tries reach the upstream one after the other, the first first.
    sent = [float(h["x-test-time"]) for h in upstream.headers]
    hits = [(t, i > 0 and sent[i - 1] == t) for i, t in enumerate(sent)]
    retries = [t for t, retry in hits if retry]
    requests = [t for t, retry in hits if not retry]
    assert len(requests) == calls
    slack = []
    for at in retries:  # the bound, checked at the moment of every retry
        in_window = sum(1 for t in retries if at - window < t <= at)
        allowed = ratio * sum(1 for t in requests if at - window < t <= at) + floor * window
        assert in_window <= allowed, (at, in_window, allowed)
        slack.append(allowed - in_window)
    # ... and no stricter than it must be: one slice's requests (10 calls) of slack at most.
    assert min(slack) <= 1 + ratio * 10
