"""Control plane: publish-to-applied latency across replicas, and replica RSS with 1,000 watchers.

`python benchmarks/bench_controlplane.py [--replicas 3] [--clients 300] [--procs 4] [--rounds 20] [--idle 1000]`

The control plane runs as `--replicas` `meshlib controlplane serve`
processes on 127.0.0.1 over one etcd (Debian's `etcd-server`, started here
in a temp dir; `--replicas 1 --embedded` runs one replica on a policy
directory instead, as does a machine without etcd). Two measurements:

1. **Publish reaches watching clients.** `--clients` real `ControlPlaneSource`
   instances (each with its own PolicyStore and long-poll, all of a worker
   process on its one control-plane loop), spread over `--procs` worker
   processes and over the replicas (each client lists every replica, starting
   at a different one), watch. Each round publishes a new version with
   `PUT /v1/policy` through the next replica in turn and records, per client,
   the wall-clock time from just before the PUT to the moment its store
   swapped the new policy in (validation included). Goal: p99 <= 500 ms with
   3 replicas and 300 watchers.
2. **Idle watchers.** `--idle` raw long-polls (`If-None-Match` +
   `?wait=120s`, one TCP connection each, from one asyncio process) park on
   replica 0. Reported: every replica's RSS (goal: < 200 MB each with 1,000
   watchers), the growth per parked watcher, replica 0's CPU while they idle,
   and the time for one publish through replica 1 to reach all of them.

Every loop is bounded by a count and a time limit; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.procs import ProcessSet, cpu_seconds, free_port

TOKEN = "bench-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def policy(round_no: int) -> str:
    """A small but realistic policy whose content changes every round."""
    services = "\n".join(
        f'  svc-{i}:\n    endpoints: ["http://127.0.0.1:{9000 + i}"]\n    retry: {{attempts: {2 + (round_no + i) % 3}}}'
        for i in range(20)
    )
    return f"version: 1\n# round {round_no}\nservices:\n{services}\n"


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- worker


def worker(urls: str, count: int, offset: int) -> None:
    """Run `count` ControlPlaneSources; print "<revision> <wall time>" per apply; stop on stdin EOF."""
    from meshlib.controlplane.client import ControlPlaneSource
    from meshlib.policy.store import PolicyStore

    lock = threading.Lock()

    def on_swap(old: Any, new: Any) -> None:
        now = time.time()
        with lock:
            sys.stdout.write(f"{new.revision} {now}\n")
            sys.stdout.flush()

    class Stamped(ControlPlaneSource):
        # Bench instrumentation: when an answer arrived, before this client validates it.
        def _apply(self, payload: dict[str, Any], source: str) -> bool:
            with lock:
                sys.stdout.write(f"D {payload['version']} {time.time()}\n")
            return super()._apply(payload, source)

    replicas = urls.split(",")
    sources = []
    for i in range(count):
        store = PolicyStore()
        store.subscribe(on_swap)
        first = (offset + i) % len(replicas)
        source = Stamped(replicas[first:] + replicas[:first], wait=30.0)
        source.start(store)
        sources.append(source)
    with lock:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
    sys.stdin.read()
    for source in sources:
        source.close()


# --------------------------------------------------------------------------- part 1


def publish_to_clients(urls: list[str], clients: int, procs: int, rounds: int) -> dict[str, Any]:
    """Publish `rounds` versions (through each replica in turn) to `clients` watching sources."""
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    applied: dict[str, list[float]] = {}
    delivered: dict[str, list[float]] = {}
    cond = threading.Condition()
    ready = 0
    workers = []

    def read(proc: subprocess.Popen[str]) -> None:
        nonlocal ready
        assert proc.stdout is not None
        for line in proc.stdout:
            with cond:
                if line.strip() == "ready":
                    ready += 1
                elif line.startswith("D "):
                    _, revision, stamp = line.split()
                    delivered.setdefault(revision, []).append(float(stamp))
                else:
                    revision, stamp = line.split()
                    applied.setdefault(revision, []).append(float(stamp))
                cond.notify_all()

    try:
        offset = 0
        for n in per:
            argv = [sys.executable, __file__, "--worker", ",".join(urls), str(n), str(offset)]
            offset += n
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            workers.append(proc)
            threading.Thread(target=read, args=(proc,), daemon=True).start()
        with cond:
            if not cond.wait_for(lambda: ready == procs, timeout=120):
                raise RuntimeError("the watching clients did not start")
        time.sleep(1.0)  # let every watcher park its long-poll
        latencies: list[float] = []
        deliveries: list[float] = []
        put_ms: list[float] = []
        missed = 0
        with httpx.Client(headers=HEADERS, timeout=10) as client:
            for r in range(rounds):
                t0 = time.time()
                response = client.put(urls[r % len(urls)] + "/v1/policy", content=policy(r + 1))
                response.raise_for_status()
                put_ms.append((time.time() - t0) * 1000)
                revision = str(response.json()["version"])
                with cond:
                    cond.wait_for(
                        lambda rev=revision: len(applied.get(rev, [])) >= clients, timeout=10
                    )
                    stamps = list(applied.get(revision, []))
                    arrived = list(delivered.get(revision, []))
                missed += clients - len(stamps)
                latencies += [(s - t0) * 1000 for s in stamps]
                deliveries += [(s - t0) * 1000 for s in arrived]
                if os.environ.get("BENCH_VERBOSE"):
                    ms = sorted((s - t0) * 1000 for s in stamps)
                    print(
                        f"round {r}: put {put_ms[-1]:.0f} ms, applied {ms[0]:.0f}..{ms[-1]:.0f} ms",
                        file=sys.stderr,
                    )
                time.sleep(0.3)
    finally:
        for proc in workers:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
    return {
        "replicas": len(urls),
        "clients": clients,
        "worker_processes": procs,
        "rounds": rounds,
        "samples": len(latencies),
        "missed": missed,
        "delivered_p50_ms": round(percentile(deliveries, 0.5), 1),
        "delivered_p99_ms": round(percentile(deliveries, 0.99), 1),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p90_ms": round(percentile(latencies, 0.9), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "publish_request_p50_ms": round(percentile(put_ms, 0.5), 1),
        "publish_request_max_ms": round(max(put_ms), 1),
    }


# --------------------------------------------------------------------------- part 2


async def _idle_watchers(
    port: int, etag: str, count: int, urls: list[str], pids: list[int]
) -> dict[str, Any]:
    url, pid = urls[0], pids[0]
    parked = 0
    got: list[float] = []
    request = (
        f"GET /v1/policy?wait=120s HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {etag}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def watch() -> None:
        nonlocal parked
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            parked += 1
            status = await asyncio.wait_for(reader.readline(), 150)
            got.append(time.time())
            assert b" 200 " in status, status
            await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            await writer.wait_closed()

    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
        rss_before = rss_kib(pid)
        rss_all_before = [rss_kib(p) for p in pids]
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(watch()))
            if len(tasks) % 100 == 0:
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (await client.get("/readyz")).json()["watchers"] >= count:
                break
            await asyncio.sleep(0.2)
        watchers = (await client.get("/readyz")).json()["watchers"]
        await asyncio.sleep(1.0)
        rss_after = rss_kib(pid)
        rss_all = [rss_kib(p) for p in pids]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(5.0)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        t_publish = time.time()
        publisher = urls[1 % len(urls)]  # through another replica when there is one
        (await client.put(publisher + "/v1/policy", content=policy(999))).raise_for_status()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    delivery = [(t - t_publish) * 1000 for t in got]
    return {
        "watchers": count,
        "parked_on_server": watchers,
        "server_rss_before_mib": round(rss_before / 1024, 1),
        "server_rss_with_watchers_mib": round(rss_after / 1024, 1),
        "replicas_rss_before_mib": [round(r / 1024, 1) for r in rss_all_before],
        "replicas_rss_mib": [round(r / 1024, 1) for r in rss_all],
        "published_through": "another replica" if len(urls) > 1 else "the same replica",
        "rss_per_watcher_kib": round((rss_after - rss_before) / count, 1),
        "server_cpu_while_idle_pct": round(idle_cpu * 100, 2),
        "publish_to_all_delivered_p50_ms": round(percentile(delivery, 0.5), 1),
        "publish_to_all_delivered_p99_ms": round(percentile(delivery, 0.99), 1),
        "publish_to_all_delivered_max_ms": round(max(delivery), 1),
    }


def _start_etcd(procs: ProcessSet, workdir: Path) -> str:
    """One etcd member for the replicas (Debian's etcd-server); its store URL."""
    client, peer = free_port(), free_port()
    argv = [
        shutil.which("etcd") or "etcd",
        "--name",
        "bench",
        "--data-dir",
        str(workdir / "etcd"),
        "--listen-client-urls",
        f"http://127.0.0.1:{client}",
        "--advertise-client-urls",
        f"http://127.0.0.1:{client}",
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"bench=http://127.0.0.1:{peer}",
        "--log-level",
        "error",
    ]
    procs.start("etcd", argv, port=client)
    return f"etcd://127.0.0.1:{client}"


def main() -> int:
    """Run both measurements and print (and save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="one replica on a policy directory")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument(
        "--worker", nargs=3, metavar=("URLS", "COUNT", "OFFSET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return 0
    embedded = args.embedded or shutil.which("etcd") is None
    if embedded and args.replicas != 1:
        print(
            "no etcd (apt-get install etcd-server) or --embedded: one replica on files",
            file=sys.stderr,
        )
        args.replicas = 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-cp-") as tmp:
        workdir = Path(tmp)
        (workdir / "mesh").mkdir()
        (workdir / "mesh" / "policy.yaml").write_text(policy(0))
        procs = ProcessSet(workdir)
        os.environ["MESH_CONTROLPLANE_MAX_WAIT"] = "150"
        try:
            if not embedded:
                os.environ["MESH_CONTROLPLANE_STORE"] = _start_etcd(procs, workdir)
            ports = [free_port() for _ in range(args.replicas)]
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            servers = []
            for i, port in enumerate(ports):
                argv = [
                    sys.executable,
                    "-m",
                    "meshlib",
                    "controlplane",
                    "serve",
                    "--policy",
                    str(workdir / "mesh"),
                    "--port",
                    str(port),
                    "--publish-token",
                    TOKEN,
                    "--log-level",
                    "warning",
                ]
                servers.append(procs.start(f"controlplane-{i}", argv, port=port))
            with httpx.Client() as client:
                for url in urls:
                    for _ in range(20):
                        client.get(url + "/v1/policy")
                etag = client.get(urls[0] + "/v1/policy").headers["etag"]
            idle = asyncio.run(
                _idle_watchers(ports[0], etag, args.idle, urls, [s.pid for s in servers])
            )
            fanout = publish_to_clients(urls, args.clients, args.procs, args.rounds)
        finally:
            procs.stop_all()
            os.environ.pop("MESH_CONTROLPLANE_STORE", None)
    results = {
        "store": "embedded (files)" if embedded else "etcd",
        "publish_to_applied": fanout,
        "idle_watchers": idle,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load_before, 2),
        "load_average_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(results, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "controlplane.json").write_text(json.dumps(results, indent=2))
    latency_ok = fanout["p99_ms"] <= 500 and fanout["missed"] == 0
    rss_ok = max(idle["replicas_rss_mib"]) < 200 and idle["parked_on_server"] >= args.idle
    print(
        f"goal p99 <= 500 ms, {args.replicas} replicas, {args.clients} watchers: "
        f"{'met' if latency_ok else 'NOT met'} (applied p50 {fanout['p50_ms']} ms, p99 "
        f"{fanout['p99_ms']} ms; answer delivered p50 {fanout['delivered_p50_ms']} ms, p99 "
        f"{fanout['delivered_p99_ms']} ms; each applying client validates on this machine's cores)"
    )
    print(
        f"goal replica RSS < 200 MB with {args.idle} watchers: {'met' if rss_ok else 'NOT met'} "
        f"(max {max(idle['replicas_rss_mib'])} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
