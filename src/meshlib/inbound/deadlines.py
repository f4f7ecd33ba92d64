"""Incoming deadline headers to one [`Deadline`][meshlib.deadline.Deadline].

Three relative forms are understood; when several are sent the soonest wins,
and `inbound.deadline.max` caps the result:

* `x-mesh-deadline-ms: 250` — meshlib's own, remaining milliseconds;
* `grpc-timeout: 100m` — gRPC's: up to 8 digits and a unit `H` (hours),
  `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds)
  or `n` (nanoseconds);
* `x-envoy-expected-rq-timeout-ms: 250` — what an Envoy in front expects.

A malformed value is ignored, never an error to the caller:

```python
incoming_deadline("250", None, None, max_seconds=None, clock=clock)   # 250 ms from now
grpc_timeout_seconds("2S")   # 2.0
```
"""

from __future__ import annotations

from meshlib.clock import Clock
from meshlib.deadline import Deadline, parse_deadline_header

__all__ = ["grpc_timeout_seconds", "incoming_deadline", "milliseconds"]

_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout_seconds(value: str) -> float | None:
    """Seconds in a `grpc-timeout` value, or `None` if it is malformed (`"100m"` -> 0.1)."""
    text = value.strip()
    digits, unit = text[:-1], text[-1:]
    scale = _GRPC_UNITS.get(unit)
    if scale is None or not 1 <= len(digits) <= 8 or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) * scale


def milliseconds(value: str) -> float | None:
    """Seconds in a whole-milliseconds value, or `None` if malformed (`"250"` -> 0.25)."""
    text = value.strip()
    if not text or len(text) > 15 or not text.isascii() or not text.isdigit():
        return None
    return int(text) / 1000.0


def incoming_deadline(
    mesh_ms: str | None,
    grpc_timeout: str | None,
    envoy_ms: str | None,
    *,
    max_seconds: float | None,
    clock: Clock,
) -> Deadline | None:
    """The request's deadline from its headers (raw values or `None`), capped by `max_seconds`.

    `None` when no valid header was sent: the request has no deadline.
    """
    deadline = parse_deadline_header(mesh_ms, clock) if mesh_ms is not None else None
    for seconds in (
        grpc_timeout_seconds(grpc_timeout) if grpc_timeout is not None else None,
        milliseconds(envoy_ms) if envoy_ms is not None else None,
    ):
        if seconds is not None:
            deadline = Deadline.after(seconds, clock).earliest(deadline)
    if deadline is not None and max_seconds is not None:
        deadline = Deadline.after(max_seconds, clock).earliest(deadline)
    return deadline
