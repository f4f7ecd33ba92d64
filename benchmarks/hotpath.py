"""A steady loop of one client against nginx ``return 200``, to profile with py-spy.

::

    py-spy record --rate 500 --format raw -o mesh.txt -- \\
        python benchmarks/hotpath.py --client mesh --seconds 20
    python benchmarks/hotpath.py --summarise mesh.txt     # top functions, self and total %

Needs nginx (the cheap upstream); stops it by PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clients import Target, open_async, open_sync
from benchmarks.procs import ProcessSet
from benchmarks.servers import INSTALL_HINT, start_nginx_upstream, system_tools
from benchmarks.telemetry import install

__all__ = ["main", "summarise"]


def _frame(raw: str) -> str:
    # "Client.send (httpx/_client.py:922)" -> "Client.send (httpx/_client.py)"
    name, _, where = raw.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


_INNER = "HTTPTransport.handle_request (httpx/_transports/default.py)"
_INNER_ASYNC = "AsyncHTTPTransport.handle_async_request (httpx/_transports/default.py)"
_WIRE = ("httpcore/", "h11/", "httpx/_transports/")
_LOOP = ("_sync (benchmarks/hotpath.py)", "worker (benchmarks/hotpath.py)")


def _owner(frames: list[str]) -> str:
    """Who a sample's time belongs to: the inner httpx transport, a meshlib function, or a library."""
    inner = "[inner httpx transport, httpcore, h11, socket: what bare httpx pays too]"
    if _INNER in frames or _INNER_ASYNC in frames:
        return inner
    for index in range(len(frames) - 1, -1, -1):
        if "meshlib/" in frames[index]:
            if any(f.partition(" (")[2].startswith(_WIRE) for f in frames[index + 1 :]):
                return inner
            return frames[index]
    leaf = frames[-1]
    lib = leaf.partition(" (")[2].split("/")[0] or leaf
    return f"[outside meshlib frames: {lib}]"


def summarise(path: Path, top: int = 30) -> str:
    """Self and inclusive share of samples per function, and per owner, from py-spy ``--format raw``."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if not any(loop in frames for loop in _LOOP) or any(
            f.startswith(("open_sync (", "open_async (")) for f in frames
        ):
            continue  # start-up and shutdown, not the request loop
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        owners[_owner(frames)] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples inside the request loop"
    lines = [f"{total} samples in the request loop", "", "by owner (% of loop samples):"]
    lines += [f"{100 * n / total:7.1f}  {owner}" for owner, n in owners.most_common(top)]
    lines += ["", f"{'self %':>7} {'total %':>8}  function (file), by total"]
    lines += [
        f"{100 * own[f] / total:7.1f} {100 * n / total:8.1f}  {f}"
        for f, n in inclusive.most_common(top)
    ]
    lines += ["", "by self time:"]
    lines += [
        f"{100 * n / total:7.1f} {100 * inclusive[f] / total:8.1f}  {f}"
        for f, n in own.most_common(top)
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the loop (or summarise a py-spy raw file)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", default="mesh", help="httpx, naive or mesh")
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="the async client, N in flight"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sampled", action="store_true", help="sample every trace")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--no-telemetry", action="store_true", help="install no OpenTelemetry SDK (API no-ops only)"
    )
    parser.add_argument(
        "--summarise", type=Path, help="print the top functions of a py-spy raw file and exit"
    )
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return 0
    tools = system_tools()
    if tools.nginx is None:
        raise SystemExit(f"nginx not found; {INSTALL_HINT}")
    tel = None if args.no_telemetry else install()
    with tempfile.TemporaryDirectory(prefix="meshlib-hotpath-") as tmp:
        procs = ProcessSet(Path(tmp))
        try:
            up = start_nginx_upstream(procs, tools)
            target = Target(url=f"http://127.0.0.1:{up.port}/")
            cpu = time.process_time()
            with tel.sampling(args.sampled) if tel else contextlib.nullcontext():
                done = asyncio.run(_async(args, target)) if args.use_async else _sync(args, target)
            cpu = time.process_time() - cpu
        finally:
            procs.stop_all()
            if tel:
                tel.shutdown()
    print(
        f"{done} requests in {args.seconds:.0f}s, {1e6 * cpu / max(done, 1):.0f} µs CPU per request"
    )
    return 0


def _sync(args: argparse.Namespace, target: Target) -> int:
    opened = open_sync(args.client, target)
    done, stop = 0, time.monotonic() + args.seconds
    try:
        while time.monotonic() < stop:
            opened.call()
            done += 1
    finally:
        opened.close()
    return done


async def _async(args: argparse.Namespace, target: Target) -> int:
    opened = await open_async(args.client, target)
    done, stop = 0, time.monotonic() + args.seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await opened.call()
            done += 1

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        await opened.close()
    return done


if __name__ == "__main__":
    sys.exit(main())
