"""The access-denied log: one grep-able line per refusal, rate-limited, injection-proof."""

from __future__ import annotations

import logging

import pytest

from meshlib.clock import FakeClock
from meshlib.inbound.accesslog import AccessLog
from meshlib.inbound.core import RequestInfo

RULE = "services.payments.inbound.authz.rules[0]"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meshlib.access"]


def test_a_denial_names_caller_method_path_rule_and_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line carries everything a security team greps for."""
    log = AccessLog("payments", FakeClock())
    info = RequestInfo("DELETE", "/v1/orders/7", client=("10.0.0.7", 5123))
    with caplog.at_level(logging.WARNING, logger="meshlib.access"):
        log.denied(info, 403, RULE, "spiffe://example.org/billing")
    assert _lines(caplog) == [
        'access denied: service=payments status=403 caller="spiffe://example.org/billing" '
        f'method=DELETE path="/v1/orders/7" rule={RULE} client=10.0.0.7:5123'
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_caller_controlled_values_cannot_forge_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Newlines, quotes and odd methods in what the caller sent are escaped; long paths are cut."""
    log = AccessLog("payments", FakeClock())
    info = RequestInfo('GE"T\n', '/x\n" status=200 fake="' + "a" * 1000)
    with caplog.at_level(logging.WARNING, logger="meshlib.access"):
        log.denied(info, 403, RULE, None)
    (line,) = _lines(caplog)
    assert "\n" not in line
    assert 'caller=- method="GE\\"T\\n" path="/x\\n\\" status=200 fake=\\"aaa' in line
    assert len(line) < 800


def test_a_flood_is_rate_limited_and_the_gap_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    """After the burst, lines are dropped; the next one written says how many were."""
    clock = FakeClock()
    log = AccessLog("payments", clock, rate=10.0, burst=5)
    info = RequestInfo("GET", "/admin")
    with caplog.at_level(logging.WARNING, logger="meshlib.access"):
        for _ in range(100):
            log.denied(info, 403, RULE, None)
        assert len(_lines(caplog)) == 5
        clock.advance(0.1)
        log.denied(info, 403, RULE, None)
    lines = _lines(caplog)
    assert len(lines) == 6
    assert lines[-1].endswith(" suppressed=95")


def test_shadow_denials_are_info_and_marked(caplog: pytest.LogCaptureFixture) -> None:
    """Shadow mode logs what would have been denied, at INFO, with shadow=true."""
    log = AccessLog("payments", FakeClock())
    with caplog.at_level(logging.INFO, logger="meshlib.access"):
        log.denied(RequestInfo("GET", "/admin"), 403, RULE, None, shadow=True)
    assert caplog.records[0].levelno == logging.INFO
    assert _lines(caplog)[0].endswith("client=- shadow=true")


def test_nothing_is_formatted_when_the_logger_is_off(caplog: pytest.LogCaptureFixture) -> None:
    """A disabled logger costs no token and no formatting."""
    clock = FakeClock()
    log = AccessLog("payments", clock, rate=1.0, burst=1)
    with caplog.at_level(logging.ERROR, logger="meshlib.access"):
        log.denied(RequestInfo("GET", "/admin"), 403, RULE, None)
    with caplog.at_level(logging.WARNING, logger="meshlib.access"):
        log.denied(RequestInfo("GET", "/admin"), 403, RULE, None)
    assert len(_lines(caplog)) == 1
