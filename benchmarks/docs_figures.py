"""Put the figures of real runs into `docs/explanation/benchmarks.md` (never typed by hand).

```text
python benchmarks/run.py --out benchmarks/results/a
python benchmarks/run.py --out benchmarks/results/b
python benchmarks/docs_figures.py benchmarks/results/a/latest.json benchmarks/results/b/latest.json
```

Replaces what lies between the `<!-- figures: start -->` and `<!-- figures: end -->`
markers with each run's machine, tables and target verdicts, and copies the
last run's plot to `docs/explanation/img/benchmarks.png`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import format_markdown

__all__ = ["main", "render"]

_REPO = Path(__file__).resolve().parent.parent
_PAGE = _REPO / "docs" / "explanation" / "benchmarks.md"
_IMG = _REPO / "docs" / "explanation" / "img" / "benchmarks.png"
_START, _END = "<!-- figures: start -->", "<!-- figures: end -->"


def _load(values: list[float] | None) -> str:
    return "/".join(f"{x:.1f}" for x in values) if values else "?"


def _machine(meta: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v)
    return (
        f"{meta['started_utc']}, commit `{meta['git_commit']}`: {meta['cpu_model']}, "
        f"{meta['cpus']} CPUs ({meta['cpus_usable']} usable), {meta['memory_gib']} GiB, "
        f"{meta['platform']}, {meta['python_impl']} {meta['python']}; {meta['nginx']}; "
        f"{meta['haproxy']}; {packages}. Load average (1/5/15 min) {_load(meta['loadavg_start'])} "
        f"at the start, {_load(meta['loadavg_end'])} at the end; {meta['elapsed_s']} s in all."
    )


def _targets(checks: list[dict[str, Any]]) -> str:
    lines = [
        "| table | target | value | per round (min..max) | limit | verdict |",
        "|---|---|--:|--:|--:|---|",
    ]
    for c in checks:
        verdict = "info" if c.get("kind") == "info" else ("met" if c["met"] else "**missed**")
        rounds = c.get("per_round")
        spread = f"{rounds[0]:.2f}..{rounds[-1]:.2f}" if rounds else ""
        bound = "≥" if c.get("direction") == "min" else "≤"
        lines.append(
            f"| {c['table']} | {c['target']} | {c['value']:.2f} | {spread} | {bound} {c['limit']:.2f} | {verdict} |"
        )
    return "\n".join(lines)


def render(documents: list[dict[str, Any]]) -> str:
    """The figures section for the given runs, in order."""
    parts = ["## The latest figures", ""]
    parts.append(
        f"{len(documents)} consecutive full runs (`python benchmarks/run.py`, default settings: "
        f"{documents[0]['settings']['rounds']} interleaved rounds, "
        f"{documents[0]['settings']['requests']} sequential and "
        f"{documents[0]['settings']['async_requests']} async requests per path per round, "
        f"{documents[0]['settings']['concurrency']} in flight"
        + (
            f"; {documents[0]['settings']['rate_requests']} fixed-rate requests per path per "
            f"round at {documents[0]['settings']['rate']:g} req/s"
            if "rate_requests" in documents[0]["settings"]
            else ""
        )
        + ")."
    )
    for index, doc in enumerate(documents, start=1):
        parts += ["", f"### Run {index}", "", f"Machine: {_machine(doc['meta'])}", ""]
        for name, table in doc["tables"].items():
            parts += [format_markdown(name, table), ""]
        parts += [f"Targets, run {index}:", "", _targets(doc["targets"])]
    parts += [
        "",
        "### Latency distributions",
        "",
        f"From run {len(documents)}. Boxes span p25 to p75 with the median in red, whiskers reach "
        "p1 and p99, and the grey dot is p99.9. The scale is logarithmic.",
        "",
        "![Latency per request of every path, one panel per table](img/benchmarks.png)",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the figures section from the JSON files given, and copy the last run's plot."""
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        raise SystemExit("usage: docs_figures.py RUN1/latest.json [RUN2/latest.json ...]")
    documents = [json.loads(p.read_text()) for p in paths]
    page = _PAGE.read_text()
    head, _, rest = page.partition(_START)
    _, _, tail = rest.partition(_END)
    if not rest:
        raise SystemExit(f"{_PAGE} has no {_START} marker")
    _PAGE.write_text(f"{head}{_START}\n{render(documents)}\n{_END}{tail}")
    plot = paths[-1].parent / "latency.png"
    if plot.exists():
        _IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, _IMG)
    print(f"updated {_PAGE}" + (f" and {_IMG}" if plot.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
