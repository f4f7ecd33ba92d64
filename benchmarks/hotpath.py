"""A steady loop of one client against nginx `return 200`, to profile with py-spy.

```text
py-spy record --rate 500 --format raw -o mesh.txt -- \\
    python benchmarks/hotpath.py --client mesh --seconds 20
python benchmarks/hotpath.py --summarise mesh.txt     # top functions, self and total %
```

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


_TRANSPORT = (
    "httpcore/",
    "h11/",
    "httpx/_transports/",
    "aiohttp/",
    "yarl/",
    "multidict/",
    "propcache/",
    "meshlib/outbound/aiohttp_",
    "asyncio/selector_events.py",
    "asyncio/sslproto.py",
    "ssl.py",
    "socket.py",
)
_LAYERS = (
    (_TRANSPORT, "[the transport: connection pool, HTTP/1.1, socket I/O (bare httpx pays it too)]"),
    (("meshlib/",), "meshlib"),
    (("httpx/",), "[the httpx client layer: build the request, cookies, the response]"),
    (("benchmarks/",), "[the bench loop]"),
)


def _where(frame: str) -> str:
    return frame.partition(" (")[2]


def _owner(frames: list[str]) -> str:
    """Whose work a sample is: the nearest enclosing layer (OpenTelemetry and stdlib count for their caller)."""
    for frame in reversed(frames):
        where = _where(frame)
        for prefixes, owner in _LAYERS:
            if where.startswith(prefixes):
                return frame if owner == "meshlib" else owner
    return "[the event loop and the rest]"


def _in_loop(frames: list[str]) -> bool:
    """Whether a sample is request-loop work (not start-up, the client's opening or closing)."""
    if any(f.startswith(("open_sync (", "open_async (")) for f in frames):
        return False
    return any(
        f.startswith(("_sync (benchmarks/hotpath.py", "BaseEventLoop._run_once (")) for f in frames
    )


def summarise(path: Path, top: int = 30) -> str:
    """Self and inclusive share of samples per function, and per owner, from py-spy `--format raw`."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if not _in_loop(frames):
            continue  # start-up and shutdown, not the request loop
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        owners[_owner(frames)] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples inside the request loop"
    mesh = sum(n for owner, n in owners.items() if "meshlib/" in owner)
    lines = [f"{total} samples in the request loop", "", "by owner (% of loop samples):"]
    lines.append(f"{100 * mesh / total:7.1f}  meshlib, in all (its functions below)")
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
