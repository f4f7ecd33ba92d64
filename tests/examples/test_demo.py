"""examples/demo.py end to end: a short run exits 0, tells the story, and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.examples.conftest import EXAMPLES


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_short_demo_shows_retries_breaker_and_latency_split_then_cleans_up() -> None:
    """`demo.py --duration 5` exits 0 after showing retries, a breaker opening and closing, and the split."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--duration", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    retries = re.search(r"retries: (\d+) failed calls were tried again", output)
    assert retries is not None, output
    assert int(retries.group(1)) > 0, output
    assert "orders -> payments breaker" in output, output
    assert "OPENED" in output, output
    assert "CLOSED again" in output, output
    assert re.search(r"opened \d+x, recovered [1-9]\d*x, now closed", output), output
    assert "Latency split per edge" in output, output
    assert re.search(
        r"orders -> payments\s+service [\d.]+ ms \| network [\d.]+ ms \| meshlib", output
    )
    assert "/dashboard" in output, output
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) == 4, output  # the control plane and three services
    assert not [pid for pid in pids if _alive(pid)]
    assert "All demo processes stopped." in output
