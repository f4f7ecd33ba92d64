"""The meshlib demo: a control plane and three services on 127.0.0.1, driven through five phases.

`python3 tools/nox.py -s demo` runs `python examples/demo.py`. It:

1. picks free ports and writes the policy (`examples/mesh.yaml` with those
   ports) into a fresh policy directory;
2. starts the control plane (`meshlib controlplane serve`) serving it, and the
   services `frontend` (FastAPI), `orders` (FastAPI) and `payments` (Flask),
   which fetch their policy from the control plane and report to it;
3. sends checkouts to frontend while payments is healthy, flaky, slow, down,
   and healthy again, printing each circuit-breaker change as it happens;
4. prints what happened: calls, retries, budget refusals, breaker openings and
   recoveries, deadlines, and the latency split per edge;
5. stops every process it started (also on Ctrl-C), and removes its files.

Options: `--duration SECONDS` (default 20) bounds the traffic;
`--keep-running` keeps the mesh up afterwards, for the dashboard, until Ctrl-C,
and prints the demo's publish token (type it into the dashboard to publish or roll back);
`--no-control-plane` uses the policy file directly.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml
from demoprocs import Processes, StartupError, child_environment, free_port
from demoreport import Observer, Traffic, summary

import meshlib

__all__ = ["PHASES", "Phase", "main"]

EXAMPLES = Path(__file__).resolve().parent
SERVICES = ("payments", "orders", "frontend")  # started callee first
WORKERS = 6
PACE = 0.2  # seconds between one worker's checkouts: about 30 checkouts a second in all


@dataclass(frozen=True)
class Phase:
    """A stretch of the demo: how payments misbehaves, and what to watch for."""

    name: str
    share: float
    fault: dict[str, float]
    story: str


PHASES = (
    Phase("steady", 0.15, {}, "all healthy: every checkout is paid"),
    Phase(
        "flaky",
        0.20,
        {"error_rate": 0.3},
        "payments fails 3 charges in 10 with 503: orders retries them, within its retry budget",
    ),
    Phase(
        "slow",
        0.15,
        {"delay": 1.5, "delay_rate": 0.3},
        "payments takes 1.5 s on 3 charges in 10: those checkouts hit their 800 ms deadline",
    ),
    Phase(
        "down",
        0.20,
        {"error_rate": 1.0},
        "payments fails every charge: the breaker in orders opens and checkouts fail fast",
    ),
    Phase(
        "recovered",
        0.30,
        {},
        "payments is healthy again: the breaker lets a probe through, and closes",
    ),
)


class _Stop(Exception):
    """SIGTERM arrived: stop like on Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def write_policy(directory: Path, ports: dict[str, int]) -> Path:
    """Write `examples/mesh.yaml` with each service's endpoint on its port; return the file."""
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / "mesh.yaml").read_text())
    for name, port in ports.items():
        document["services"][name]["endpoints"] = [f"http://127.0.0.1:{port}"]
    meshlib.load_policy(document)  # fail here, clearly, rather than in four processes
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _drive(
    base_url: str, traffic: Traffic, phase: list[str], stop: threading.Event, pace: float
) -> None:
    with httpx.Client(base_url=base_url, timeout=5.0, trust_env=False) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = client.post("/checkout", json={"item": "book", "amount_cents": 1200})
                traffic.record(phase[0], status.status_code)
            except httpx.HTTPError:
                traffic.record(phase[0], 0)
            stop.wait(max(0.0, pace - (time.monotonic() - started)))


class Demo:
    """One run: processes, policy, traffic, observer."""

    def __init__(self, workdir: Path, *, control_plane: bool) -> None:
        self.workdir = workdir
        self.control_plane = control_plane
        self.procs = Processes(workdir)
        self.ports = {name: free_port() for name in (*SERVICES, "controlplane")}
        self.traffic = Traffic()
        self.phase = ["starting"]
        self.stop_traffic = threading.Event()
        self.workers: list[threading.Thread] = []
        self.publish_token = secrets.token_urlsafe(12)
        """The control plane's publish token for this run (the dashboard's rollback asks for it)."""

    def url(self, name: str) -> str:
        """Base URL of a process."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        """Write the policy and start the control plane and the services; wait until ready."""
        policy_dir = self.workdir / "policy"
        policy_file = write_policy(policy_dir, {n: self.ports[n] for n in SERVICES})
        common = {"MESH_CACHE_DIR": str(self.workdir / "cache")}
        if self.control_plane:
            self.procs.start(
                "controlplane",
                [sys.executable, "-m", "meshlib", "controlplane", "serve"],
                child_environment(
                    MESH_CONTROLPLANE_POLICY=str(policy_dir),
                    MESH_CONTROLPLANE_HOST="127.0.0.1",
                    MESH_CONTROLPLANE_PORT=str(self.ports["controlplane"]),
                    MESH_CONTROLPLANE_PUBLISH_TOKENS=f"demo={self.publish_token}",
                ),
            )
            self.procs.wait_ready("controlplane", self.url("controlplane") + "/readyz")
            common.update(MESH_CONTROL_PLANE_URL=self.url("controlplane"), MESH_REPORT_INTERVAL="1")
        else:
            common.update(MESH_POLICY_FILE=str(policy_file))
        for name in SERVICES:
            argv = [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(self.ports[name])]
            self.procs.start(name, argv, child_environment(MESH_SERVICE_NAME=name, **common))
        for name in SERVICES:
            self.procs.wait_ready(name, self.url(name) + "/readyz")

    def set_fault(self, fault: dict[str, float]) -> None:
        """Tell payments how to misbehave."""
        httpx.put(self.url("payments") + "/admin/fault", json=fault, timeout=5.0, trust_env=False)

    def start_traffic(self, pace: float) -> None:
        """Start the load driver's worker threads."""
        self.stop_traffic.clear()
        self.workers = [
            threading.Thread(
                target=_drive,
                args=(self.url("frontend"), self.traffic, self.phase, self.stop_traffic, pace),
                daemon=True,
            )
            for _ in range(WORKERS)
        ]
        for worker in self.workers:
            worker.start()

    def end_traffic(self) -> None:
        """Stop the workers and wait for their last calls."""
        self.stop_traffic.set()
        for worker in self.workers:
            worker.join(timeout=10)

    def run_phases(self, duration: float, observer: Observer) -> None:
        """Walk through the phases, each for its share of `duration`."""
        self.start_traffic(PACE)
        for number, phase in enumerate(PHASES, 1):
            self.set_fault(phase.fault)
            self.phase[0] = phase.name
            now = time.monotonic() - observer.started
            print(f"  {now:5.1f}s  phase {number}/{len(PHASES)} '{phase.name}': {phase.story}")
            time.sleep(phase.share * duration)
            dead = self.procs.dead()
            if dead:
                raise StartupError(f"{', '.join(dead)} stopped:\n{self.procs.log_tail(dead[0])}")
        self.end_traffic()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of traffic (at least 5; default 20)"
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="keep the mesh up until Ctrl-C afterwards"
    )
    parser.add_argument(
        "--no-control-plane", action="store_true", help="read the policy file instead"
    )
    args = parser.parse_args(argv)
    if not 5.0 <= args.duration <= 3600.0:
        parser.error("--duration must be between 5 and 3600 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="meshlib-demo-"))
    demo = Demo(workdir, control_plane=not args.no_control_plane)
    observer: Observer | None = None
    status = 0
    try:
        print(f"meshlib demo: starting a mesh on 127.0.0.1 (files in {workdir})")
        demo.start()
        for name, pid in demo.procs.pids.items():
            print(f"  {name:<12} {demo.url(name)}  (pid {pid})")
        if demo.control_plane:
            print(f"  dashboard    {demo.url('controlplane')}/dashboard")
        print(f"\nDriving checkouts for {args.duration:.0f} s:")
        started = time.monotonic()
        observer = Observer({n: demo.url(n) + "/mesh/stats" for n in SERVICES}, started)
        observer.start()
        demo.run_phases(args.duration, observer)
        observer.stop()
        print()
        print(summary(observer, demo.traffic, time.monotonic() - started))
        if demo.control_plane:
            print(f"\nDashboard: {demo.url('controlplane')}/dashboard")
        if args.keep_running:
            print(
                "\nThe mesh keeps running with light traffic; press Ctrl-C to stop it.\n"
                f"  curl -X POST {demo.url('frontend')}/checkout -H 'content-type: application/json' -d '{{}}'\n"
                f"  curl -X PUT {demo.url('payments')}/admin/fault -H 'content-type: application/json' -d '{{\"error_rate\": 0.5}}'"
            )
            if demo.control_plane:
                plane = demo.url("controlplane")
                print(
                    f"\nPublish token: {demo.publish_token}\n"
                    "  type it into the dashboard's token field, then roll back from the history table,\n"
                    "  or publish an edited policy:\n"
                    f"  curl -X PUT {plane}/v1/policy -H 'authorization: Bearer {demo.publish_token}' "
                    f"-H 'content-type: application/yaml' --data-binary @{demo.workdir / 'policy' / 'policy.yaml'}",
                    flush=True,
                )
            demo.start_traffic(1.0)
            while not demo.procs.dead():
                time.sleep(0.5)
            print(f"{', '.join(demo.procs.dead())} stopped; shutting down")
    except (KeyboardInterrupt, _Stop):
        print("\nStopping.")
        status = 0 if args.keep_running else 130
    except StartupError as exc:
        print(f"\nThe demo could not run: {exc}", file=sys.stderr)
        if str(exc).startswith("controlplane"):
            print("(--no-control-plane runs it on the policy file alone)", file=sys.stderr)
        status = 1
    finally:
        demo.end_traffic()
        demo.procs.close()
        if observer is not None:
            observer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("All demo processes stopped.")
    return status


if __name__ == "__main__":
    sys.exit(main())
