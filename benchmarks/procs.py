"""Processes the bench starts: started by command, stopped by PID, always.

Every process goes into one `ProcessSet`; `stop_all()` runs from a
`finally` and from `atexit`, so an exception or Ctrl-C leaves nothing behind:

```python
procs = ProcessSet()
try:
    proc = procs.start("nginx-up", ["nginx", "-c", conf], port=8080)
    cpu = cpu_seconds(proc.pid)
finally:
    procs.stop_all()
```

CPU time of a process tree is read from `/proc/<pid>/task/*/schedstat`
(nanoseconds) and falls back to `/proc/<pid>/stat` (clock ticks).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcessSet", "Started", "cpu_seconds", "free_port", "wait_port"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:`port` accepts connections; fail if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the bench is killed outright, so nothing is orphaned.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            kids.extend(int(k) for k in text.split())
    except OSError:
        pass
    return kids


def _own_cpu(pid: int) -> float:
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        if total:
            return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by `pid` and its descendants (nginx master + workers)."""
    total = _own_cpu(pid)
    for kid in _children(pid):
        total += cpu_seconds(kid)
    return total


@dataclass
class Started:
    """A process the bench started, and the port it serves on."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid


@dataclass
class ProcessSet:
    """Every process started for one run; `stop_all()` stops each by PID."""

    workdir: Path
    started: list[Started] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.stop_all)

    def start(self, name: str, argv: list[str], *, port: int, cwd: Path | None = None) -> Started:
        """Start `argv`, wait until it listens on `port`, and remember it for stopping."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Started(name, popen, port, log)
        self.started.append(proc)
        try:
            wait_port(port, popen, name)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; its log ({log}):\n{tail}") from None
        return proc

    def stop_all(self) -> None:
        """Stop every started process by PID: SIGTERM, then SIGKILL after 5 s."""
        while self.started:
            proc = self.started.pop()
            if proc.popen.poll() is not None:
                continue
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
