"""Soak: a mesh client over many calls, failures and policy swaps, watched for growth.

`python benchmarks/soak.py [--calls 100000] [--swap-every 100] [--modes sync,async]`
(`nox -s soak`, or `nox -s bench -- --soak` after the tables).

For each mode, in a fresh interpreter of its own: one client (`MeshClient`
shared by `--threads` threads, or `AsyncMeshClient` with `--concurrency`
calls in flight) makes `--calls` calls to two upstream processes that answer
503 to one request in twenty, and to a service whose endpoint refuses
connections (one call in fifty), while the policy swaps between two
documents every `--swap-every` calls (endpoints and a service added and
removed, breaker, retry and balancer settings changed). Telemetry is what
production runs: the SDK with 1% parent-based sampling and a periodic metric
reader (`benchmarks/telemetry.py`).

At the start, after the warm-up (10% of the calls), in the middle, at the end
and after `close()` it prints the process's RSS, open file descriptors,
threads and a census of live objects (after a full collection): the mesh's
per-destination state, pools and connections, responses, requests,
tracebacks and spans. The goals, checked and printed (MET or MISSED) but not
turned into an exit status: RSS growth after warm-up under 5 MB, file
descriptors and threads flat, and nothing of the client left after close.
Loopback only; the upstreams are stopped by PID; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procs import ProcessSet, free_port
from benchmarks.report import machine_info
from benchmarks.servers import system_tools

__all__ = ["main"]

RSS_GOAL_MB = 5.0
UPSTREAMS = 2
WARMUP_SHARE = 0.1
_REPO = Path(__file__).resolve().parent.parent

# What the census counts, by (module prefix, class name).
WATCH: dict[str, tuple[str, ...]] = {
    "meshlib.outbound.destination": ("Destination", "EndpointState"),
    "meshlib.outbound.breaker": ("Breaker",),
    "meshlib.outbound.budget": ("RetryBudget",),
    "meshlib.outbound.outlier": ("OutlierDetector",),
    "meshlib.outbound.routing": ("Plan", "Router"),
    "meshlib.outbound.transport": ("MeshTransport", "AsyncMeshTransport"),
    "meshlib.telemetry.client": ("CallTelemetry",),
    "httpx": ("Response", "Request", "HTTPTransport", "AsyncHTTPTransport"),
    "meshlib.outbound.aiohttp_transport": ("AiohttpTransport",),
    "httpcore": ("HTTPConnection", "AsyncHTTPConnection"),
    "aiohttp.client_proto": ("ResponseHandler",),
    "opentelemetry.sdk.trace": ("_Span", "ReadableSpan"),
}
_COLUMNS = (
    "Destination",
    "EndpointState",
    "Breaker",
    "transports",
    "connections",
    "Response",
    "Request",
    "traceback",
    "spans",
)


# --------------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    """The process's resident set size now, in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) / (2**20 if sys.platform == "darwin" else 2**10)


def open_fds() -> int:
    """Open file descriptors of this process."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where))
        except OSError:  # pragma: no cover - depends on the platform
            continue
    return -1  # pragma: no cover


def os_threads() -> int:
    """Threads of this process as the OS counts them (Python's plus any native ones)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return threading.active_count()  # pragma: no cover


def census() -> dict[str, int]:
    """Live objects of the watched kinds, tracebacks and all gc-tracked objects, after a full collection."""
    gc.collect()
    wanted = {(module, name) for module, names in WATCH.items() for name in names}
    found: Counter[str] = Counter()
    objects = gc.get_objects()
    for obj in objects:
        kind = type(obj)
        if kind is types.TracebackType:
            found["traceback"] += 1
            continue
        module = str(kind.__module__)
        name = kind.__name__
        if (module, name) in wanted or (module.split(".")[0], name) in wanted:
            found[name] += 1
    found["gc objects"] = len(objects)
    found["transports"] = sum(
        found[n] for n in ("HTTPTransport", "AsyncHTTPTransport", "AiohttpTransport")
    )
    found["connections"] = sum(
        found[n] for n in ("HTTPConnection", "AsyncHTTPConnection", "ResponseHandler")
    )
    found["spans"] = found["_Span"] + found["ReadableSpan"]
    del objects
    return dict(found)


def checkpoint(name: str, calls: int, started: float) -> dict[str, Any]:
    """One row: where the run is and what the process holds."""
    counts = census()
    return {
        "checkpoint": name,
        "calls": calls,
        "seconds": round(time.monotonic() - started, 1),
        "rss_mb": round(rss_mb(), 2),
        "fds": open_fds(),
        "threads": threading.active_count(),
        "os_threads": os_threads(),
        "census": counts,
    }


# --------------------------------------------------------------------------------- the load


def policies(up1: str, up2: str, refused: str) -> tuple[Any, Any]:
    """The two documents the soak swaps between.

    Every service called is in both (a name that is no service would be
    resolved by DNS); B adds an endpoint to payments and a service nobody
    calls (its pool is made and closed at each swap), and changes breaker,
    retry and balancer settings.
    """
    from meshlib import load_policy

    def doc(b: bool) -> Any:
        return load_policy(
            {
                "version": 1,
                "defaults": {
                    "timeouts": {"attempt": "2s", "total": "5s"},
                    "retry": {"attempts": 2 if b else 3, "backoff": {"base": "1ms", "max": "5ms"}},
                    "circuit_breaker": {"failure_threshold": 6 if b else 5, "reset_timeout": "1s"},
                    "load_balancer": "least_request" if b else "round_robin",
                },
                "services": {
                    "payments": {"endpoints": [up1, up2] if b else [up1]},
                    "ledger": {"endpoints": [up2]},
                    "audit": {"endpoints": [refused]},
                    **({"reports": {"endpoints": [up1]}} if b else {}),
                },
            }
        )

    return doc(False), doc(True)


def url_for(index: int) -> str:
    """The call mix: audit (refused) 1 in 50, else payments and ledger in turn."""
    if index % 50 == 0:
        return "http://audit/v1/entries"
    return "http://ledger/v1/balance" if index % 2 else "http://payments/v1/orders/7"


class Swapper:
    """Swaps the policy every `every` calls, from whichever worker makes that call."""

    def __init__(self, store: Any, docs: tuple[Any, Any], every: int) -> None:
        self.store = store
        self.docs = docs
        self.every = every
        self.swaps = 0
        self._lock = threading.Lock()

    def after(self, index: int) -> None:
        """Call after call `index` (0-based) is done."""
        if (index + 1) % self.every == 0:
            with self._lock:
                self.swaps += 1
                self.store.update(self.docs[self.swaps % 2])


def outcome(result: Any) -> str:
    """A call's outcome as a table key: the status code or the exception's name."""
    return str(result.status_code) if hasattr(result, "status_code") else type(result).__name__


def run_sync(client: Any, swapper: Swapper, first: int, last: int, threads: int) -> Counter[str]:
    """Calls `first` .. `last - 1` from `threads` threads sharing `client`."""
    import httpx

    indexes = iter(range(first, last))
    lock = threading.Lock()
    tallies: list[Counter[str]] = []

    def worker() -> None:
        tally: Counter[str] = Counter()
        tallies.append(tally)
        while True:
            with lock:
                index = next(indexes, None)
            if index is None:
                return
            try:
                tally[outcome(client.get(url_for(index)))] += 1
            except httpx.HTTPError as exc:
                tally[type(exc).__name__] += 1
            swapper.after(index)

    pool = [threading.Thread(target=worker, name=f"soak-{n}") for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=3600)
    return sum(tallies, Counter())


async def run_async(
    client: Any, swapper: Swapper, first: int, last: int, concurrency: int
) -> Counter[str]:
    """Calls `first` .. `last - 1` with `concurrency` in flight on one event loop."""
    import httpx

    indexes = iter(range(first, last))
    tally: Counter[str] = Counter()

    async def worker() -> None:
        for index in indexes:
            try:
                tally[outcome(await client.get(url_for(index)))] += 1
            except httpx.HTTPError as exc:
                tally[type(exc).__name__] += 1
            swapper.after(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def soak(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode's whole soak, in this process: rows at each checkpoint and the outcomes."""
    from benchmarks.telemetry import install
    from meshlib import AsyncMeshClient, MeshClient, PolicyStore

    telemetry = install()
    started = time.monotonic()
    docs = policies(*args.endpoints)
    store = PolicyStore(docs[0])
    swapper = Swapper(store, docs, args.swap_every)
    bounds = [0, int(args.calls * WARMUP_SHARE), args.calls // 2, args.calls]
    names = ["warm", "middle", "end"]
    rows = [checkpoint("start", 0, started)]
    tally: Counter[str] = Counter()
    if mode == "sync":
        client = MeshClient(store, service_name="soak")
        for (first, last), name in zip(itertools.pairwise(bounds), names, strict=True):
            tally += run_sync(client, swapper, first, last, args.threads)
            rows.append(checkpoint(name, last, started))
        client.close()
        del client
    else:

        async def main() -> None:
            nonlocal tally
            client = AsyncMeshClient(store, service_name="soak")
            for (first, last), name in zip(itertools.pairwise(bounds), names, strict=True):
                tally += await run_async(client, swapper, first, last, args.concurrency)
                rows.append(checkpoint(name, last, started))
            await client.aclose()

        asyncio.run(main())
    rows.append(checkpoint("closed", args.calls, started))
    telemetry.shutdown()
    return {"mode": mode, "rows": rows, "outcomes": dict(tally), "swaps": swapper.swaps}


# --------------------------------------------------------------------------------- reporting


def verdict(result: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """Growth after warm-up and whether the goals are met.

    A pool opens connections as the calls in flight need them, up to one per
    call in flight and upstream, and may reach that bound slowly: descriptors
    may rise after the warm-up by connections only, which must stay within the
    bound, while every other descriptor stays flat.
    """
    rows = {row["checkpoint"]: row for row in result["rows"]}
    start, warm, middle = rows["start"], rows["warm"], rows["middle"]
    end, closed = rows["end"], rows["closed"]
    workers = args["threads"] if result["mode"] == "sync" else args["concurrency"]
    mesh_left = {
        name: count
        for name, count in closed["census"].items()
        if name in ("Destination", "EndpointState", "Breaker", "Router", "transports") and count
    }
    growth = {
        "rss_mb": round(end["rss_mb"] - warm["rss_mb"], 2),
        "fds": end["fds"] - warm["fds"],
        "other_fds": _other_fds(end) - _other_fds(warm),
        "connections": max(row["census"].get("connections", 0) for row in (warm, middle, end)),
        "connection_bound": workers * UPSTREAMS,
        "threads": end["os_threads"] - warm["os_threads"],
        "fds_after_close": closed["fds"] - start["fds"],
        "threads_after_close": closed["os_threads"] - start["os_threads"],
        "mesh_objects_after_close": mesh_left,
    }
    growth["met"] = (
        growth["rss_mb"] < RSS_GOAL_MB
        and growth["other_fds"] <= 0
        and growth["connections"] <= growth["connection_bound"]
        and growth["threads"] <= 0
        and growth["fds_after_close"] <= 0
        and growth["threads_after_close"] <= 0
        and not mesh_left
    )
    return growth


def _other_fds(row: dict[str, Any]) -> int:
    """Descriptors that are not pooled connections (listening, event loop, files)."""
    return int(row["fds"]) - int(row["census"].get("connections", 0))


def title(result: dict[str, Any], args: dict[str, Any]) -> str:
    """What a mode's run did, in one line."""
    mode = result["mode"]
    workers = f"{args['threads']} threads" if mode == "sync" else f"{args['concurrency']} in flight"
    return (
        f"soak/{mode}: {args['calls']} calls, {workers}, a policy swap every "
        f"{args['swap_every']} calls ({result['swaps']} swaps), upstream 503 for 1 in 20"
    )


def table(result: dict[str, Any]) -> list[list[str]]:
    """The checkpoints as rows of cells, the header first."""
    rows = [["checkpoint", "calls", "s", "RSS MiB", "fds", "threads", "gc objects", *_COLUMNS]]
    for row in result["rows"]:
        counts = row["census"]
        rows.append(
            [
                row["checkpoint"],
                str(row["calls"]),
                f"{row['seconds']:.0f}",
                f"{row['rss_mb']:.1f}",
                str(row["fds"]),
                str(row["os_threads"]),
                str(counts.get("gc objects", 0)),
                *(str(counts.get(column, 0)) for column in _COLUMNS),
            ]
        )
    return rows


def summary(result: dict[str, Any]) -> list[str]:
    """The outcomes and the verdict, one line each."""
    growth = result["verdict"]
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(result["outcomes"].items()))
    left = growth["mesh_objects_after_close"] or "none"
    return [
        f"outcomes: {outcomes}",
        f"after warm-up: RSS {growth['rss_mb']:+.2f} MiB (goal < {RSS_GOAL_MB:g}), "
        f"fds {growth['fds']:+d} (connections: at most {growth['connections']}, bound "
        f"{growth['connection_bound']} = one per call in flight and upstream; other descriptors "
        f"{growth['other_fds']:+d}), threads {growth['threads']:+d}; after close: fds "
        f"{growth['fds_after_close']:+d} and threads {growth['threads_after_close']:+d} against "
        f"the start, mesh objects left {left} -> {'MET' if growth['met'] else 'MISSED'}",
    ]


def format_result(result: dict[str, Any], args: dict[str, Any]) -> str:
    """The mode's table and verdict, as printed."""
    rows = table(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"== {title(result, args)}", ""]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, "", *summary(result), ""])


# --------------------------------------------------------------------------------- driving


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per mode (100000)")
    parser.add_argument("--swap-every", type=int, default=100, help="calls between swaps (100)")
    parser.add_argument("--modes", default="sync,async", help="comma list of sync,async")
    parser.add_argument("--threads", type=int, default=4, help="threads sharing the sync client")
    parser.add_argument("--concurrency", type=int, default=16, help="async calls in flight")
    parser.add_argument("--out", type=Path, help="write soak-<time>.json and soak-latest.json here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a mode run in its own interpreter
    parser.add_argument("--endpoints", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 10 or args.swap_every < 1:
        parser.error("--calls must be at least 10 and --swap-every at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run each mode in a fresh interpreter against two upstream processes; print and save."""
    args = parse_args(argv)
    if args.child:
        # Breaker openings on the refusing endpoint are expected here: keep them off the tables.
        logging.getLogger("meshlib").setLevel(logging.ERROR)
        result = soak(args.child, args)
        args.result.write_text(json.dumps(result))
        return 0
    machine = machine_info(system_tools())
    load = machine["loadavg_start"] or (0.0, 0.0, 0.0)
    print(
        f"# soak on {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="meshlib-soak-") as tmp:
        procs = ProcessSet(Path(tmp))
        try:
            ups = [_start_upstream(procs, n) for n in (1, 2)]
            endpoints = [f"http://127.0.0.1:{up}" for up in ups]
            endpoints.append(f"http://127.0.0.1:{free_port()}")  # nothing listens there
            for mode in args.modes.split(","):
                result_file = Path(tmp) / f"{mode}.json"
                child = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
                child += ["--endpoints", *endpoints, "--result", str(result_file)]
                child += [f"--calls={args.calls}", f"--swap-every={args.swap_every}"]
                child += [f"--threads={args.threads}", f"--concurrency={args.concurrency}"]
                subprocess.run(child, check=True, cwd=_REPO, timeout=3600)
                result = json.loads(result_file.read_text())
                result["verdict"] = verdict(result, vars(args))
                print(format_result(result, vars(args)), flush=True)
                results.append(result)
        finally:
            procs.stop_all()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {
            "machine": machine,
            "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "args": {k: v for k, v in vars(args).items() if k not in ("out", "child", "result")},
            "results": results,
        }
        text = json.dumps(document, default=str, indent=1)
        (args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
        (args.out / "soak-latest.json").write_text(text)
    return 0


def _start_upstream(procs: ProcessSet, number: int) -> int:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.soak_upstream:app",
        "--app-dir",
        str(_REPO),
    ]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    argv += ["--no-access-log"]
    procs.start(f"soak-upstream-{number}", argv, port=port, cwd=_REPO)
    return port


if __name__ == "__main__":
    sys.exit(main())
