"""The telemetry reference page, rendered from `meshlib.telemetry.names` so it cannot drift.

The docs build replaces the marker `<!-- generated: telemetry-reference -->`
with this Markdown (see `docs/hooks.py`):

```python
from meshlib.telemetry.reference import render_telemetry_reference
print(render_telemetry_reference())
```
"""

from __future__ import annotations

import ast
import inspect
import itertools

from meshlib.telemetry import names

__all__ = ["constant_docs", "render_telemetry_reference"]


def constant_docs() -> dict[str, str]:
    """The docstring written under each constant in `meshlib.telemetry.names`, by constant name.

    Python keeps no such docstrings at runtime, so they are read from the
    module's source, as documentation tools do.
    """
    tree = ast.parse(inspect.getsource(names))
    docs: dict[str, str] = {}
    body = tree.body
    for statement, following in itertools.pairwise(body):
        target = getattr(statement, "target", None) or next(
            iter(getattr(statement, "targets", [])), None
        )
        if (
            isinstance(target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[target.id] = " ".join(following.value.value.split())
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_telemetry_reference() -> str:
    """Markdown tables of meshlib's instruments, span events and span attributes."""
    docs = constant_docs()
    lines = [
        "### Instruments",
        "",
        f"Instrumentation scope: `{names.SCOPE}`. Durations are seconds.",
        "",
        "| Name | Kind | Unit | Description |",
        "|------|------|------|-------------|",
    ]
    for spec in names.INSTRUMENTS:
        lines.append(
            f"| `{spec.name}` | {spec.kind.replace('_', ' ')} | `{spec.unit}` | {_cell(spec.description)} |"
        )
    lines += ["", "### Span events", "", "| Name | Meaning |", "|------|---------|"]
    for constant in names.__all__:
        if constant.startswith("EVENT_"):
            lines.append(f"| `{getattr(names, constant)}` | {_cell(docs.get(constant, ''))} |")
    lines += [
        "",
        "### meshlib's span and metric attributes",
        "",
        "Standard attributes (`http.request.method`, `http.response.status_code`, `server.address`,",
        "`http.request.resend_count`, ...) follow the stable OpenTelemetry HTTP semantic conventions.",
        "",
        "| Attribute | Meaning |",
        "|-----------|---------|",
    ]
    for constant in names.__all__:
        if constant.startswith("ATTR_"):
            lines.append(f"| `{getattr(names, constant)}` | {_cell(docs.get(constant, ''))} |")
    return "\n".join(lines) + "\n"
