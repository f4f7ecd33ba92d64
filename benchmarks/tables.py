"""The paths under test, the routes they take to an upstream, and the interleaved rounds of a table.

A *table* is one mode (sequential sync, or N-in-flight async) against one
upstream (nginx `return 200`, or uvicorn). Its paths run in interleaved
rounds, `A B C D, A B C D, ...`, so drift on a shared machine hits all of them
alike, and every ratio is taken against the table's own bare-httpx path:

```python
topo = Topology(procs, tools, "nginx-200", pki)
result = run_sync_table(SYNC_PATHS, topo, settings, telemetry, deadline, None)
```
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.certs import Pki
from benchmarks.clients import AsyncOpened, Opened, Target, open_async, open_sync
from benchmarks.measure import STOP, RoundResult, async_round, rate_round, sync_round
from benchmarks.procs import ProcessSet, Started, cpu_seconds
from benchmarks.servers import (
    Pair,
    SystemTools,
    start_haproxy_pair,
    start_nginx_pair,
    start_nginx_upstream,
    start_uvicorn_upstream,
)
from benchmarks.stats import PathTotals, own_cpu, ratios, targets, throughput_targets
from benchmarks.telemetry import Telemetry

__all__ = [
    "ASYNC_PATHS",
    "RATE_PATHS",
    "SYNC_PATHS",
    "UPSTREAM_NEEDS",
    "PathSpec",
    "Settings",
    "Topology",
    "run_async_table",
    "run_sync_table",
]


@dataclass(frozen=True)
class PathSpec:
    """One path: which client, which route to the upstream, and whether traces are sampled."""

    name: str
    client: str
    route: str
    sampled: bool = False


SYNC_PATHS = (
    PathSpec("httpx", "httpx", "direct"),
    PathSpec("httpx+nginx-pair", "httpx", "nginx-pair"),
    PathSpec("httpx+haproxy-pair", "httpx", "haproxy-pair"),
    PathSpec("naive", "naive", "direct"),
    PathSpec("naive-sampled", "naive", "direct", sampled=True),
    PathSpec("mesh", "mesh", "direct"),
    PathSpec("mesh-sampled", "mesh", "direct", sampled=True),
    PathSpec("mesh-stock-cookies", "mesh-stock-cookies", "direct"),
    PathSpec("mesh+middleware", "mesh", "mesh-server"),
    PathSpec("httpx-mtls", "httpx", "mtls-direct"),
    PathSpec("httpx+nginx-pair-mtls", "httpx", "nginx-pair-mtls"),
    PathSpec("mesh-mtls", "mesh", "mtls-direct"),
)
ASYNC_PATHS = (
    PathSpec("httpx-async", "httpx", "direct"),
    PathSpec("aiohttp", "aiohttp", "direct"),
    PathSpec("httpx-async[httpx-aiohttp]", "httpx-aiohttp", "direct"),
    PathSpec("httpx-async[aiohttp]", "httpx-aiotr", "direct"),
    PathSpec("mesh-async", "mesh", "direct"),
    PathSpec("mesh-async-sampled", "mesh", "direct", sampled=True),
    PathSpec("mesh-async-nosdk", "mesh-nosdk", "direct"),
    PathSpec("mesh-async-traces-only", "mesh-traces", "direct"),
    PathSpec("mesh-async-metrics-only", "mesh-metrics", "direct"),
    PathSpec("mesh-async[httpcore]", "mesh-httpcore", "direct"),
    PathSpec("httpx-async+nginx-pair", "httpx", "nginx-pair"),
    PathSpec("httpx-async[aiohttp]+nginx-pair", "httpx-aiotr", "nginx-pair"),
    PathSpec("httpx-async[aiohttp]-mtls", "httpx-aiotr", "mtls-direct"),
    PathSpec("httpx-async[aiohttp]+nginx-pair-mtls", "httpx-aiotr", "nginx-pair-mtls"),
    PathSpec("mesh-async-mtls", "mesh", "mtls-direct"),
)
"""The 32-in-flight table: throughput and CPU per request (`mesh-async` is aiohttp's pool)."""
RATE_PATHS = (
    PathSpec("httpx-async", "httpx", "direct"),
    PathSpec("httpx-async+nginx-pair", "httpx", "nginx-pair"),
    PathSpec("httpx-async[aiohttp]", "httpx-aiotr", "direct"),
    PathSpec("httpx-async[aiohttp]+nginx-pair", "httpx-aiotr", "nginx-pair"),
    PathSpec("httpx-async[aiohttp]+haproxy-pair", "httpx-aiotr", "haproxy-pair"),
    PathSpec("mesh-async", "mesh", "direct"),
    PathSpec("mesh-async+middleware", "mesh", "mesh-server"),
    PathSpec("mesh-async[httpcore]", "mesh-httpcore", "direct"),
)
"""The fixed-rate (open-loop) async table: latency below saturation, against the pairs."""
_ROUTE_NEEDS = {
    "direct": (),
    "nginx-pair": ("nginx",),
    "haproxy-pair": ("haproxy",),
    "mtls-direct": ("nginx",),
    "nginx-pair-mtls": ("nginx",),
    "mesh-server": (),
}
UPSTREAM_NEEDS = {"nginx-200": ("nginx",), "uvicorn": ()}


@dataclass(frozen=True)
class Settings:
    """How much load: rounds, requests per path per round, concurrency, time bounds."""

    rounds: int
    requests: int
    async_requests: int
    concurrency: int
    warmup: int
    round_time: float
    rate: float = 400.0
    rate_requests: int = 200


class Topology:
    """One upstream and the routes to it; upstream and sidecar pairs start on first use."""

    def __init__(
        self, procs: ProcessSet, tools: SystemTools, upstream: str, pki: Pki, *, no_system: bool
    ) -> None:
        self.procs, self.tools, self.upstream, self.pki = procs, tools, upstream, pki
        self.no_system = no_system
        self._upstream: Started | None = None
        self._mesh_upstream: Started | None = None
        self._pairs: dict[str, Pair] = {}

    def missing(self, route: str) -> str | None:
        """Why `route` cannot run here, or None."""
        if route == "mesh-server" and self.upstream != "uvicorn":
            return "the server half of the mesh runs in a Python upstream (uvicorn only)"
        needs = UPSTREAM_NEEDS[self.upstream] + _ROUTE_NEEDS[route]
        if self.no_system and needs:
            return f"needs {', '.join(needs)} (--no-system)"
        absent = [n for n in needs if getattr(self.tools, n) is None]
        if absent:
            return f"{', '.join(absent)} not installed (e.g. `apt-get install -y nginx haproxy`)"
        return None

    def _up(self) -> Started:
        if self._upstream is None:
            if self.upstream == "nginx-200":
                self._upstream = start_nginx_upstream(self.procs, self.tools)
            else:
                self._upstream = start_uvicorn_upstream(self.procs)
        return self._upstream

    def _pair(self, kind: str) -> Pair:
        if kind not in self._pairs:
            up = self._up().port
            label = f"{self.upstream}-{kind}"
            if kind == "haproxy-pair":
                self._pairs[kind] = start_haproxy_pair(self.procs, self.tools, up, label=label)
            else:
                pki = self.pki if kind == "nginx-pair-mtls" else None
                self._pairs[kind] = start_nginx_pair(
                    self.procs, self.tools, up, label=label, pki=pki
                )
        return self._pairs[kind]

    def route(self, route: str) -> tuple[Target, tuple[int, ...], int]:
        """The target for `route`, the PIDs of the sidecars on it, and the upstream's PID."""
        if route == "mesh-server":
            if self._mesh_upstream is None:
                self._mesh_upstream = start_uvicorn_upstream(self.procs, mesh=True)
            up = self._mesh_upstream
            return Target(url=f"http://127.0.0.1:{up.port}/"), (), up.pid
        upstream = self._up()
        if route == "direct":
            return Target(url=f"http://127.0.0.1:{upstream.port}/"), (), upstream.pid
        if route == "mtls-direct":
            ingress = self._pair("nginx-pair-mtls").ingress
            url = f"https://127.0.0.1:{ingress.port}/"
            target = Target(url=url, mesh_service="secure", pki=self.pki)
            return target, (ingress.pid,), upstream.pid
        pair = self._pair(route)
        return Target(url=f"http://127.0.0.1:{pair.egress.port}/"), pair.pids, upstream.pid


def _sidecar_cpu(pids: tuple[int, ...]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


@dataclass
class _Live:
    spec: PathSpec
    pids: tuple[int, ...]
    upstream_pid: int
    opened: Opened | AsyncOpened
    totals: PathTotals

    def cpu_marks(self) -> tuple[float, float]:
        """CPU seconds so far of this path's sidecars and of its upstream."""
        return _sidecar_cpu(self.pids), cpu_seconds(self.upstream_pid)

    def add(self, result: RoundResult, before: tuple[float, float]) -> None:
        """Fold a round in, with the sidecar and upstream CPU it took."""
        after = self.cpu_marks()
        self.totals.add(
            result, sidecar_cpu_s=after[0] - before[0], upstream_cpu_s=after[1] - before[1]
        )


def _finish(
    mode: str,
    upstream: str,
    cfg: Settings,
    live: list[_Live],
    skipped: dict[str, str],
    rounds_done: int,
    truncated: bool,
) -> dict[str, Any]:
    base = "httpx" if mode == "seq" else "httpx-async"
    rows = {item.spec.name: item.totals.summary() for item in live}
    load = {
        "seq": "sequential (1 in flight)",
        "async": f"async ({cfg.concurrency} in flight)",
        "rate": f"async at {cfg.rate:g} req/s, Poisson arrivals (at most {cfg.concurrency} in flight)",
    }[mode]
    return {
        "title": f"{load} against {upstream}",
        "mode": mode,
        "upstream": upstream,
        "base": base,
        "rounds_done": rounds_done,
        "truncated": truncated,
        "paths": rows,
        "ratios": ratios(rows, base),
        "targets": _targets(mode, rows),
        "skipped": skipped,
        "sampled_paths": [item.spec.name for item in live if item.spec.sampled],
        "latencies_us": {item.spec.name: item.totals.latencies_us for item in live},
    }


def _targets(mode: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets judged in one table, and the figures shown beside them for information.

    Sequential: `mesh` against bare httpx and the nginx pair. 32 in flight:
    `mesh-async`'s throughput and CPU against aiohttp and httpx over
    httpx-aiohttp, and meshlib's own CPU above the transport it drives. Fixed
    rate (latency below saturation): `mesh-async` against httpx over the
    same transport, bare and through the pair; against `httpx.AsyncClient`'s
    default pool for information.
    """
    if mode == "seq":
        return (
            targets(rows, mesh="mesh", httpx="httpx")
            + targets(rows, mesh="mesh-stock-cookies", httpx="httpx", info=True)
            + targets(rows, mesh="mesh+middleware", httpx="httpx", info=True)
        )
    if mode == "async":
        return (
            throughput_targets(rows, mesh="mesh-async", transport="httpx-async[aiohttp]")
            + [
                check
                for other in (
                    "mesh-async-nosdk",
                    "mesh-async-traces-only",
                    "mesh-async-metrics-only",
                )
                for check in own_cpu(rows, mesh=other, transport="httpx-async[aiohttp]", info=True)
            ]
            + targets(rows, mesh="mesh-async", httpx="httpx-async[aiohttp]", info=True)
        )
    return (
        targets(rows, mesh="mesh-async", httpx="httpx-async[aiohttp]")
        + targets(rows, mesh="mesh-async", httpx="httpx-async", info=True)
        + targets(rows, mesh="mesh-async+middleware", httpx="httpx-async[aiohttp]", info=True)
    )


_Runnable = tuple[PathSpec, Target, tuple[int, ...], int]
"""A path, its target, its sidecars' PIDs and its upstream's PID."""


def _plan(
    paths: tuple[PathSpec, ...], topo: Topology, mesh_reason: str | None
) -> tuple[list[_Runnable], dict[str, str]]:
    runnable: list[_Runnable] = []
    skipped: dict[str, str] = {}
    for spec in paths:
        reason = topo.missing(spec.route)
        if reason is None and spec.client.startswith("mesh") and mesh_reason:
            reason = mesh_reason
        if reason:
            skipped[spec.name] = reason
            continue
        runnable.append((spec, *topo.route(spec.route)))
    return runnable, skipped


def _warm_ok(spec: PathSpec, warm: RoundResult, skipped: dict[str, str]) -> bool:
    if warm.requests and warm.errors == warm.requests:
        skipped[spec.name] = f"every warm-up request failed: {warm.first_error or 'non-200 status'}"
        return False
    return True


def run_sync_table(
    paths: tuple[PathSpec, ...],
    topo: Topology,
    cfg: Settings,
    tel: Telemetry,
    deadline: float,
    mesh_reason: str | None,
) -> dict[str, Any]:
    """Sequential rounds, one request in flight, interleaved across `paths`."""
    runnable, skipped = _plan(paths, topo, mesh_reason)
    live: list[_Live] = []
    opened: list[Opened] = []
    rounds_done, truncated = 0, False
    try:
        for spec, target, pids, upstream_pid in runnable:
            try:
                client = open_sync(spec.client, target)
            except Exception as exc:
                skipped[spec.name] = f"could not open the client: {type(exc).__name__}: {exc}"
                continue
            opened.append(client)
            with tel.sampling(spec.sampled):
                warm = sync_round(client.call, requests=cfg.warmup, time_limit=cfg.round_time)
            if _warm_ok(spec, warm, skipped):
                live.append(_Live(spec, pids, upstream_pid, client, PathTotals(spec.name)))
        for _ in range(cfg.rounds):
            if time.monotonic() > deadline or STOP.is_set():
                truncated = True
                break
            for item in live:
                assert isinstance(item.opened, Opened)
                gc.collect()
                before = item.cpu_marks()
                with tel.sampling(item.spec.sampled):
                    result = sync_round(
                        item.opened.call, requests=cfg.requests, time_limit=cfg.round_time
                    )
                item.add(result, before)
            rounds_done += 1
    finally:
        for client in opened:
            client.close()
    return _finish("seq", topo.upstream, cfg, live, skipped, rounds_done, truncated)


_Load = Callable[[Callable[[], Awaitable[int]], int], Awaitable[RoundResult]]
"""One async round: `load(call, requests)`."""


async def _async_table(
    runnable: list[_Runnable],
    skipped: dict[str, str],
    cfg: Settings,
    tel: Telemetry,
    deadline: float,
    load: _Load,
    requests: int,
) -> tuple[list[_Live], int, bool]:
    live: list[_Live] = []
    opened: list[AsyncOpened] = []
    rounds_done, truncated = 0, False
    try:
        for spec, target, pids, upstream_pid in runnable:
            try:
                client = await open_async(spec.client, target)
            except Exception as exc:
                skipped[spec.name] = f"could not open the client: {type(exc).__name__}: {exc}"
                continue
            opened.append(client)
            with tel.sampling(spec.sampled):
                warm = await load(client.call, cfg.warmup)
            if _warm_ok(spec, warm, skipped):
                live.append(_Live(spec, pids, upstream_pid, client, PathTotals(spec.name)))
        for _ in range(cfg.rounds):
            if time.monotonic() > deadline or STOP.is_set():
                truncated = True
                break
            for item in live:
                assert isinstance(item.opened, AsyncOpened)
                gc.collect()
                before = item.cpu_marks()
                with tel.sampling(item.spec.sampled):
                    result = await load(item.opened.call, requests)
                item.add(result, before)
            rounds_done += 1
    finally:
        for client in opened:
            await client.close()
    return live, rounds_done, truncated


def run_async_table(
    paths: tuple[PathSpec, ...],
    topo: Topology,
    cfg: Settings,
    tel: Telemetry,
    deadline: float,
    mesh_reason: str | None,
    *,
    fixed_rate: bool = False,
) -> dict[str, Any]:
    """Async rounds interleaved across `paths`: `cfg.concurrency` requests in flight
    (closed loop), or with `fixed_rate` arrivals at `cfg.rate` per second (open loop)."""

    def load(call: Callable[[], Awaitable[int]], requests: int) -> Awaitable[RoundResult]:
        if fixed_rate:
            return rate_round(
                call,
                requests=requests,
                rate=cfg.rate,
                concurrency=cfg.concurrency,
                time_limit=cfg.round_time,
            )
        return async_round(
            call, requests=requests, concurrency=cfg.concurrency, time_limit=cfg.round_time
        )

    runnable, skipped = _plan(paths, topo, mesh_reason)
    requests = cfg.rate_requests if fixed_rate else cfg.async_requests
    live, rounds_done, truncated = asyncio.run(
        _async_table(runnable, skipped, cfg, tel, deadline, load, requests)
    )
    mode = "rate" if fixed_rate else "async"
    return _finish(mode, topo.upstream, cfg, live, skipped, rounds_done, truncated)
