"""The bounds every policy document is read and parsed within, whatever its format or origin.

A policy comes from a file, a publish to the control plane or a control-plane
answer; any of them may be hostile. One size limit applies everywhere and is
the control plane's request limit too, so a document the control plane
accepts is one every client can read:

| Bound | Value | Why |
|-------|-------|-----|
| size | [`MAX_POLICY_BYTES`][meshlib.policy.limits.MAX_POLICY_BYTES] (1 MiB) | a file or body is never read whole past it |
| depth | [`MAX_DEPTH`][meshlib.policy.limits.MAX_DEPTH] (32) nested mappings or lists | no parser or validator recursion runs away |
| values | [`MAX_NODES`][meshlib.policy.limits.MAX_NODES] (200,000), YAML aliases expanded | an alias bomb cannot make validation walk billions of values |

A real policy is far inside all three (a 300-service mesh is about 100 KiB,
depth 8). Exceeding one is a [`PolicyError`][meshlib.errors.PolicyError]
naming the source and the bound, raised before any expensive work:

```python
text = read_policy_file("mesh.yaml")     # PolicyError when larger than MAX_POLICY_BYTES
check_size(text, source="publish")      # the same check for text from elsewhere
check_shape(data, source="mesh.json")   # depth and value count of parsed data
```
"""

from __future__ import annotations

import os
from typing import Any

from meshlib.errors import PolicyError

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_POLICY_BYTES",
    "check_shape",
    "check_size",
    "read_policy_file",
    "too_deep",
    "too_many",
]

MAX_POLICY_BYTES = 1 << 20
"""Largest policy document, in bytes of UTF-8: files, publishes and control-plane answers."""

MAX_DEPTH = 32
"""Deepest nesting of mappings and lists in a policy document (a real one needs about 8)."""

MAX_NODES = 200_000
"""Most values (scalars, mappings, lists) a document may hold once YAML aliases are expanded."""


def _too_large(size: int, source: str) -> PolicyError:
    return PolicyError.single(
        f"the document is {size} bytes, more than the {MAX_POLICY_BYTES}-byte limit for a policy",
        source=source,
    )


def too_deep(source: str, line: int | None = None, column: int | None = None) -> PolicyError:
    """The error for a document nested deeper than [`MAX_DEPTH`][meshlib.policy.limits.MAX_DEPTH]."""
    return PolicyError.single(
        f"the document nests mappings and lists more than {MAX_DEPTH} deep; a policy needs about 8",
        source=source,
        line=line,
        column=column,
    )


def too_many(source: str, line: int | None = None, column: int | None = None) -> PolicyError:
    """The error for a document that expands to more than [`MAX_NODES`][meshlib.policy.limits.MAX_NODES] values."""
    return PolicyError.single(
        f"the document holds more than {MAX_NODES} values once YAML aliases are expanded "
        "(an alias bomb?)",
        source=source,
        line=line,
        column=column,
    )


def check_size(text: str | bytes, *, source: str) -> None:
    """Raise `PolicyError` when `text` is larger than `MAX_POLICY_BYTES` in UTF-8."""
    size = len(text)
    if size > MAX_POLICY_BYTES:
        raise _too_large(size, source)
    # A character is 1 to 4 bytes: only text that might be too large is encoded to know.
    if isinstance(text, str) and size * 4 > MAX_POLICY_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_POLICY_BYTES:
            raise _too_large(size, source)


def read_policy_file(path: str | os.PathLike[str], *, source: str | None = None) -> str:
    """The text of a policy file, reading no more than `MAX_POLICY_BYTES` + 1 bytes of it.

    Raises:
        PolicyError: the file cannot be read, is not UTF-8, or is too large.
    """
    name = source if source is not None else os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_POLICY_BYTES + 1)
            if len(raw) > MAX_POLICY_BYTES:
                size = os.fstat(file.fileno()).st_size
                raise _too_large(max(size, len(raw)), name)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError.single(f"cannot read the policy file: {reason}", source=name) from None


def check_shape(data: Any, *, source: str) -> None:
    """Raise `PolicyError` when parsed `data` is deeper than `MAX_DEPTH` or larger than `MAX_NODES`.

    Walks iteratively, so it is safe on any input a parser returned; shared
    objects are counted each time they appear, as validation would walk them.
    """
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise too_many(source)
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise too_deep(source)
        stack.extend((child, depth + 1) for child in children)
