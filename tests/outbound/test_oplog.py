"""Operational log lines: breaker, ejection, readmission and retry budget changes, once each, with destination and reason."""

from __future__ import annotations

import logging
import time

import pytest

from meshlib.errors import CircuitOpenError
from tests.outbound.conftest import Driver, mesh_policy


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "meshlib.outbound"]


def test_breaker_opens_with_one_warning_and_closes_with_one_info(
    driver: Driver, up, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 503s open the breaker: one WARNING naming payments and the 503; failing fast adds none;
    a successful trial after the reset timeout closes it: one INFO."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 2, "reset_timeout": "100ms"},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy)
    with caplog.at_level(logging.INFO, logger="meshlib.outbound"):
        for _ in range(2):
            driver.request(client, "GET", "http://payments/status/503")
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                driver.request(client, "GET", "http://payments/status/503")
        opened = _lines(caplog)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if driver.request(client, "GET", "http://payments/ok").status_code == 200:
                    break
            except CircuitOpenError:
                time.sleep(0.02)
    assert len(opened) == 1
    level, message = opened[0]
    assert level == logging.WARNING
    assert "payments" in message
    assert server.url in message
    assert "opened" in message
    assert "503" in message
    closed = _lines(caplog)[1:]
    assert [level for level, _ in closed] == [logging.INFO]
    assert "closed" in closed[0][1]


def test_ejection_and_readmission_are_logged_once(
    driver: Driver, up, up2, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint failing in a row is ejected (WARNING, with the duration and last outcome) and,
    once its time is up and traffic flows, readmitted (INFO), each once."""
    (bad, bad_server), (_good, good_server) = up, up2
    bad.broken = True
    policy = mesh_policy(
        [bad_server.url, good_server.url],
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 100},
        outlier_detection={
            "consecutive_failures": 2,
            "base_ejection_time": "100ms",
            "max_ejection_percent": 50,
        },
    )
    client = driver.client(policy)
    with caplog.at_level(logging.INFO, logger="meshlib.outbound"):
        for _ in range(6):
            driver.request(client, "GET", "http://payments/ok")
        bad.broken = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_lines(caplog)) < 2:
            driver.request(client, "GET", "http://payments/ok")
            time.sleep(0.01)
    lines = _lines(caplog)
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert "ejected payments endpoint " + bad_server.url in lines[0][1]
    assert "500" in lines[0][1]
    assert bad_server.url in lines[1][1]
    assert "back in rotation" in lines[1][1]


def test_budget_exhaustion_is_logged_once_per_dry_spell(
    driver: Driver, up, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget that allows no retry: many refusals, one WARNING naming the destination."""
    _upstream, server = up
    policy = mesh_policy(
        [server.url],
        retry={"attempts": 2, "budget": {"ratio": 0.0, "min_per_second": 0}},
        circuit_breaker={"failure_threshold": 100},
        outlier_detection={"enabled": False},
    )
    client = driver.client(policy)
    with caplog.at_level(logging.INFO, logger="meshlib.outbound"):
        for _ in range(4):
            driver.request(client, "GET", "http://payments/status/503")
    lines = _lines(caplog)
    assert len(lines) == 1
    assert lines[0][0] == logging.WARNING
    assert "retry budget for payments exhausted" in lines[0][1]
    assert "503" in lines[0][1]
