"""What `import meshlib` costs: modules loaded and time, in fresh interpreters, interleaved.

`python benchmarks/bench_import.py [--rounds N]` (`nox -s bench` runs it first).

Each round starts one fresh interpreter per statement below, in turn, and
each child measures only its own import statement (wall time and the number
of modules it added), so interpreter start-up is not counted. Medians over
the rounds are reported with ratios against two baselines of the same run:
`import httpx` (what any httpx user already pays) and the eager import the
top level did before it went lazy (every re-exported module at once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

STATEMENTS = {
    "import meshlib": "import meshlib",
    "meshlib.MeshClient": "import meshlib; meshlib.MeshClient",
    "meshlib.MeshMiddleware": "import meshlib; meshlib.MeshMiddleware",
    "meshlib.load_policy": "import meshlib; meshlib.load_policy",
    "import httpx (baseline)": "import httpx",
    "eager top level (baseline)": (
        "import meshlib.controlplane.client, meshlib.deadline, meshlib.errors, "
        "meshlib.inbound.asgi, meshlib.inbound.wsgi, meshlib.outbound.client, "
        "meshlib.outbound.transport, meshlib.policy.parse, meshlib.policy.resolve, "
        "meshlib.policy.sources, meshlib.policy.store, meshlib.serve, meshlib.settings, "
        "meshlib.telemetry.setup, meshlib.testing"
    ),
}

_CHILD = (
    "import sys, time, json\n"
    "before = len(sys.modules)\n"
    "start = time.perf_counter()\n"
    "{statement}\n"
    "elapsed = time.perf_counter() - start\n"
    "print(json.dumps([elapsed, len(sys.modules) - before]))\n"
)


def measure(statement: str) -> tuple[float, int]:
    """Seconds and modules one fresh interpreter spends on `statement`."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seconds, modules = json.loads(done.stdout.strip().splitlines()[-1])
    return float(seconds), int(modules)


def run(rounds: int) -> dict[str, dict[str, float]]:
    """Median milliseconds and modules per statement over `rounds` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    modules: dict[str, int] = {}
    for _ in range(rounds):
        for name, statement in STATEMENTS.items():
            seconds, count = measure(statement)
            times[name].append(seconds * 1000)
            modules[name] = count
    return {
        name: {"ms": statistics.median(values), "modules": modules[name]}
        for name, values in times.items()
    }


def report(results: dict[str, dict[str, float]], rounds: int) -> str:
    """The table: median ms, modules, and ratios to `import httpx` and to the eager top level."""
    httpx_ms = results["import httpx (baseline)"]["ms"]
    eager_ms = results["eager top level (baseline)"]["ms"]
    lines = [
        f"== import cost (fresh interpreters, median of {rounds} interleaved rounds)",
        f"  {'statement':<28}{'ms':>8}{'modules':>9}{'÷ httpx':>9}{'÷ eager':>9}",
    ]
    for name, row in results.items():
        lines.append(
            f"  {name:<28}{row['ms']:>8.1f}{int(row['modules']):>9}"
            f"{row['ms'] / httpx_ms:>9.2f}{row['ms'] / eager_ms:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; the exit status is 0 (nothing here is judged)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    args = parser.parse_args(argv)
    print(report(run(max(1, args.rounds)), max(1, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
