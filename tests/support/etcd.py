"""Real etcd for tests: a single node or a 3-node cluster on free 127.0.0.1 ports, stopped by PID.

The binary is Debian's `etcd-server` package (`/usr/bin/etcd`; `.ci/run`
installs it). Tests that need it are marked `etcd` and skipped with the
install command when it is missing:

```python
with EtcdCluster(tmp_path, nodes=3) as cluster:
    cluster.store_url            # "etcd://127.0.0.1:41234,127.0.0.1:41236,127.0.0.1:41238"
    cluster.stop(0); cluster.start(0)
```
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from tests.support.servers import free_port

__all__ = ["ETCD", "EtcdCluster", "need_etcd"]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
INSTALL = "install etcd with `apt-get install etcd-server` (Debian/Ubuntu), or put `etcd` on PATH"


def need_etcd() -> None:
    """Skip the calling test, saying how to get etcd, when the binary is missing."""
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"needs the etcd binary: {INSTALL}")


@dataclass
class _Node:
    name: str
    client: int
    peer: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client}"


class EtcdCluster:
    """`nodes` etcd members on 127.0.0.1, tuned for quick elections; every process stopped by PID."""

    def __init__(self, directory: Path, nodes: int = 1) -> None:
        need_etcd()
        directory.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            _Node(
                f"n{i}",
                free_port(),
                free_port(),
                directory / f"n{i}.etcd",
                directory / f"n{i}.log",
            )
            for i in range(nodes)
        ]
        self._initial = ",".join(f"{n.name}=http://127.0.0.1:{n.peer}" for n in self.nodes)

    @property
    def store_url(self) -> str:
        """`MESH_CONTROLPLANE_STORE` for every member."""
        return "etcd://" + ",".join(f"127.0.0.1:{n.client}" for n in self.nodes)

    def url(self, index: int) -> str:
        """One member's client URL."""
        return self.nodes[index].url

    def start(self, index: int) -> None:
        """Start member `index` (again, keeping its data)."""
        node = self.nodes[index]
        state = "existing" if node.data.exists() else "new"
        cmd = [
            ETCD,
            "--name",
            node.name,
            "--data-dir",
            str(node.data),
            "--listen-client-urls",
            node.url,
            "--advertise-client-urls",
            node.url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{node.peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{node.peer}",
            "--initial-cluster",
            self._initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"meshlib-test-{self.nodes[0].peer}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
        ]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, index: int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop member `index` by its PID."""
        node = self.nodes[index]
        proc, node.proc = node.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def wait_healthy(self, timeout: float = 30.0, indexes: list[int] | None = None) -> None:
        """Wait until the members answer a linearizable read (a leader exists)."""
        deadline = time.monotonic() + timeout
        for index in indexes if indexes is not None else range(len(self.nodes)):
            while True:
                try:
                    answer = httpx.post(
                        self.url(index) + "/v3/kv/range", json={"key": "AA=="}, timeout=2
                    )
                    if answer.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    log = self.nodes[index].log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member {index} did not become healthy:\n{log}")
                time.sleep(0.05)

    def __enter__(self) -> EtcdCluster:
        try:
            for index in range(len(self.nodes)):
                self.start(index)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every member."""
        for index in range(len(self.nodes)):
            self.stop(index)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
