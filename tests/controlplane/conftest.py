"""Control-plane fixtures: a policy directory, the server in a thread or a subprocess, raw servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.controlplane.app import create_app
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.server import ControlPlaneServer, server_config
from meshlib.policy.store import PolicySnapshot, PolicyStore
from tests.support.etcd import EtcdCluster
from tests.support.servers import RunningServer, free_port

PUBLISH = "alice=pub-s3cret"
PUBLISH_HEADERS = {"Authorization": "Bearer pub-s3cret"}

POLICY_V1 = """\
version: 1
services:
  payments:
    endpoints: ["http://127.0.0.1:8001"]
    retry: {attempts: 2}
"""

POLICY_V2 = POLICY_V1.replace("attempts: 2", "attempts: 3")

BAD_POLICY = """\
version: 1
services:
  payments:
    retry: {attempts: 0}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A policy directory holding POLICY_V1 as policy.yaml."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY_V1)
    return directory


@contextmanager
def serve_plane(
    policy: Path, *, port: int | None = None, **settings: Any
) -> Iterator[RunningServer]:
    """A replica (app + ControlPlaneServer) in a thread on 127.0.0.1, lifespan on."""
    settings.setdefault("publish_tokens", (PUBLISH,))
    settings.setdefault("poll_interval", 0.1)
    settings.setdefault("shutdown_grace", 1.0)
    config = ControlPlaneSettings(policy=policy, port=port or free_port(), **settings)
    app = create_app(config)
    port = config.port
    server = ControlPlaneServer(server_config(app, config, log_level="warning"), app.state.plane)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the control plane did not start")
        time.sleep(0.01)
    try:
        yield RunningServer("127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def plane_process(
    policy: Path, port: int, **env_settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`meshlib controlplane serve` in a subprocess; killed (SIGKILL) at the end if still alive.

    `env_settings` become `MESH_CONTROLPLANE_<NAME>` variables (`store="etcd://..."`).
    """
    env = {**os.environ, "MESH_CONTROLPLANE_POLL_INTERVAL": "0.1"}
    env.update({f"MESH_CONTROLPLANE_{k.upper()}": v for k, v in env_settings.items()})
    cmd = [
        sys.executable,
        "-m",
        "meshlib",
        "controlplane",
        "serve",
        "--policy",
        str(policy),
        "--port",
        str(port),
        "--publish-token",
        PUBLISH,
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0
) -> None:
    """Poll /readyz until the control plane answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"the control plane exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the control plane at {url} did not become ready")


class Applied:
    """Records each snapshot a store swaps in, with an event per revision."""

    def __init__(self, store: PolicyStore) -> None:
        self.revisions: list[str] = []
        self._cond = threading.Condition()
        store.subscribe(self._on_swap)

    def _on_swap(self, old: PolicySnapshot | None, new: PolicySnapshot) -> None:
        with self._cond:
            self.revisions.append(new.revision)
            self._cond.notify_all()

    def wait_for(self, revision: str, timeout: float) -> bool:
        """Whether `revision` was applied within `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: revision in self.revisions, timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` every 20 ms until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="session")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the session; each test isolates itself with its own key prefix."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd-node"), nodes=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_settings(etcd_node: EtcdCluster) -> dict[str, Any]:
    """Replica settings on the shared etcd member, under a key prefix of this test's own."""
    return {"store": etcd_node.store_url, "etcd_prefix": f"/test-{uuid.uuid4().hex[:12]}/"}
