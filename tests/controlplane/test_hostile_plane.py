"""A hostile control plane: huge body, slow body, older version. The client keeps its last good policy."""

from __future__ import annotations

import ast
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.controlplane.client import ControlPlaneSource
from meshlib.controlplane.telemetry import RateLimitedLog
from meshlib.policy.store import PolicyStore
from tests.controlplane.conftest import wait_until
from tests.controlplane.rawserver import good, raw_server
from tests.controlplane.test_client import DOC_V1, started


def _huge(megabytes: int) -> bytes:
    filler = "x" * (megabytes << 20)
    body = json.dumps({"version": 9, "hash": "sha256:" + "9" * 64, "document": {"pad": filler}})
    head = f'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "9-x"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n'
    return head.encode() + body.encode()


@contextmanager
def slow_server(first: bytes) -> Iterator[tuple[str, list[int]]]:
    """Answers the first request with `first`, every later one with a body trickling a byte per second."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    hits = [0]
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            hits[0] += 1
            if hits[0] == 1:
                conn.sendall(first)
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            while not stop.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                stop.wait(1.0)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", hits
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def test_a_huge_body_is_refused_without_holding_it() -> None:
    """A 50 MB answer is cut off at max_bytes: a failed fetch, the last good policy stays, little RSS."""
    script = f"""
import resource, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from meshlib.controlplane.client import ControlPlaneSource
from meshlib.policy.store import PolicyStore
from tests.controlplane.rawserver import good, raw_server
from tests.controlplane.test_hostile_plane import _huge
from tests.controlplane.test_client import DOC_V1
store = PolicyStore()
with raw_server(good(1, DOC_V1)) as raw:
    source = ControlPlaneSource([raw.url], wait=0.1, max_bytes=1 << 20, backoff_max=0.2)
    source.start(store)
    huge = _huge(50)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    raw.answer = huge
    deadline = time.monotonic() + 20
    while source.failures < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    source.close()
print(source.failures, store.current.revision, grown, source.last_error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    failures, revision, grown_kib, *error = done.stdout.split(maxsplit=3)
    assert int(failures) >= 3
    assert revision == "1"
    assert "byte limit" in error[0]
    assert int(grown_kib) < 20 * 1024, f"RSS grew {int(grown_kib) // 1024} MiB for a 50 MB answer"


def test_a_slow_body_cannot_hold_a_fetch(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server trickling a byte a second fails the fetch within wait + read_timeout, and says so."""
    from meshlib.controlplane import telemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(telemetry.metrics, "get_meter", provider.get_meter)
    caplog.set_level(logging.WARNING, logger="meshlib.controlplane")
    store = PolicyStore()
    with (
        slow_server(good(1, DOC_V1)) as (url, _hits),
        started(
            [url], store, wait=0.5, read_timeout=1.0, connect_timeout=0.5, backoff_max=0.1
        ) as source,
    ):
        started_at = time.monotonic()
        assert wait_until(lambda: source.failures >= 1, timeout=10)
        assert time.monotonic() - started_at < 5  # not the 1,000 s the trickle would take
        assert "no complete answer within" in (source.last_error or "")
        assert store.current.revision == "1"
    data = reader.get_metrics_data()
    failures = [
        point
        for resource_metrics in (data.resource_metrics if data else ())
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
        if metric.name == "meshlib.controlplane.fetch_failures"
        for point in metric.data.data_points
    ]
    provider.shutdown()
    assert any((p.attributes or {}).get("meshlib.outcome") == "timeout" for p in failures)
    assert any("control plane fetch failed" in r.getMessage() for r in caplog.records)


def test_an_older_version_is_never_applied() -> None:
    """A failover to a replica serving an older history moves nothing back: refused and counted."""
    store = PolicyStore()
    newer = DOC_V1 | {"trust_domain": "v27.example.org"}
    older = DOC_V1 | {"trust_domain": "v5.example.org"}
    with (
        raw_server(good(27, newer)) as raw,
        started([raw.url], store, wait=0.1, backoff_max=0.1) as source,
    ):
        assert store.current.revision == "27"
        raw.answer = good(5, older)
        assert wait_until(lambda: source.failures >= 2)
        assert store.current.revision == "27"
        assert store.current.policy.trust_domain == "v27.example.org"
        assert "older than version 27" in (source.last_error or "")
        raw.answer = good(28, older)  # a rollback is a new, higher version: applied
        assert wait_until(lambda: store.current.revision == "28")


def test_warnings_keep_coming_during_a_long_outage_but_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every interval logs one WARNING with the count held back, not only the first failure."""
    from meshlib.clock import FakeClock

    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("meshlib.controlplane"), every=30.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="meshlib.controlplane")
    assert log.warning("down: %s", "a")
    for _ in range(5):
        assert not log.warning("down: %s", "b")
    clock.advance(31)
    assert log.warning("down: %s", "c")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["down: a", "down: c (5 more like this in the last 30s)"]


def test_one_loop_owns_every_control_plane_conversation(tmp_path: Path) -> None:
    """Policy watch, reporter, registry watch and registrar share one 'meshlib-control-plane' thread."""
    from meshlib.discovery.registry import InstanceInfo, Registrar
    from meshlib.discovery.watch import RegistryWatcher
    from tests.discovery.conftest import POLICY, plane_app, serve

    (tmp_path / "policy.yaml").write_text(POLICY)
    before = {t.ident for t in threading.enumerate()}
    with serve(plane_app(tmp_path)) as cp:
        from meshlib.controlplane.reporter import StateReporter

        source = ControlPlaneSource(
            [cp.url], token="r3ad", wait=5, reporter=StateReporter(service="orders", interval=1)
        )
        source.start(PolicyStore())
        watcher = RegistryWatcher("payments", cp.url, lambda eps: None, token="r3ad", wait=5)
        watcher.start()
        registrar = Registrar(
            InstanceInfo("payments", "http://127.0.0.1:9"), cp.url, token="r3g1ster"
        )
        try:
            assert registrar.start(wait=5)
            assert watcher.wait_synced(5)
            new = [t for t in threading.enumerate() if t.ident not in before]
            ours = [t.name for t in new if t.name.startswith("meshlib")]
            assert ours == ["meshlib-control-plane"]
        finally:
            registrar.close()
            watcher.close()
            source.close()
    assert not any(t.name == "meshlib-control-plane" for t in threading.enumerate())


def _imports(module: Path) -> set[str]:
    """Every meshlib module `module` imports at run time, at the top or inside functions."""
    found: set[str] = set()
    tree = ast.parse(module.read_text())
    for block in ast.walk(tree):  # imports for the type checker only are no loop at run time
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meshlib"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("meshlib"))
    return found


def test_no_import_loop_between_the_control_plane_client_and_discovery() -> None:
    """No cycle among controlplane/* and discovery/* imports (lazy ones included), no private reach."""
    src = Path(__file__).resolve().parents[2] / "src"
    modules = {
        ".".join(path.relative_to(src).with_suffix("").parts): path
        for package in ("controlplane", "discovery")
        for path in (src / "meshlib" / package).glob("*.py")
        if path.name != "__init__.py"
    }
    graph = {name: _imports(path) & modules.keys() for name, path in modules.items()}

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    for name in graph:
        assert cycle_from(name, name, (name,)) is None, " -> ".join(
            cycle_from(name, name, (name,)) or ()
        )
    assert "meshlib.discovery.manager" not in graph["meshlib.controlplane.reporter"]
    for path in modules.values():
        assert "._ssl_context" not in path.read_text()
