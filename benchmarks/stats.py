"""Summaries of the rounds of one path, ratios within a table, and the targets the mesh must meet.

```python
totals = PathTotals("httpx")
totals.add(round_result, sidecar_cpu_s=0.0, upstream_cpu_s=0.004)
row = totals.summary()        # p50/p90/p99 µs, req/s, CPU µs per request
ratios(rows, base="httpx")    # each path ÷ the base, same run
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measure import RoundResult

__all__ = [
    "TARGETS",
    "PathTotals",
    "own_cpu",
    "percentile",
    "ratios",
    "targets",
    "throughput_targets",
]


def percentile(ordered: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) of already sorted values, linearly interpolated."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class PathTotals:
    """Everything measured for one path across its rounds."""

    name: str
    latencies_us: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    sidecar_cpu_s: float = 0.0
    upstream_cpu_s: float = 0.0
    errors: int = 0
    first_error: str | None = None
    round_p50s: list[float] = field(default_factory=list)
    round_cpu_us: list[float] = field(default_factory=list)

    def add(self, result: RoundResult, *, sidecar_cpu_s: float, upstream_cpu_s: float) -> None:
        """Fold one round in, with the CPU its sidecars and its upstream process used."""
        self.latencies_us.extend(result.latencies_us)
        self.wall_s += result.wall_s
        self.cpu_s += result.cpu_s
        self.sidecar_cpu_s += sidecar_cpu_s
        self.upstream_cpu_s += upstream_cpu_s
        self.errors += result.errors
        self.first_error = self.first_error or result.first_error
        if result.latencies_us:
            self.round_p50s.append(percentile(sorted(result.latencies_us), 50))
            self.round_cpu_us.append(1e6 * result.cpu_s / len(result.latencies_us))

    def summary(self) -> dict[str, Any]:
        """Latency percentiles (µs), throughput (req/s), CPU per request (µs), errors."""
        ordered = sorted(self.latencies_us)
        n = len(ordered)
        per_req = 1e6 / n if n else math.nan
        return {
            "requests": n,
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_us": percentile(ordered, 50),
            "p90_us": percentile(ordered, 90),
            "p99_us": percentile(ordered, 99),
            "mean_us": sum(ordered) / n if n else math.nan,
            "round_p50_min_us": min(self.round_p50s, default=math.nan),
            "round_p50_max_us": max(self.round_p50s, default=math.nan),
            "round_p50s_us": list(self.round_p50s),
            "round_cpu_us": list(self.round_cpu_us),
            "throughput_rps": n / self.wall_s if self.wall_s else math.nan,
            "client_cpu_us_per_req": self.cpu_s * per_req,
            "sidecar_cpu_us_per_req": self.sidecar_cpu_s * per_req,
            "upstream_cpu_us_per_req": self.upstream_cpu_s * per_req,
            "total_cpu_us_per_req": (self.cpu_s + self.sidecar_cpu_s) * per_req,
        }


_RATIO_KEYS = {
    "p50": "p50_us",
    "p90": "p90_us",
    "p99": "p99_us",
    "throughput": "throughput_rps",
    "client_cpu": "client_cpu_us_per_req",
    "total_cpu": "total_cpu_us_per_req",
}


def ratios(rows: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, float]]:
    """Each path's figures divided by `base`'s, from the same run (empty if base is missing)."""
    if base not in rows:
        return {}
    ref = rows[base]
    out: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        out[name] = {
            short: (row[key] / ref[key] if ref[key] else math.nan)
            for short, key in _RATIO_KEYS.items()
        }
    return out


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # (label, figure, denominator path, limit); the numerator is always the mesh path
    ("p50 ÷ bare httpx", "p50_us", "{httpx}", 1.10),
    ("p99 ÷ bare httpx", "p99_us", "{httpx}", 1.20),
    ("p50 ÷ httpx through nginx pair", "p50_us", "{httpx}+nginx-pair", 0.75),
    ("p99 ÷ httpx through nginx pair", "p99_us", "{httpx}+nginx-pair", 0.90),
    (
        "CPU/req added over bare httpx ÷ nginx pair's CPU/req",
        "added_cpu",
        "{httpx}+nginx-pair",
        2.0,
    ),
)
"""The issue's targets. Both set-ups run the same httpx client, so the mesh's CPU
is compared as what it adds over bare httpx against what the two proxies burn;
the literal reading (all of the mesh client's CPU) is reported beside it."""


def _figure(rows: dict[str, dict[str, Any]], mesh: str, httpx: str, key: str, other: str) -> float:
    if key == "added_cpu":
        added = rows[mesh]["client_cpu_us_per_req"] - rows[httpx]["client_cpu_us_per_req"]
        return float(added / rows[other]["sidecar_cpu_us_per_req"])
    if key == "client_cpu":
        return float(rows[mesh]["client_cpu_us_per_req"] / rows[other]["sidecar_cpu_us_per_req"])
    return float(rows[mesh][key] / rows[other][key])


def targets(
    rows: dict[str, dict[str, Any]], *, mesh: str, httpx: str, info: bool = False
) -> list[dict[str, Any]]:
    """The issue's targets for `mesh` against the bare and nginx-pair paths of the same table.

    `info`: the same figures for a path that is not the one judged (all kind "info").
    """
    checks: list[dict[str, Any]] = []
    if mesh not in rows or httpx not in rows:
        return checks
    extra = (
        (
            "client CPU/req ÷ nginx pair's CPU/req (literal reading)",
            "client_cpu",
            "{httpx}+nginx-pair",
            2.0,
        ),
    )
    for index, (label, key, denominator, limit) in enumerate(TARGETS + extra):
        other = denominator.format(httpx=httpx)
        if other not in rows:
            continue
        value = _figure(rows, mesh, httpx, key, other)
        if httpx not in ("httpx", "httpx-async"):  # name the base when it is not plain httpx
            label = label.replace("bare httpx", httpx).replace("httpx through", f"{httpx} through")
        check = {
            "target": f"{mesh} {label}",
            "value": value,
            "limit": limit,
            "met": value <= limit,
            "kind": "target" if index < len(TARGETS) and not info else "info",
        }
        if key == "p50_us":
            # Ratios of the same round, so drift between rounds cancels out.
            pairs = zip(rows[mesh]["round_p50s_us"], rows[other]["round_p50s_us"], strict=False)
            check["per_round"] = sorted(a / b for a, b in pairs if b)
        checks.append(check)
    return checks


THROUGHPUT_TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    # (label, figure, other path, limit, direction): "min" = at least the limit
    ("req/s ÷ aiohttp", "throughput_rps", "aiohttp", 0.33, "min"),
    ("client CPU/req ÷ aiohttp's", "client_cpu_us_per_req", "aiohttp", 3.0, "max"),
    (
        "req/s ÷ httpx over httpx-aiohttp",
        "throughput_rps",
        "httpx-async[httpx-aiohttp]",
        0.90,
        "min",
    ),
)
"""The issue's async targets at N in flight, against the reference clients of the same table."""
OWN_CPU_LIMIT_US = 25.0
"""meshlib's own CPU per request above the transport it drives, in µs."""


def throughput_targets(
    rows: dict[str, dict[str, Any]], *, mesh: str, transport: str
) -> list[dict[str, Any]]:
    """Throughput and CPU of `mesh` against aiohttp and httpx-aiohttp; its own CPU above `transport`.

    `transport` is httpx over the same pool the mesh client drives, so the
    difference in client CPU per request is what meshlib itself adds.
    """
    checks: list[dict[str, Any]] = []
    if mesh not in rows:
        return checks
    for label, key, other, limit, direction in THROUGHPUT_TARGETS:
        if other not in rows or not rows[other][key]:
            continue
        value = float(rows[mesh][key] / rows[other][key])
        met = value >= limit if direction == "min" else value <= limit
        checks.append(
            {
                "target": f"{mesh} {label}",
                "value": value,
                "limit": limit,
                "met": met,
                "kind": "target",
                "direction": direction,
            }
        )
    return checks + own_cpu(rows, mesh=mesh, transport=transport)


def own_cpu(
    rows: dict[str, dict[str, Any]], *, mesh: str, transport: str, info: bool = False
) -> list[dict[str, Any]]:
    """`mesh`'s client CPU per request above httpx over the same `transport` (meshlib's own).

    The value is the median over rounds of the per-round difference (rounds
    are interleaved, so both paths of a round saw the same machine): CPU time
    is steadier than latency on a shared machine, but a few microseconds
    still need it.
    """
    if mesh not in rows or transport not in rows:
        return []
    pairs = zip(rows[mesh]["round_cpu_us"], rows[transport]["round_cpu_us"], strict=False)
    per_round = sorted(a - b for a, b in pairs)
    if per_round:  # the median round: one noisy round moves a mean of microseconds a lot
        own = per_round[len(per_round) // 2]
    else:
        own = rows[mesh]["client_cpu_us_per_req"] - rows[transport]["client_cpu_us_per_req"]
    return [
        {
            "target": f"{mesh} CPU µs/req above {transport} (meshlib's own)",
            "value": float(own),
            "limit": OWN_CPU_LIMIT_US,
            "met": own <= OWN_CPU_LIMIT_US,
            "kind": "info" if info else "target",
            "per_round": per_round,
        }
    ]
