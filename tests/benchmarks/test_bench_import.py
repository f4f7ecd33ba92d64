"""The import benchmark still runs: one round, every statement measured (timings never asserted)."""

from __future__ import annotations

import pytest

from benchmarks import bench_import


def test_import_bench_prints_every_statement(capsys: pytest.CaptureFixture[str]) -> None:
    """One round prints a row with modules and ratios for each statement, baselines included."""
    assert bench_import.main(["--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for name in bench_import.STATEMENTS:
        assert f"  {name}" in out
    row = next(line for line in out.splitlines() if line.startswith("  import meshlib "))
    assert int(row.split()[3]) < 20  # modules: the lazy top level imports next to nothing
