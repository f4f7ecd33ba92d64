"""The demo's child processes: started on free 127.0.0.1 ports, logged to files, stopped by PID.

Every process the demo starts is tracked here and stopped in `close()`:
all are sent SIGTERM first (so even a demo killed right after still stops
them), then each is waited for, and killed if it does not exit in time:

```python
with Processes(workdir) as procs:
    procs.start("orders", [sys.executable, "examples/orders.py", "--port", "8001"], env)
    procs.wait_ready("orders", "http://127.0.0.1:8001/readyz")
```
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["Processes", "StartupError", "child_environment", "free_port"]


class StartupError(RuntimeError):
    """A child process exited or did not become ready in time; the message shows its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment(**settings: str) -> dict[str, str]:
    """This environment without MESH_*, OTEL_* and proxy settings, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MESH_", "OTEL_"))
        and name.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


class Processes:
    """The demo's child processes, by name; each writes to `<workdir>/logs/<name>.log`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pids(self) -> dict[str, int]:
        """The PID of every process started, by name."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start `argv` as `name`, in the work directory, logging to its own file."""
        with (self.logs / f"{name}.log").open("wb") as log:
            self._procs[name] = subprocess.Popen(  # noqa: S603 - argv is built by the demo
                argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, name: str, lines: int = 25) -> str:
        """The last `lines` lines of a process's log."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, name: str, url: str, timeout: float = 30.0) -> None:
        """Poll `url` until it answers 200; raise StartupError if the process dies or times out."""
        proc = self._procs[name]
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise StartupError(
                        f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise StartupError(
            f"{name} was not ready at {url} within {timeout:.0f} s:\n{self.log_tail(name)}"
        )

    def dead(self) -> list[str]:
        """Names of processes that have exited on their own."""
        return [name for name, proc in self._procs.items() if proc.poll() is not None]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every process: SIGTERM to all, wait, SIGKILL whatever is left."""
        running = [proc for proc in self._procs.values() if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
