"""The `Server-Timing` value a response carries: the app's own time.

Callers subtract it from what they measured to split a call into service
time and network time. The metric name `app` is the contract with
meshlib's outbound side, which reads exactly this entry:

```python
server_timing(0.0123)   # 'app;dur=12.3'
```
"""

from __future__ import annotations

from meshlib.telemetry import names

__all__ = ["SERVER_TIMING", "SERVER_TIMING_METRIC", "server_timing"]

SERVER_TIMING = "server-timing"
"""The response header name (lower case, as ASGI sends it)."""

SERVER_TIMING_METRIC = names.SERVER_TIMING_APP
"""The Server-Timing metric name meshlib writes and reads."""


def server_timing(app_seconds: float) -> str:
    """`app;dur=<milliseconds>` with 0.1 ms resolution, never negative."""
    ms = app_seconds * 1000.0 if app_seconds > 0.0 else 0.0
    return f"app;dur={ms:.1f}"
