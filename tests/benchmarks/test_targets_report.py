"""How the bench prints its targets: judged in the full run, informational in --quick."""

from __future__ import annotations

from benchmarks.report import format_targets

CHECKS = [
    {
        "table": "seq/nginx-200",
        "target": "mesh p50 ÷ sidecar",
        "value": 1.4,
        "limit": 1.0,
        "met": False,
    },
    {
        "table": "seq/nginx-200",
        "target": "mesh p99 ÷ sidecar",
        "value": 0.8,
        "limit": 1.0,
        "met": True,
    },
]


def test_full_run_judges_each_target() -> None:
    """A full run says MET or MISSED for each target."""
    text = format_targets(CHECKS)
    assert "MISSED seq/nginx-200: mesh p50 ÷ sidecar = 1.40" in text
    assert "MET    seq/nginx-200: mesh p99 ÷ sidecar = 0.80" in text


def test_quick_run_prints_targets_as_information_only() -> None:
    """A --quick run (CI) prints no MISSED or MET verdict, and says why."""
    text = format_targets(CHECKS, judged=False)
    assert "MISSED" not in text
    assert "MET" not in text
    assert "(info) seq/nginx-200: mesh p50 ÷ sidecar = 1.40" in text
    assert "judged in the full run" in text
