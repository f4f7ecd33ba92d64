"""Setting a request header on the hot path, for a fraction of what `httpx.Headers.__setitem__` costs.

`Headers.__setitem__` normalises and encodes the name, scans every header
for earlier values and rebuilds the list around them: about 2 µs for a
header meshlib sets on every attempt (`traceparent`, `x-mesh-deadline-ms`,
`x-mesh-attempt`). Their names are constants, already lower case, so
[`set_header`][meshlib.headers.set_header] only replaces or appends one
entry of httpx's list:

```python
set_header(request.headers, b"x-mesh-attempt", "2")
request.headers["x-mesh-attempt"]      # "2"
```
"""

from __future__ import annotations

import httpx

__all__ = ["set_header"]


def set_header(headers: httpx.Headers, name: bytes, value: str) -> None:
    """Set `name` (lower-case ASCII bytes) to `value`, replacing any earlier values.

    Falls back to `headers[name] = value` when httpx's private layout is not
    the `(raw name, lower-case name, value)` list this relies on, or when
    `value` is not ASCII.
    """
    entries = getattr(headers, "_list", None)
    if entries is None or not value.isascii():  # pragma: no cover - another httpx, or odd value
        headers[name.decode("ascii")] = value
        return
    entry = (name, name, value.encode("ascii"))
    found = [index for index, (_, lower, _) in enumerate(entries) if lower == name]
    if not found:
        entries.append(entry)
        return
    entries[found[0]] = entry  # httpx keeps the first position and drops the others
    for index in reversed(found[1:]):
        del entries[index]
