"""The latency split against injected truth: a delaying TCP proxy between client and server.

The server's handler sleeps a known time; the proxy holds every chunk a known
time each way. Over retries (503, 503, 200), each attempt's service, network
parts, and the call's sums and waits, must match the truth within 2 ms (and
meshlib's part hold no wire time), with the callee behind MeshMiddleware (Server-Timing) and without it
(service time unknown: the wire time is reported as its own part).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.trace import SpanKind

from meshlib.outbound import transport as transport_module
from meshlib.telemetry import names
from meshlib.telemetry.latency import LATENCY_EXTENSION, LatencySplit
from tests.outbound.conftest import Driver, mesh_policy
from tests.support.otel import LocalTelemetry

HANDLER_S = 0.030
DELAY_S = 0.012
TOLERANCE = 0.002
MESHLIB_BOUND = DELAY_S / 2
"""meshlib's part is the client's own CPU (meshlib and the HTTP stack before the wire), which
coverage and a busy machine inflate and which is a speed, judged by the benchmarks; what the
split must never put there is network or service time, the smallest of which here is a 12 ms
proxy hop, so half of that is the bound."""
_keys = itertools.count()


@dataclass
class Callee:
    """The child process: the flaky app behind the delay proxy."""

    kind: str
    proxy_port: int
    server_port: int

    def take(self) -> tuple[list[float], list[float]]:
        """Per attempt since the last look: its wire time as the proxy saw it, and the handler's time.

        The wire time runs from the request's arrival at the proxy to the delivery of the
        last response chunk before the next request: both injected delays, the server, and
        the hops behind the proxy. What it leaves out is the client's own hop to the proxy.
        """
        seen = httpx.get(f"http://127.0.0.1:{self.server_port}/held").json()
        wires: list[float] = []
        began = 0.0
        for direction, arrived, delivered in seen["held"]:
            if direction == "up":
                began = arrived
                wires.append(0.0)
            elif wires:
                wires[-1] = delivered - began
        return wires, seen["handled"]


@pytest.fixture
def ahead() -> Iterator[None]:
    """This process ahead of other work while it measures, where allowed (root; CI runs as root).

    The machine is shared: a client thread not scheduled when its answer arrives is real wire
    time to meshlib but not to the proxy's clock, and that is the noise, not the split, under test.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


@pytest.fixture(scope="module", params=["middleware", "plain"])
def callee(request: pytest.FixtureRequest) -> Iterator[Callee]:
    """The flaky app (behind MeshMiddleware or not) and the delay proxy, in a child process."""
    args = [sys.executable, "-m", "tests.support.delaymesh", str(DELAY_S), str(HANDLER_S)]
    if request.param == "middleware":
        args.append("middleware")
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        args, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    # Ahead of other work where allowed (root): its clock readings are the truth.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, child.pid, -10)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("PORTS "), line
        _, proxy_port, server_port = line.split()
        yield Callee(request.param, int(proxy_port), int(server_port))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        finally:
            assert child.stdout is not None
            child.stdout.close()


def _client_hop(driver: Driver, client: object, callee: Callee) -> float:
    """Wire time the proxy cannot see: the client's hop to it and httpcore's own reading and
    writing. The median over five single-attempt calls, measured in the same run."""
    callee.take()
    extra = []
    for _ in range(5):
        response = driver.request(
            client,
            "GET",
            f"http://payments/flaky/0/c{next(_keys)}",
            extensions={LATENCY_EXTENSION: True},
        )
        (wire,), _ = callee.take()
        extra.append(response.extensions[LATENCY_EXTENSION].wire - wire)
    return statistics.median(extra)


class SleepLog:
    """Records how long each of the drivers' backoff sleeps really took (the truth of `waits`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.slept: list[float] = []
        real_sleep, real_asleep = time.sleep, anyio.sleep

        def sleep(seconds: float) -> None:
            began = time.monotonic()
            real_sleep(seconds)
            self.slept.append(time.monotonic() - began)

        async def asleep(seconds: float) -> None:
            began = time.monotonic()
            await real_asleep(seconds)
            self.slept.append(time.monotonic() - began)

        monkeypatch.setattr(transport_module.time, "sleep", sleep)
        monkeypatch.setattr(transport_module.anyio, "sleep", asleep)


def _problems(
    split: LatencySplit, attempts: tuple[Any, ...], truth: dict[str, Any], kind: str
) -> dict[str, str | None]:
    """Each part checked, by name: None when within TOLERANCE of the truth, else what was off."""
    problems: dict[str, str | None] = {}

    def check(
        what: str, measured: float | None, expected: float, tolerance: float = TOLERANCE
    ) -> None:
        off = measured is None or abs(measured - expected) > tolerance
        problems[what] = f"measured {measured}, truth {expected:.6f}" if off else None

    wires, handled = truth["wires"], truth["handled"]
    for attempt, wire, service in zip(attempts, wires, handled, strict=True):
        part = attempt.split
        network = wire - service
        name = f"attempt {attempt.number}"
        if kind == "middleware":
            check(f"{name} service", part.service, service)
            check(f"{name} network", part.network, network)
        else:
            check(f"{name} unknown", part.unknown, service + network)
        low, high = -TOLERANCE, MESHLIB_BOUND  # see MESHLIB_BOUND
        check(f"{name} meshlib", part.meshlib, (low + high) / 2, (high - low) / 2)
    check("call waits", split.waits, sum(truth["slept"]))
    network = sum(wires) - sum(handled)
    if kind == "middleware":
        check("call service", split.service, sum(handled))
        check("call network", split.network, network)
    else:
        check("call unknown", split.unknown, sum(handled) + network)
    return problems


@pytest.mark.usefixtures("ahead")
@pytest.mark.parametrize("mode", ["sampled", "asked"])
def test_split_per_attempt_and_per_call_matches_injected_truth(
    driver: Driver, callee: Callee, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503, 503, 200 through a 12 ms-each-way proxy, 30 ms handler: every part within 2 ms of truth.

    Truth per attempt: service = the handler's own time; network = the wire time the proxy
    saw (request in to last response chunk out: both delays, the server), plus the
    client's own hop (measured by single calls in the same run), minus the handler's; waits = the drivers' sleeps as they really ran; meshlib ~ 0 (at most
    `MESHLIB_BOUND`: its own CPU, never a hop of wire time). A busy machine
    can stall any one run by more than 2 ms, so each part must be within it in one of up to
    twelve runs (a bias of more than 2 ms fails every run).
    """
    kind = callee.kind
    sleeps = SleepLog(monkeypatch)
    telemetry = LocalTelemetry() if mode == "sampled" else None
    policy = mesh_policy(
        [f"http://127.0.0.1:{callee.proxy_port}"],
        retry={"attempts": 3, "backoff": {"base": "5ms", "max": "10ms"}},
    )
    client = driver.client(
        policy, service_name="orders", **(telemetry.kwargs() if telemetry else {})
    )
    extensions = {} if telemetry else {LATENCY_EXTENSION: True}
    failing: dict[str, list[str]] = {}
    passed: set[str] = set()
    driver.request(client, "GET", "http://payments/flaky/0/warm")  # the connection, made once
    for _ in range(12):
        hop = _client_hop(driver, client, callee)
        assert -0.01 < hop < 0.01, hop
        sleeps.slept.clear()
        # A collection of what earlier tests left would pause the client mid-attempt: a real
        # pause, and meshlib counts it as wire time, but no part of the truth the proxy sees.
        gc.collect()
        gc.disable()
        try:
            response = driver.request(
                client, "GET", f"http://payments/flaky/2/k{next(_keys)}", extensions=extensions
            )
        finally:
            gc.enable()
        assert response.status_code == 200
        split: LatencySplit = response.extensions[LATENCY_EXTENSION]
        attempts = response.extensions["meshlib.attempts"]
        wires, handled = callee.take()
        assert len(wires) == len(handled) == len(attempts) == len(split.attempts) == 3
        # the shape holds on every run, whatever the machine is doing
        for attempt in attempts:
            part = attempt.split
            assert part is split.attempts[attempt.number - 1]
            assert part.total == pytest.approx(part.wire + part.meshlib, abs=1e-9)
            if kind == "middleware":
                assert part.service is not None
                assert part.network is not None
                assert part.unknown == 0.0
            else:
                assert part.service is None
                assert part.network is None
        if kind == "plain":
            assert split.service is None
            assert split.network is None
        assert (split.service or 0) + (split.network or 0) + split.unknown + split.meshlib + (
            split.waits
        ) == pytest.approx(split.total, abs=1e-9)
        assert sum(a.total for a in split.attempts) + split.waits == pytest.approx(
            split.total, abs=1e-9
        )
        wires = [wire + hop for wire in wires]
        truth = {"wires": wires, "handled": handled, "slept": list(sleeps.slept)}
        problems = _problems(split, attempts, truth, kind)
        if telemetry is not None:
            _check_spans(telemetry, split, kind)
            telemetry.exporter.clear()
        for name, problem in problems.items():
            if problem is None:
                passed.add(name)
            else:
                failing.setdefault(name, []).append(problem)
        if passed >= set(problems):
            break
    if telemetry is not None:
        telemetry.close()
    assert {name: seen for name, seen in failing.items() if name not in passed} == {}


def _check_spans(telemetry: LocalTelemetry, split: LatencySplit, kind: str) -> None:
    """The call span carries the call's split, each CLIENT span its attempt's."""
    spans = telemetry.exporter.get_finished_spans()
    call = [s for s in spans if s.kind is SpanKind.INTERNAL][-1]
    assert call.attributes[names.ATTR_LATENCY_TOTAL] == split.total
    assert call.attributes[names.ATTR_LATENCY_WAITS] == split.waits
    attempts = [
        s for s in spans if s.kind is SpanKind.CLIENT and s.parent.span_id == call.context.span_id
    ]
    assert len(attempts) == 3
    for span, part in zip(attempts, split.attempts, strict=True):
        if kind == "middleware":
            assert span.attributes[names.ATTR_LATENCY_SERVICE] == part.service
            assert span.attributes[names.ATTR_LATENCY_NETWORK] == part.network
            assert names.ATTR_LATENCY_UNKNOWN not in span.attributes
        else:
            assert names.ATTR_LATENCY_SERVICE not in span.attributes
            assert span.attributes[names.ATTR_LATENCY_UNKNOWN] == part.unknown
        assert span.attributes[names.ATTR_LATENCY_MESHLIB] == part.meshlib
