"""The soak benchmark still runs end to end: a tiny pass, both modes (growth is never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_soak_runs_both_modes_and_writes_json(tmp_path: Path) -> None:
    """A 300-call soak per mode prints every checkpoint and leaves no mesh object after close."""
    argv = [sys.executable, str(SOAK), "--calls=300", "--swap-every=30", f"--out={tmp_path}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for mode in ("sync", "async"):
        assert f"== soak/{mode}: 300 calls" in done.stdout
    document = json.loads((tmp_path / "soak-latest.json").read_text())
    for result in document["results"]:
        assert [row["checkpoint"] for row in result["rows"]] == [
            "start",
            "warm",
            "middle",
            "end",
            "closed",
        ]
        assert result["swaps"] == 10
        assert result["verdict"]["mesh_objects_after_close"] == {}
        assert sum(result["outcomes"].values()) == 300
