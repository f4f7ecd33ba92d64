"""The demo's summary: a legend for the status columns, deadlines that add up, what network means."""

from __future__ import annotations

from typing import Any


def _observer(frontend: dict[str, int], orders: dict[str, int]) -> Any:
    from demoreport import Observer

    observer = Observer({}, 0.0, echo=lambda line: None)
    observer.documents = {"frontend": {"app": frontend}, "orders": {"app": orders}}
    return observer


def _traffic(**by_phase: dict[int, int]) -> Any:
    from demoreport import Traffic

    traffic = Traffic()
    for phase, counts in by_phase.items():
        for status, n in counts.items():
            for _ in range(n):
                traffic.record(phase, status)
    return traffic


def test_the_phase_table_has_a_legend_for_each_status_column() -> None:
    """Under the phase table, 502, 503, 504 and other are each explained."""
    from demoreport import summary

    text = summary(_observer({}, {}), _traffic(slow={200: 3, 504: 1, 0: 1}), elapsed=5)
    table = text[text.index("  phase ") :]
    for column in (
        "502: payments kept failing",
        "503: refused fast",
        "504: the 800 ms",
        "other: no answer",
    ):
        assert column in table


def test_deadline_counts_reconcile_with_the_checkouts_that_timed_out() -> None:
    """The 504s split into frontend's own deadline and orders' relayed 504; orders' count splits too."""
    from demoreport import summary

    observer = _observer({"deadline_exceeded": 7, "orders_timed_out": 3}, {"deadline_exceeded": 10})
    text = summary(observer, _traffic(slow={200: 5, 504: 10}), elapsed=5)
    assert "  10 checkouts timed out (the 504 column):" in text
    assert "        7  frontend's own deadline on its call to orders ran out first" in text
    assert "        3  orders gave up on payments first and answered 504" in text
    assert (
        "  orders gave up on 10 calls to payments: 3 in time to answer frontend, "
        "7 after frontend had already given up" in text
    )
    assert "another reason" not in text


def test_unexplained_timeouts_are_shown_not_hidden() -> None:
    """504s that neither service counted get their own line, so the numbers still add up."""
    from demoreport import summary

    observer = _observer({"deadline_exceeded": 1, "orders_timed_out": 0}, {"deadline_exceeded": 0})
    text = summary(observer, _traffic(slow={504: 3}), elapsed=5)
    assert "        2  answered 504 for another reason (not counted by the services)" in text


def test_the_latency_split_says_what_network_includes() -> None:
    """One line says network is everything between the two apps, mostly HTTP stacks on loopback."""
    from demoreport import summary

    text = summary(_observer({}, {}), _traffic(steady={200: 1}), elapsed=5)
    split = text[text.index("Latency split per edge") :]
    assert "network = the caller's time on the wire minus the callee's own time" in split
    assert "On loopback" in split
