"""Run the meshlib benchmarks: `python benchmarks/run.py [--quick] [--rounds N] [--out DIR]`.

Compares, against the same upstream and through the same client API: bare
httpx, httpx through an nginx and an HAProxy sidecar pair, the naive
tenacity + pybreaker + OpenTelemetry stack, MeshClient (unsampled and sampled
tracing) and MeshClient over mTLS; sequentially and with 32 requests in
flight (aiohttp for reference), and async at a fixed Poisson arrival rate
below saturation (open loop, the latency comparison for async callers).
Prints one table per (mode, upstream) with
ratios against bare httpx from the same run, checks the targets, writes JSON
and a latency plot under `--out`. Loopback only; every process it starts is
stopped by PID; the whole run is bounded by `--budget` seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.certs import make_pki
from benchmarks.clients import mesh_unavailable
from benchmarks.measure import STOP
from benchmarks.plot import plot_latencies
from benchmarks.procs import ProcessSet
from benchmarks.report import format_table, format_targets, machine_info, write_json
from benchmarks.servers import INSTALL_HINT, system_tools
from benchmarks.tables import (
    ASYNC_PATHS,
    RATE_PATHS,
    SYNC_PATHS,
    UPSTREAM_NEEDS,
    PathSpec,
    Settings,
    Topology,
    run_async_table,
    run_sync_table,
)
from benchmarks.telemetry import install

__all__ = ["main"]

_FULL = {
    "rounds": 7,
    "requests": 500,
    "async_requests": 800,
    "warmup": 100,
    "round_time": 4.0,
    "rate_requests": 200,
    "budget": 420.0,
}
_QUICK = {
    "rounds": 3,
    "requests": 150,
    "async_requests": 160,
    "warmup": 20,
    "round_time": 1.0,
    "rate_requests": 60,
    "budget": 40.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` changes the defaults of every unset sizing option."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a pass well under a minute")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per table (7; quick 3)")
    parser.add_argument(
        "--requests", type=int, help="sequential requests per path per round (500; quick 150)"
    )
    parser.add_argument(
        "--async-requests", type=int, help="async requests per path per round (800; quick 160)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight in the async tables"
    )
    parser.add_argument(
        "--rate", type=float, default=400.0, help="arrivals per second in the fixed-rate tables"
    )
    parser.add_argument(
        "--rate-requests", type=int, help="fixed-rate requests per path per round (200; quick 60)"
    )
    parser.add_argument(
        "--warmup", type=int, help="requests per client before the rounds (100; quick 20)"
    )
    parser.add_argument(
        "--round-time", type=float, help="seconds at most per path per round (4; quick 1)"
    )
    parser.add_argument(
        "--budget", type=float, help="seconds at most for all rounds of the run (420; quick 40)"
    )
    parser.add_argument(
        "--upstreams",
        help="comma list of nginx-200,uvicorn (default both; quick: nginx-200, or uvicorn without nginx)",
    )
    parser.add_argument("--modes", default="seq,async,rate", help="comma list of seq,async,rate")
    parser.add_argument(
        "--only", help="comma list of path names to run (each table's base path is always run)"
    )
    parser.add_argument(
        "--no-system", action="store_true", help="skip every path that needs nginx or haproxy"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="where JSON and the plot go"
    )
    parser.add_argument("--plot", type=Path, help="where the PNG goes (default OUT/latency.png)")
    args = parser.parse_args(argv)
    sizes = _QUICK if args.quick else _FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    counts = (args.rounds, args.requests, args.async_requests, args.rate_requests, args.concurrency)
    if min(counts) < 1 or args.rate <= 0:
        parser.error(
            "--rounds, --requests, --async-requests, --rate-requests and --concurrency must be "
            "at least 1, and --rate above 0"
        )
    return args


def _upstreams(args: argparse.Namespace, have_nginx: bool) -> list[str]:
    if args.upstreams:
        chosen = [u.strip() for u in args.upstreams.split(",") if u.strip()]
        unknown = set(chosen) - set(UPSTREAM_NEEDS)
        if unknown:
            raise SystemExit(
                f"unknown upstream(s) {', '.join(sorted(unknown))}; use nginx-200 and/or uvicorn"
            )
        return chosen
    usable = have_nginx and not args.no_system
    if args.quick:
        return ["nginx-200"] if usable else ["uvicorn"]
    return ["nginx-200", "uvicorn"] if usable else ["uvicorn"]


def _select(paths: tuple[PathSpec, ...], only: str | None) -> tuple[PathSpec, ...]:
    if not only:
        return paths
    wanted = {name.strip() for name in only.split(",")}
    return tuple(p for i, p in enumerate(paths) if i == 0 or p.name in wanted)


def _stop(signum: int, frame: Any) -> None:
    # Raising here could land inside the event loop and strand its worker threads; instead
    # every loop checks STOP and the run ends cleanly. A second signal ends it at once.
    if STOP.is_set():
        raise SystemExit(128 + signum)
    STOP.set()
    print(
        f"\nstopping after signal {signum}: finishing the current round, then cleaning up",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the tables, print them, write JSON and the plot; return the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop)
    tools = system_tools()
    if tools.missing() and not args.no_system:
        print(
            f"note: {', '.join(tools.missing())} not found; their paths are skipped. To run them, {INSTALL_HINT}."
        )
    mesh_reason = mesh_unavailable()
    if mesh_reason:
        print(f"note: mesh paths unavailable: {mesh_reason}")
    cfg = Settings(
        rounds=args.rounds,
        requests=args.requests,
        async_requests=args.async_requests,
        concurrency=args.concurrency,
        warmup=args.warmup,
        round_time=args.round_time,
        rate=args.rate,
        rate_requests=args.rate_requests,
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"seq", "async", "rate"}:
        raise SystemExit("--modes takes one or more of seq, async, rate")
    upstreams = _upstreams(args, tools.nginx is not None)
    plan = [(u, m) for m in modes for u in upstreams]
    tel = install()
    meta = machine_info(tools)
    tables: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    end = started + args.budget
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-") as tmp:
        procs = ProcessSet(Path(tmp))
        try:
            pki = make_pki(Path(tmp))
            topos = {u: Topology(procs, tools, u, pki, no_system=args.no_system) for u in upstreams}
            for index, (upstream, mode) in enumerate(plan):
                deadline = time.monotonic() + (end - time.monotonic()) / (len(plan) - index)
                key = f"{mode}/{upstream}"
                try:
                    if mode == "seq":
                        paths = _select(SYNC_PATHS, args.only)
                        table = run_sync_table(
                            paths, topos[upstream], cfg, tel, deadline, mesh_reason
                        )
                    else:
                        fixed_rate = mode == "rate"
                        paths = _select(RATE_PATHS if fixed_rate else ASYNC_PATHS, args.only)
                        table = run_async_table(
                            paths,
                            topos[upstream],
                            cfg,
                            tel,
                            deadline,
                            mesh_reason,
                            fixed_rate=fixed_rate,
                        )
                except RuntimeError as exc:
                    print(f"== {key}: could not run: {exc}")
                    continue
                tables[key] = table
                print(format_table(key, table), flush=True)
                print(flush=True)
                if STOP.is_set():
                    break
        finally:
            procs.stop_all()
            tel.shutdown()
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    checks = [dict(check, table=key) for key, table in tables.items() for check in table["targets"]]
    print(format_targets(checks, judged=not args.quick))
    plot_path = args.plot or args.out / "latency.png"
    title = (
        f"meshlib bench {meta['started_utc']} — {meta['cpu_model']}, {meta['cpus']} CPUs, "
        f"Python {meta['python']}, {cfg.rounds} rounds interleaved"
    )
    drawn = plot_latencies({k: t.pop("latencies_us") for k, t in tables.items()}, plot_path, title)
    document = {
        "meta": meta,
        "settings": vars(cfg) | {"budget_s": args.budget},
        "tables": tables,
        "targets": checks,
    }
    json_path = write_json(args.out, document)
    print(f"\nwrote {json_path}" + (f" and {drawn}" if drawn else " (no plot: matplotlib missing)"))
    print(
        f"machine: {meta['cpu_model']}, {meta['cpus']} CPUs, load {meta['loadavg_start']} -> {meta['loadavg_end']}"
    )
    if STOP.is_set():
        print("interrupted: the figures above are partial")
        return 130
    return 0 if tables else 1


if __name__ == "__main__":
    sys.exit(main())
