"""The benchmark harness still runs end to end: a tiny pass without system packages.

Timings are never asserted (performance is measured by `benchmarks/run.py`,
not judged by the test suite); only that every table, path and file appears.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.clients import mesh_unavailable

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
ROUNDS, REQUESTS = 2, 20


def test_quick_bench_runs_and_writes_tables(tmp_path: Path) -> None:
    """A quick pass over uvicorn prints both tables and writes JSON with every no-system path."""
    argv = [
        sys.executable,
        str(RUN),
        "--quick",
        "--no-system",
        "--upstreams=uvicorn",
        f"--rounds={ROUNDS}",
        f"--requests={REQUESTS}",
        f"--async-requests={REQUESTS}",
        f"--rate-requests={REQUESTS}",
        "--rate=200",
        "--concurrency=4",
        "--warmup=5",
        "--round-time=20",
        f"--out={tmp_path}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== seq/uvicorn" in done.stdout
    assert "== async/uvicorn" in done.stdout
    assert "== rate/uvicorn" in done.stdout

    document = json.loads((tmp_path / "latest.json").read_text())
    seq, concurrent = document["tables"]["seq/uvicorn"], document["tables"]["async/uvicorn"]
    fixed_rate = document["tables"]["rate/uvicorn"]
    assert "200 req/s" in fixed_rate["title"]
    expected_seq = {"httpx", "naive", "naive-sampled"}
    expected_async = {"httpx-async", "aiohttp", "httpx-async[aiohttp]"}
    expected_rate = {"httpx-async", "httpx-async[aiohttp]"}
    if mesh_unavailable() is None:
        expected_seq |= {"mesh", "mesh-sampled", "mesh-stock-cookies", "mesh+middleware"}
        mesh_async = {"mesh-async", "mesh-async[httpcore]"}
        expected_async |= mesh_async | {"mesh-async-sampled", "mesh-async-nosdk"}
        expected_rate |= mesh_async | {"mesh-async+middleware"}
    if importlib.util.find_spec("httpx_aiohttp"):
        expected_async.add("httpx-async[httpx-aiohttp]")
    assert expected_seq <= set(seq["paths"]), seq["skipped"]
    assert expected_async <= set(concurrent["paths"]), concurrent["skipped"]
    assert expected_rate <= set(fixed_rate["paths"]), fixed_rate["skipped"]
    for table in (seq, concurrent, fixed_rate):
        assert table["rounds_done"] == ROUNDS
        for name, row in table["paths"].items():
            assert row["requests"] == ROUNDS * REQUESTS, name
            assert row["errors"] == 0, (name, row["first_error"])
        assert set(table["ratios"]) == set(table["paths"])
        # the upstream process's CPU is counted for every path (uvicorn burns some per request)
        assert all(row["upstream_cpu_us_per_req"] > 0 for row in table["paths"].values())
        assert (
            "needs"
            in table["skipped"]["httpx+nginx-pair" if table is seq else "httpx-async+nginx-pair"]
        )
    # at 200 arrivals per second, 20 requests take about a tenth of a second per round
    assert fixed_rate["paths"]["httpx-async"]["throughput_rps"] < 1000
    if mesh_unavailable() is None:
        # meshlib's own cost without MeshCookies is reported beside the judged mesh path
        info = [t["target"] for t in seq["targets"] if t["kind"] == "info"]
        assert "mesh-stock-cookies p50 ÷ bare httpx" in info
        # the async targets: throughput against aiohttp, and meshlib's own CPU above its transport
        judged = {t["target"] for t in concurrent["targets"] if t["kind"] == "target"}
        assert "mesh-async req/s ÷ aiohttp" in judged
        assert "mesh-async CPU µs/req above httpx-async[aiohttp] (meshlib's own)" in judged
    assert document["meta"]["cpu_model"]
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "latency.png").stat().st_size > 0
