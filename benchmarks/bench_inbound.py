"""Inbound overhead: a trivial FastAPI and Flask app with and without the mesh middleware.

``python benchmarks/bench_inbound.py [--rounds 7] [--requests 400]``

Four servers run as separate processes on 127.0.0.1 (uvicorn for FastAPI,
werkzeug's threaded server for Flask), each app bare and wrapped
(``MeshMiddleware`` / ``MeshWSGIMiddleware`` with an SDK tracer provider whose
sampler is ALWAYS_OFF, an SDK meter provider, and an inbound policy with a
rate limit and a concurrency limit that are never reached). One keep-alive
client sends sequential ``GET /ping`` requests; rounds alternate between the
variants so machine noise hits them alike. Reported per variant: median
p50/p90 latency over rounds, the server's CPU time per request, and the
wrapped/bare ratios of the same run. The target is ratio p50 <= 1.15.
Every load loop is bounded by a request count and a time limit; every
process is stopped by PID.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.procs import ProcessSet, cpu_seconds, free_port
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
    parser.add_argument("--round-time", type=float, default=5.0, help="seconds cap per round")
    parser.add_argument(
        "--serve", nargs=3, metavar=("APP", "VARIANT", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return 0

    keys = [(a, v) for a in APPS for v in VARIANTS]
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
            try:
                for key in keys:
                    url = f"http://127.0.0.1:{started[key].port}/ping"
                    _round(clients[key], url, args.warmup, args.round_time)
                for index in range(args.rounds):
                    order = keys if index % 2 == 0 else list(reversed(keys))
                    for key in order:
                        url = f"http://127.0.0.1:{started[key].port}/ping"
                        before = cpu_seconds(started[key].pid)
                        latencies = sorted(
                            _round(clients[key], url, args.requests, args.round_time)
                        )
                        cpu[key] += cpu_seconds(started[key].pid) - before
                        count[key] += len(latencies)
                        p50s[key].append(percentile(latencies, 50))
                        p90s[key].append(percentile(latencies, 90))
            finally:
                for client in clients.values():
                    client.close()
        finally:
            procs.stop_all()

    print(
        f"Inbound middleware overhead: {args.rounds} rounds x {args.requests} sequential requests,"
    )
    print("tracing unsampled (ALWAYS_OFF), medians over rounds; ratio = mesh / bare, same run.\n")
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
                r50 = p50 / statistics.median(p50s[base])
                r90 = p90 / statistics.median(p90s[base])
                rcpu = cpu_us / (cpu[base] / max(1, count[base]) * 1e6)
                ratios = f"| {r50:.2f} | {r90:.2f} | {rcpu:.2f} "
            print(f"| {app_name} | {variant} | {p50:.0f} | {p90:.0f} | {cpu_us:.0f} {ratios}|")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
