"""Put the figures of real soak runs into `docs/explanation/benchmarks.md` (never typed by hand).

```console
$ python benchmarks/soak.py --out benchmarks/results/soak-a
$ python benchmarks/soak.py --out benchmarks/results/soak-b
$ python benchmarks/soak_figures.py benchmarks/results/soak-{a,b}/soak-latest.json
```

Replaces what lies between the `<!-- soak: start -->` and `<!-- soak: end -->`
markers with each run's machine, checkpoint tables and verdicts (recomputed
with the current rules).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.soak import summary, table, title, verdict

__all__ = ["main", "render"]

_PAGE = Path(__file__).resolve().parent.parent / "docs" / "explanation" / "benchmarks.md"
_START, _END = "<!-- soak: start -->", "<!-- soak: end -->"


def _machine(document: dict[str, Any]) -> str:
    machine = document["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    start = "/".join(f"{x:.1f}" for x in machine["loadavg_start"] or ())
    end = "/".join(f"{x:.1f}" for x in document.get("loadavg_end") or ())
    return (
        f"Machine: {machine['started_utc']}, commit `{machine['git_commit']}`: "
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['platform']}, CPython {machine['python']}; {packages}. Load average "
        f"(1/5/15 min) {start} at the start, {end} at the end."
    )


def render(documents: list[dict[str, Any]]) -> str:
    """The Markdown of one or more soak runs."""
    lines: list[str] = []
    for number, document in enumerate(documents, 1):
        lines += [f"#### Soak run {number}", "", _machine(document), ""]
        for result in document["results"]:
            result["verdict"] = verdict(result, document["args"])  # the current rules
            rows = table(result)
            lines += [f"**{title(result, document['args'])}**", ""]
            lines.append("| " + " | ".join(rows[0]) + " |")
            lines.append("|" + "---|" * len(rows[0]))
            lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
            lines += ["", *(f"{line}." for line in summary(result)), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Render the given soak JSON files into the benchmarks page."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print(__doc__)
        return 2
    documents = [json.loads(path.read_text()) for path in paths]
    page = _PAGE.read_text()
    head, rest = page.split(_START, 1)
    _, tail = rest.split(_END, 1)
    _PAGE.write_text(f"{head}{_START}\n{render(documents)}{_END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
