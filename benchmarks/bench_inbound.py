"""Inbound overhead: a trivial FastAPI and Flask app with and without the mesh middleware.

`python benchmarks/bench_inbound.py [--rounds 7] [--requests 400]`

Four servers run as separate processes on 127.0.0.1 (uvicorn for FastAPI,
werkzeug's threaded server for Flask), each app bare and wrapped
(`MeshMiddleware` / `MeshWSGIMiddleware` with an SDK tracer provider whose
sampler is ALWAYS_OFF, an SDK meter provider, and an inbound policy with a
rate limit and a concurrency limit that are never reached). One keep-alive
client sends sequential `GET /ping` requests; rounds alternate between the
variants so machine noise hits them alike. Reported per variant: median
p50/p90 latency over rounds, the server's CPU time per request, and the
wrapped/bare ratios of the same run. The target is ratio p50 <= 1.15.
Every load loop is bounded by a request count and a time limit; every
process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.procs import ProcessSet, free_port
from benchmarks.stats import percentile

__all__ = ["main"]

APPS = ("fastapi", "flask")
VARIANTS = ("bare", "mesh")
POLICY = {
    "version": 1,
    "services": {
        "bench": {
            "inbound": {
                "rate_limit": {"requests_per_second": 1_000_000, "burst": 1_000_000},
                "concurrency_limit": 10_000,
            }
        }
    },
}


def _mesh_kwargs() -> dict[str, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from meshlib import Policy

    return {
        "policy": Policy.model_validate(POLICY),
        "service_name": "bench",
        "tracer_provider": TracerProvider(sampler=ALWAYS_OFF),
        "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()]),
    }


def serve(app_name: str, variant: str, port: int) -> None:
    """Child process: serve one variant until terminated."""
    if app_name == "fastapi":
        import uvicorn
        from fastapi import FastAPI

        fastapi = FastAPI()

        @fastapi.get("/ping")
        async def ping() -> dict[str, bool]:
            return {"ok": True}

        app: Any = fastapi
        if variant == "mesh":
            from meshlib.inbound import MeshMiddleware

            app = MeshMiddleware(fastapi, **_mesh_kwargs())
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    else:
        import logging

        from flask import Flask
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        flask = Flask("bench")

        @flask.get("/ping")
        def fping() -> dict[str, bool]:
            return {"ok": True}

        if variant == "mesh":
            from meshlib.inbound import MeshWSGIMiddleware

            flask.wsgi_app = MeshWSGIMiddleware(flask.wsgi_app, **_mesh_kwargs())  # type: ignore[method-assign]
        make_server("127.0.0.1", port, flask, threaded=True).serve_forever()


def _apps(variant: str) -> tuple[Any, Any]:
    """The FastAPI and Flask apps of `variant`, built in this process."""
    from fastapi import FastAPI
    from flask import Flask

    fastapi = FastAPI()

    @fastapi.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    flask = Flask("bench")

    @flask.get("/ping")
    def fping() -> dict[str, bool]:
        return {"ok": True}

    asgi: Any = fastapi
    wsgi: Any = flask.wsgi_app
    if variant == "mesh":
        from meshlib.inbound import MeshMiddleware, MeshWSGIMiddleware

        asgi = MeshMiddleware(fastapi, **_mesh_kwargs())
        wsgi = MeshWSGIMiddleware(flask.wsgi_app, **_mesh_kwargs())
    return asgi, wsgi


def in_process(calls: int) -> dict[tuple[str, str], float]:
    """Median µs per request calling each app directly (no server, no network), 5 batches."""
    import asyncio

    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/ping", "raw_path": b"/ping", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    environ_base = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/ping", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench", "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "5000", "wsgi.url_scheme": "http", "wsgi.input": None,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "wsgi.version": (1, 0),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    async def asgi_batch(app: Any) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope_base), receive, send)
        return (time.perf_counter() - start) / calls * 1e6

    def wsgi_batch(app: Any) -> float:
        import io

        start = time.perf_counter()
        for _ in range(calls):
            environ = dict(environ_base)
            environ["wsgi.input"] = io.BytesIO()
            body = app(environ, start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return (time.perf_counter() - start) / calls * 1e6

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    from meshlib.inbound import MeshMiddleware

    built = {variant: _apps(variant) for variant in VARIANTS}
    raws = {"bare": raw, "mesh": MeshMiddleware(raw, **_mesh_kwargs())}
    names = (*APPS, "raw asgi")
    results: dict[tuple[str, str], list[float]] = {(a, v): [] for a in names for v in VARIANTS}
    for _ in range(5):
        for variant in VARIANTS:
            asgi, wsgi = built[variant]
            results["fastapi", variant].append(asyncio.run(asgi_batch(asgi)))
            results["flask", variant].append(wsgi_batch(wsgi))
            results["raw asgi", variant].append(asyncio.run(asgi_batch(raws[variant])))
    return {key: statistics.median(values) for key, values in results.items()}


_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process, exited threads included (werkzeug runs one per connection)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _round(client: httpx.Client, url: str, requests: int, time_limit: float) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + time_limit
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(url)
        latencies.append((time.perf_counter() - start) * 1e6)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        if start > stop:
            break
    return latencies


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=10, help="interleaved blocks per round")
    parser.add_argument("--round-time", type=float, default=5.0, help="seconds cap per round")
    parser.add_argument("--calls", type=int, default=2000, help="in-process calls per batch")
    parser.add_argument(
        "--serve", nargs=3, metavar=("APP", "VARIANT", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return 0

    keys = [(a, v) for a in APPS for v in VARIANTS]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-inbound-") as tmp:
        procs = ProcessSet(Path(tmp))
        try:
            started = {}
            for app_name, variant in keys:
                port = free_port()
                argv_ = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve",
                    app_name,
                    variant,
                    str(port),
                ]
                started[app_name, variant] = procs.start(f"{app_name}-{variant}", argv_, port=port)
            p50s: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
            p90s: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
            cpu: dict[tuple[str, str], float] = dict.fromkeys(keys, 0.0)
            count: dict[tuple[str, str], int] = dict.fromkeys(keys, 0)
            clients = {k: httpx.Client(timeout=10) for k in keys}
            urls = {k: f"http://127.0.0.1:{started[k].port}/ping" for k in keys}
            block = max(1, args.requests // args.blocks)
            try:
                for key in keys:
                    _round(clients[key], urls[key], args.warmup, args.round_time)
                for index in range(args.rounds):
                    # Small blocks, alternating variants, so load from elsewhere hits both alike.
                    latencies: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
                    for part in range(args.blocks):
                        order = keys if (index + part) % 2 == 0 else list(reversed(keys))
                        for key in order:
                            before = _process_cpu(started[key].pid)
                            latencies[key] += _round(
                                clients[key], urls[key], block, args.round_time
                            )
                            cpu[key] += _process_cpu(started[key].pid) - before
                    for key in keys:
                        ordered = sorted(latencies[key])
                        count[key] += len(ordered)
                        p50s[key].append(percentile(ordered, 50))
                        p90s[key].append(percentile(ordered, 90))
            finally:
                for client in clients.values():
                    client.close()
        finally:
            procs.stop_all()

    print(
        f"Inbound middleware overhead: {args.rounds} rounds x {args.requests} sequential requests,"
    )
    print("tracing unsampled (ALWAYS_OFF); latencies are medians over rounds, ratios the median")
    print("of per-round mesh / bare ratios (variants interleaved in small blocks, same run).")
    print(f"Load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"on {os.cpu_count()} CPUs: other work on the machine inflates latency and ratios.\n")
    print(
        "| app | variant | p50 µs | p90 µs | server CPU µs/req | p50 ratio | p90 ratio | CPU ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for app_name in APPS:
        base = (app_name, "bare")
        for variant in VARIANTS:
            key = (app_name, variant)
            p50 = statistics.median(p50s[key])
            p90 = statistics.median(p90s[key])
            cpu_us = cpu[key] / max(1, count[key]) * 1e6
            if variant == "bare":
                ratios = "| | | "
            else:
                r50 = statistics.median(m / b for m, b in zip(p50s[key], p50s[base], strict=True))
                r90 = statistics.median(m / b for m, b in zip(p90s[key], p90s[base], strict=True))
                rcpu = cpu_us / (cpu[base] / max(1, count[base]) * 1e6)
                ratios = f"| {r50:.2f} | {r90:.2f} | {rcpu:.2f} "
            print(f"| {app_name} | {variant} | {p50:.0f} | {p90:.0f} | {cpu_us:.0f} {ratios}|")

    costs = in_process(args.calls)
    print(f"\nIn-process cost, no server or network: median of 5 batches of {args.calls} calls")
    print("('raw asgi' is an app that only sends a response: the middleware's own cost).\n")
    print("| app | bare µs/req | mesh µs/req | added µs | ratio |")
    print("|---|---:|---:|---:|---:|")
    for app_name in (*APPS, "raw asgi"):
        bare, mesh = costs[app_name, "bare"], costs[app_name, "mesh"]
        print(f"| {app_name} | {bare:.1f} | {mesh:.1f} | {mesh - bare:.1f} | {mesh / bare:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
