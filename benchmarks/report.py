"""What a run prints and writes: the machine it ran on, one table per (mode, upstream), the targets.

```python
meta = machine_info(tools)
print(format_table(table))
write_json(out_dir, {"meta": meta, "tables": tables})
```
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.servers import SystemTools

__all__ = ["format_markdown", "format_table", "format_targets", "machine_info", "write_json"]

_PACKAGES = (
    "meshlib",
    "httpx",
    "httpcore",
    "aiohttp",
    "tenacity",
    "pybreaker",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-httpx",
    "uvicorn",
    "starlette",
)


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (
        (done.stdout + done.stderr).strip().splitlines()[0]
        if (done.stdout + done.stderr).strip()
        else ""
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(tools: SystemTools) -> dict[str, Any]:
    """Where and with what the run happened, so figures are never quoted without their machine."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _mem_gib(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "packages": versions,
        "nginx": _run([tools.nginx, "-v"]) if tools.nginx else None,
        "haproxy": _run([tools.haproxy, "-v"]) if tools.haproxy else None,
        "git_commit": _run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"]
        )
        or None,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _num(value: float | None, width: int, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def format_table(name: str, table: dict[str, Any]) -> str:
    """A fixed-width text table of one (mode, upstream) with ratios against its base path."""
    rows: dict[str, dict[str, Any]] = table["paths"]
    rat: dict[str, dict[str, float]] = table["ratios"]
    head = (
        f"{'path':<32}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}{'req/s':>9}"
        f"{'cpu µs/req':>11}{'sidecar':>9}{'upstream':>9}{'r.p50':>7}{'r.p99':>7}{'r.rps':>7}{'r.cpu':>7}{'err':>5}"
    )
    lines = [
        f"== {name}: {table['title']} (r.* = ratio to {table['base']}, same run) ==",
        head,
        "-" * len(head),
    ]
    for path, row in rows.items():
        r = rat.get(path, {})
        lines.append(
            f"{path:<32}{_num(row['p50_us'], 9)}{_num(row['p90_us'], 9)}{_num(row['p99_us'], 9)}"
            f"{_num(row['throughput_rps'], 9)}{_num(row['client_cpu_us_per_req'], 11)}"
            f"{_num(row['sidecar_cpu_us_per_req'] or math.nan, 9)}"
            f"{_num(row.get('upstream_cpu_us_per_req', math.nan), 9)}"
            f"{_num(r.get('p50', math.nan), 7, 2)}{_num(r.get('p99', math.nan), 7, 2)}"
            f"{_num(r.get('throughput', math.nan), 7, 2)}"
            f"{_num(r.get('client_cpu', math.nan), 7, 2)}{row['errors']:>5}"
        )
    for path, reason in table["skipped"].items():
        lines.append(f"{path:<32}skipped: {reason}")
    if table.get("truncated"):
        lines.append("(time budget reached: fewer rounds than asked)")
    return "\n".join(lines)


def format_markdown(name: str, table: dict[str, Any]) -> str:
    """One table as Markdown, for the docs page (same columns as the text table)."""
    rows: dict[str, dict[str, Any]] = table["paths"]
    rat: dict[str, dict[str, float]] = table["ratios"]
    lines = [
        f"**{name}**: {table['title']}; r.* = ratio to `{table['base']}`, same run; "
        f"{table['rounds_done']} rounds",
        "",
        "| path | p50 µs | p90 µs | p99 µs | req/s | client CPU µs/req | sidecar CPU µs/req "
        "| upstream CPU µs/req | r.p50 | r.p99 | r.req/s | r.CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for path, row in rows.items():
        r = rat.get(path, {})
        cells = [
            f"`{path}`",
            _num(row["p50_us"], 0),
            _num(row["p90_us"], 0),
            _num(row["p99_us"], 0),
            _num(row["throughput_rps"], 0),
            _num(row["client_cpu_us_per_req"], 0),
            _num(row["sidecar_cpu_us_per_req"] or math.nan, 0),
            _num(row.get("upstream_cpu_us_per_req", math.nan), 0),
            _num(r.get("p50", math.nan), 0, 2),
            _num(r.get("p99", math.nan), 0, 2),
            _num(r.get("throughput", math.nan), 0, 2),
            _num(r.get("client_cpu", math.nan), 0, 2),
        ]
        lines.append("| " + " | ".join(c.strip() for c in cells) + " |")
    for path, reason in table["skipped"].items():
        lines.append(f"| `{path}` | skipped: {reason} |" + " |" * 10)
    return "\n".join(lines)


def format_targets(checks: list[dict[str, Any]], *, judged: bool = True) -> str:
    """The targets, one line each, MET or MISSED; all informational when not `judged` (--quick)."""
    if not checks:
        return "targets: not evaluated (no mesh path ran)"
    lines = ["targets (same run):"]
    if not judged:
        lines = [
            "targets (quick run: too few requests to judge; informational, judged in the full run):"
        ]
    for check in checks:
        verdict = "MET   " if check["met"] else "MISSED"
        if check.get("kind") == "info" or not judged:
            verdict = "(info)"
        spread = ""
        if check.get("per_round"):
            rounds = check["per_round"]
            spread = f"; per round {rounds[0]:.2f}..{rounds[-1]:.2f}, median {rounds[len(rounds) // 2]:.2f}"
        lines.append(
            f"  {verdict} {check['table']}: {check['target']} = {check['value']:.2f} ({'≥' if check.get('direction') == 'min' else '≤'} {check['limit']:.2f}{spread})"
        )
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(out_dir: Path, document: dict[str, Any]) -> Path:
    """Write `bench-<UTC time>.json` and `latest.json` under `out_dir`; return the first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(_clean(document), indent=2, ensure_ascii=False)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    markdown = [format_markdown(name, table) for name, table in document["tables"].items()]
    (out_dir / "latest.md").write_text("\n\n".join(markdown) + "\n")
    return path
