"""MeshClient overhead against bare httpx, measured side by side in one run.

Two ratios, medians over interleaved rounds (no absolute time is asserted):

* MockTransport (no network): MeshClient with a default policy over
  `httpx.MockTransport` vs `httpx.Client(transport=MockTransport)`.
* Loopback: MeshClient calling a mesh service on 127.0.0.1 vs httpx.Client
  calling the same server directly (tracing unsampled: no SDK configured).
* 32 requests in flight: req/s of httpx.AsyncClient, AsyncMeshClient on
  httpx's pool and on meshlib's AiohttpTransport, and plain aiohttp.

Run: `python benchmarks/bench_overhead.py [--calls N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from meshlib.outbound import AsyncMeshClient, MeshClient
from meshlib.policy.model import Policy


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _per_call(fn: Callable[[], object], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _compare(
    name: str, bare: Callable[[], object], mesh: Callable[[], object], calls: int, rounds: int
) -> None:
    for fn in (bare, mesh):
        _per_call(fn, 200)  # warm up
    bare_p50, mesh_p50, bare_p99, mesh_p99 = [], [], [], []
    for _ in range(rounds):
        b = sorted(_per_call(bare, calls))
        m = sorted(_per_call(mesh, calls))
        bare_p50.append(statistics.median(b))
        mesh_p50.append(statistics.median(m))
        bare_p99.append(b[int(len(b) * 0.99)])
        mesh_p99.append(m[int(len(m) * 0.99)])
    bp50, mp50 = statistics.median(bare_p50), statistics.median(mesh_p50)
    bp99, mp99 = statistics.median(bare_p99), statistics.median(mesh_p99)
    print(
        f"{name:<12} bare p50 {bp50 * 1e6:8.1f} us  mesh p50 {mp50 * 1e6:8.1f} us  "
        f"ratio p50 {mp50 / bp50:5.2f}  ratio p99 {mp99 / bp99:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    policy = Policy.model_validate({"version": 1})
    with httpx.Client(transport=mock) as bare, MeshClient(policy, transport=mock) as mesh:
        _compare(
            "mock",
            lambda: bare.get("http://upstream.test/x"),
            lambda: mesh.get("http://upstream.test/x"),
            args.calls,
            args.rounds,
        )

    asyncio.run(_async_mock(args.calls, args.rounds))

    port = _free_port()
    # The upstream runs in its own process so it does not share the GIL with the clients.
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.bench_overhead:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--lifespan",
            "off",
        ],
        cwd=root,
    )
    try:
        _wait_for(port)
        policy = Policy.model_validate(
            {"version": 1, "services": {"upstream": {"endpoints": [f"http://127.0.0.1:{port}"]}}}
        )
        with httpx.Client() as bare, MeshClient(policy) as mesh:
            _compare(
                "loopback",
                lambda: bare.get(f"http://127.0.0.1:{port}/x"),
                lambda: mesh.get("http://upstream/x"),
                max(200, args.calls // 4),
                args.rounds,
            )
        asyncio.run(_concurrent(port, policy, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _async_mock(calls: int, rounds: int) -> None:
    """AsyncMeshClient vs httpx.AsyncClient over MockTransport, sequential calls."""
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    policy = Policy.model_validate({"version": 1})

    async def per_call(client: httpx.AsyncClient, count: int) -> list[float]:
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await client.get("http://upstream.test/x")
            samples.append(time.perf_counter() - start)
        return samples

    async with (
        httpx.AsyncClient(transport=mock) as bare,
        AsyncMeshClient(policy, transport=mock) as mesh,
    ):
        await per_call(bare, 200)
        await per_call(mesh, 200)
        bare_p50, mesh_p50 = [], []
        for _ in range(rounds):
            bare_p50.append(statistics.median(await per_call(bare, calls)))
            mesh_p50.append(statistics.median(await per_call(mesh, calls)))
    b, m = statistics.median(bare_p50), statistics.median(mesh_p50)
    print(
        f"{'async mock':<12} bare p50 {b * 1e6:8.1f} us  mesh p50 {m * 1e6:8.1f} us  ratio p50 {m / b:5.2f}"
    )


async def _concurrent(port: int, policy: Policy, rounds: int, calls: int = 2000) -> None:
    """Requests per second with 32 in flight: httpx, AsyncMeshClient (httpx and aiohttp pools), aiohttp."""
    import aiohttp

    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    url = f"http://127.0.0.1:{port}/x"
    limits = httpx.Limits(max_connections=32)

    async def rate(get: Callable[[], Awaitable[object]], count: int) -> float:
        gate = asyncio.Semaphore(32)

        async def one() -> None:
            async with gate:
                await get()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - start)

    async with (
        httpx.AsyncClient(limits=limits) as bare,
        AsyncMeshClient(policy, limits=limits) as mesh,
        AsyncMeshClient(policy, limits=limits, endpoint_transport=AiohttpTransport) as fast,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session,
    ):

        async def raw() -> None:
            async with session.get(url) as response:
                await response.read()

        kinds: dict[str, Callable[[], Awaitable[object]]] = {
            "httpx.AsyncClient": lambda: bare.get(url),
            "AsyncMeshClient": lambda: mesh.get("http://upstream/x"),
            "AsyncMeshClient+aiohttp": lambda: fast.get("http://upstream/x"),
            "aiohttp": raw,
        }
        results: dict[str, list[float]] = {name: [] for name in kinds}
        for get in kinds.values():
            await rate(get, 200)
        for _ in range(rounds):
            for name, get in kinds.items():
                results[name].append(await rate(get, calls))
    base = statistics.median(results["httpx.AsyncClient"])
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"{'32 in flight':<12} {name:<24} {median:8.0f} req/s  x{median / base:5.2f} vs httpx"
        )


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the upstream did not start")


if __name__ == "__main__":
    main()
