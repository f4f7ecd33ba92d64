"""Markdown reference pages generated from the models, so the docs never drift from the code.

The docs build calls these (`docs/hooks.py`); a test checks every field appears:

```python
print(render_policy_reference())
```
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from meshlib.policy.durations import format_duration
from meshlib.policy.model import Policy
from meshlib.settings import MeshSettings

__all__ = ["markdown_text", "render_policy_reference", "render_settings_reference"]


def _is_duration(info: FieldInfo) -> bool:
    return any(
        getattr(m, "json_schema", {}).get("pattern", "").endswith("(ms|s|m|h)$")
        for m in info.metadata
    )


def _type_name(annotation: Any, info: FieldInfo | None = None) -> str:
    if info is not None and _is_duration(info):
        return "duration"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = type(None) in args
        return " \\| ".join(names) + (" or null" if optional else "")
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin in (Mapping, dict) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return f"map of name → {_type_name(args[1])}"
    if origin is not None and hasattr(annotation, "__metadata__"):
        return _type_name(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if get_origin(annotation) is None and hasattr(annotation, "__origin__"):
        return _type_name(annotation.__origin__)
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and _is_duration(info):
        return f"`{format_duration(value)}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models(arg)


def _walk(model: type[BaseModel], path: str, seen: dict[type[BaseModel], list[str]]) -> None:
    first = model not in seen
    seen.setdefault(model, []).append(path or "(top level)")
    if not first:
        return
    for name, info in model.model_fields.items():
        for child in _models(info.annotation):
            origin = get_origin(info.annotation)
            if origin is tuple or (
                origin in (Union, types.UnionType)
                and any(get_origin(a) is tuple for a in get_args(info.annotation))
            ):
                suffix = f"{name}[]"
            elif _is_mapping(info.annotation):
                suffix = f"{name}.<name>"
            else:
                suffix = name
            _walk(child, f"{path}.{suffix}" if path else suffix, seen)


def _is_mapping(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return isinstance(origin, type) and issubclass(origin, Mapping)


def markdown_text(text: str) -> str:
    """`text` safe in a Markdown table cell: `<` and `>` outside code spans escaped, `|` too.

    Without it `spiffe://<trust_domain>/<service>` renders as `spiffe:///`, the
    browser taking `<service>` for an HTML tag.
    """
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if not part.startswith("`"):
            parts[i] = part.replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    text = " ".join(line.strip() for line in (model.__doc__ or "").strip().splitlines())
    return markdown_text(text.replace("``", "`"))


def render_policy_reference() -> str:
    """The policy document reference in Markdown, one section per model, every field listed."""
    seen: dict[type[BaseModel], list[str]] = {}
    _walk(Policy, "", seen)
    out = [
        "Every key of the policy document, generated from meshlib's models. Durations are written "
        "with a unit (`250ms`, `2s`, `1m`); unknown keys are errors.\n",
    ]
    for model, paths in seen.items():
        out.append(f"## {model.__name__}\n")
        out.append(_doc(model) + "\n")
        out.append("Appears at: " + ", ".join(f"`{p}`" for p in paths[:6]) + "\n")
        out.append("| key | type | default | description |")
        out.append("| --- | --- | --- | --- |")
        for name, info in model.model_fields.items():
            description = markdown_text((info.description or "").replace("\n", " "))
            out.append(
                f"| `{name}` | {_type_name(info.annotation, info)} | {_default(info)} | {description} |"
            )
        out.append("")
    return "\n".join(out)


def render_settings_reference() -> str:
    """The `MESH_*` environment variables in Markdown, from MeshSettings."""
    out = ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in MeshSettings.model_fields.items():
        description = markdown_text(info.description or "")
        out.append(
            f"| `MESH_{name.upper()}` | {_type_name(info.annotation, info)} | {_default(info)} | {description} |"
        )
    return "\n".join(out) + "\n"
