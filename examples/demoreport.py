"""What the demo tells the user: breaker changes as they happen, and a summary at the end.

The numbers come from the services' own telemetry: each example service
answers `GET /mesh/stats` (see `servicekit.py`). An `Observer`
polls those documents in a thread, prints each circuit-breaker change as it
happens, and `summary` turns the last documents into plain text:

```python
observer = Observer({"frontend": url, "orders": url, "payments": url}, time.monotonic())
observer.start()
...
observer.stop()
print(summary(observer, traffic, elapsed=20.0))
```
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["BreakerChange", "Observer", "Traffic", "summary"]

CALLERS = ("frontend", "orders")


@dataclass(frozen=True)
class BreakerChange:
    """One breaker state change seen by polling: when, on which edge and endpoint, from and to."""

    at: float
    edge: str
    endpoint: str
    before: str
    after: str


@dataclass
class Traffic:
    """What the demo's load driver saw: checkout outcomes by HTTP status, per phase."""

    by_phase: dict[str, dict[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, phase: str, status: int) -> None:
        """Count one checkout that ended with `status` (0: no answer at all)."""
        with self.lock:
            counts = self.by_phase.setdefault(phase, {})
            counts[status] = counts.get(status, 0) + 1

    def totals(self) -> dict[int, int]:
        """Outcomes over all phases."""
        with self.lock:
            total: dict[int, int] = {}
            for counts in self.by_phase.values():
                for status, n in counts.items():
                    total[status] = total.get(status, 0) + n
            return total


class Observer:
    """Polls every service's `/mesh/stats` and notices breaker changes as they happen."""

    def __init__(
        self,
        stats_urls: Mapping[str, str],
        started: float,
        *,
        interval: float = 0.1,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.stats_urls = dict(stats_urls)
        self.started = started
        self.interval = interval
        self.echo = echo
        self.documents: dict[str, dict[str, Any]] = {}
        self.changes: list[BreakerChange] = []
        self._states: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-observer", daemon=True)
        self._client = httpx.Client(timeout=2.0, trust_env=False)

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, take one last reading, and close the HTTP client (idempotent)."""
        if self._client.is_closed:
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Read every stats document once and record breaker changes."""
        for service, url in self.stats_urls.items():
            try:
                response = self._client.get(url)
                document = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            if isinstance(document, dict):
                self.documents[service] = document
                self._notice(service, document)

    def _notice(self, service: str, document: dict[str, Any]) -> None:
        now = time.monotonic() - self.started
        for dest, row in _destinations(document).items():
            for endpoint, state in (row.get("endpoints") or {}).items():
                after = str(state.get("breaker", "closed"))
                key = (f"{service} -> {dest}", endpoint)
                before = self._states.get(key, "closed")
                if after == before:
                    continue
                self._states[key] = after
                change = BreakerChange(now, key[0], endpoint, before, after)
                self.changes.append(change)
                self.echo(f"  {now:5.1f}s  {_describe(change)}")


def _describe(change: BreakerChange) -> str:
    where = f"{change.edge} breaker for {change.endpoint}"
    if change.after == "open":
        return f"{where} OPENED: calls now fail fast instead of waiting on a failing endpoint"
    if change.after == "half-open":
        return f"{where} is half-open: letting one probe call through"
    if change.after == "closed":
        return f"{where} CLOSED again: the endpoint recovered"
    return f"{where}: {change.before} -> {change.after}"


def _destinations(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    mesh = document.get("mesh") or {}
    return dict(mesh.get("destinations") or {})


def _counter(document: Mapping[str, Any], name: str, **match: str) -> int:
    """Sum a meshlib counter from a stats document over the series whose attributes match."""
    series = ((document.get("metrics") or {}).get("counters") or {}).get(name) or {}
    total = 0.0
    for key, value in series.items():
        attrs = dict(part.split("=", 1) for part in key.split(",") if "=" in part)
        if all(attrs.get(k) == v for k, v in match.items()):
            total += value
    return int(total)


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2f} ms" if value < 1.0 else f"{value:.1f} ms"


def _breaker_lines(observer: Observer) -> list[str]:
    lines: list[str] = []
    for caller in CALLERS:
        document = observer.documents.get(caller, {})
        for dest, row in sorted(_destinations(document).items()):
            edge = f"{caller} -> {dest}"
            for endpoint, state in sorted((row.get("endpoints") or {}).items()):
                seen = [c for c in observer.changes if (c.edge, c.endpoint) == (edge, endpoint)]
                counted = {
                    after: _counter(
                        document,
                        "meshlib.client.breaker.transitions",
                        **{"meshlib.endpoint": endpoint, "meshlib.breaker.state": after},
                    )
                    for after in ("open", "closed")
                }
                opened = max(counted["open"], sum(c.after == "open" for c in seen))
                recovered = max(
                    counted["closed"],
                    sum(c.after == "closed" and c.before != "closed" for c in seen),
                )
                if not opened and not recovered:
                    continue
                lines.append(
                    f"  {edge} ({endpoint}): opened {opened}x, recovered {recovered}x, "
                    f"now {state.get('breaker', '?')}"
                )
                first_open = next((c for c in seen if c.after == "open"), None)
                last_close = next((c for c in reversed(seen) if c.after == "closed"), None)
                if first_open is not None:
                    lines.append(f"    first opened at {first_open.at:.1f}s")
                if last_close is not None:
                    lines.append(f"    last recovered (closed again) at {last_close.at:.1f}s")
    if not lines:
        lines.append("  no breaker changed state")
    else:
        lines.append("  (a breaker opens again when its half-open probe fails)")
    return lines


def _edge_rows(observer: Observer) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    rows = []
    for caller in CALLERS:
        document = observer.documents.get(caller, {})
        split = (document.get("metrics") or {}).get("latency_split") or {}
        for dest, row in sorted(_destinations(document).items()):
            if row.get("requests"):
                rows.append((f"{caller} -> {dest}", row, split.get(f"{caller}->{dest}", {})))
    return rows


PHASE_LEGEND = (
    "  502: payments kept failing after orders' retries   503: refused fast, a breaker was open",
    "  504: the 800 ms checkout deadline ran out           other: no answer, or another status",
)

NETWORK_MEANS = (
    "  network = the caller's time on the wire minus the callee's own time: connecting, sending,",
    "  the callee's HTTP server and framework around its app, and reading the answer. On loopback",
    "  it is the two processes' HTTP stacks and event loops, not cables. waits = backoff and",
    "  Retry-After between attempts; unknown = wire time of attempts whose callee reported no",
    "  time of its own (no answer: timed out or reset; or no Server-Timing).",
)


def _app(observer: Observer, service: str, counter: str) -> int:
    app = observer.documents.get(service, {}).get("app") or {}
    return int(app.get(counter, 0))


def _deadline_lines(observer: Observer, timed_out: int) -> list[str]:
    """How the checkouts that timed out (504) split between frontend's and orders' deadlines.

    The 800 ms deadline travels from frontend to orders (`x-mesh-deadline-ms`),
    so both give up on the same checkout at about the same time: whichever
    does first decides who answers the 504, and the other one's give-up
    arrives for nobody.
    """
    own = _app(observer, "frontend", "deadline_exceeded")
    relayed = _app(observer, "frontend", "orders_timed_out")
    orders = _app(observer, "orders", "deadline_exceeded")
    lines = [
        "Deadlines (each checkout has 800 ms; the deadline travels frontend -> orders -> payments):",
        f"  {timed_out} checkouts timed out (the 504 column):",
        f"    {own:5d}  frontend's own deadline on its call to orders ran out first",
        f"    {relayed:5d}  orders gave up on payments first and answered 504",
    ]
    if own + relayed != timed_out:
        lines.append(
            f"    {timed_out - own - relayed:5d}  answered 504 for another reason (not counted by the services)"
        )
    late = max(0, orders - relayed)
    lines.append(
        f"  orders gave up on {orders} calls to payments: {relayed} in time to answer frontend, "
        f"{late} after frontend had already given up (the same checkouts, counted above)"
    )
    return lines


def summary(observer: Observer, traffic: Traffic, elapsed: float) -> str:
    """The plain-text report of a demo run."""
    totals = traffic.totals()
    sent = sum(totals.values())
    outcome = {
        200: "paid",
        502: "failed (payments kept failing after retries)",
        503: "refused fast (a breaker was open)",
        504: "timed out (the 800 ms checkout deadline ran out)",
        0: "got no answer",
    }
    lines = [f"What happened in {elapsed:.0f} s: {sent} checkouts sent to frontend"]
    for status, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:6d}  {outcome.get(status, f'answered {status}')}")
    lines += [
        "",
        f"  {'phase':<12}{'sent':>6}{'paid':>6}{'502':>6}{'503':>6}{'504':>6}{'other':>7}",
    ]
    with traffic.lock:
        phases = {name: dict(counts) for name, counts in traffic.by_phase.items()}
    for name, counts in phases.items():
        known = sum(counts.get(code, 0) for code in (200, 502, 503, 504))
        lines.append(
            f"  {name:<12}{sum(counts.values()):>6}{counts.get(200, 0):>6}{counts.get(502, 0):>6}"
            f"{counts.get(503, 0):>6}{counts.get(504, 0):>6}{sum(counts.values()) - known:>7}"
        )
    lines += PHASE_LEGEND

    lines += [
        "",
        "Calls per edge (meshlib.outbound.stats in each caller; p50/p99 of answered calls):",
    ]
    header = f"  {'edge':<22}{'calls':>7}{'errors':>8}{'retries':>9}{'budget refusals':>17}{'p50':>11}{'p99':>11}"
    lines.append(header)
    rows = _edge_rows(observer)
    for edge, row, _ in rows:
        latency = row.get("latency_ms") or {}
        lines.append(
            f"  {edge:<22}{row.get('requests', 0):>7}{row.get('errors', 0):>8}"
            f"{row.get('retries', 0):>9}{row.get('budget_refusals', 0):>17}"
            f"{_ms(latency.get('p50')):>11}{_ms(latency.get('p99')):>11}"
        )
    retries = sum(int(row.get("retries", 0)) for _, row, _ in rows)
    refusals = sum(int(row.get("budget_refusals", 0)) for _, row, _ in rows)
    lines.append(
        f"  retries: {retries} failed calls were tried again; budget refusals: {refusals} retries "
        "were refused so a failing service is not flooded"
    )

    lines += ["", "Circuit breakers:"]
    lines += _breaker_lines(observer)

    lines += ["", *_deadline_lines(observer, totals.get(504, 0))]

    lines += [
        "",
        "Latency split per edge (mean per call: the callee's own time | network | meshlib | waits):",
        *NETWORK_MEANS,
    ]
    for edge, _, split in rows:
        if split:
            unknown = split.get("unknown_ms") or 0.0
            lines.append(
                f"  {edge:<22} service {_ms(split.get('service_ms'))} | network "
                f"{_ms(split.get('network_ms'))} | meshlib {_ms(split.get('meshlib_ms'))}"
                f" | waits {_ms(split.get('waits_ms'))}"
                + (f" | unknown {_ms(unknown)}" if unknown else "")
                + f"  ({int(split.get('calls', 0))} calls)"
            )
        else:
            lines.append(f"  {edge:<22} (no latency split recorded)")
    return "\n".join(lines)
