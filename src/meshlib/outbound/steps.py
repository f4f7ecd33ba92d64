"""The vocabulary between the outbound flow and its drivers: I/O steps and attempt records.

The flow yields `Send` and `Sleep`; the drivers perform them.
Each try of a call leaves an `Attempt` in the call's history:

```python
response.extensions[ATTEMPTS_EXTENSION]   # (Attempt(1, 'http://...', 503, ...), ...)
```
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from meshlib.telemetry.latency import ATTEMPTS_EXTENSION

if TYPE_CHECKING:
    from meshlib.telemetry.latency import LatencySplit

__all__ = ["ATTEMPTS_EXTENSION", "Attempt", "Flow", "Send", "Sleep", "Step"]

# Response extension holding the tuple of Attempt records of the call (defined beside the
# latency extension, which the telemetry that fills in each attempt's split also writes).


class Send:
    """Step: send `request` through `transport`; resume with the response or throw the error."""

    __slots__ = ("request", "transport")

    def __init__(self, transport: Any, request: httpx.Request) -> None:
        self.transport = transport
        self.request = request


class Sleep:
    """Step: close `discard` (a response thrown away) if set, then wait `seconds`."""

    __slots__ = ("discard", "seconds")

    def __init__(self, seconds: float, discard: httpx.Response | None = None) -> None:
        self.seconds = seconds
        self.discard = discard


Step = Send | Sleep
Flow = Generator[Step, Any, httpx.Response]


class Attempt(NamedTuple):
    """One try of a call, as recorded in its history (a named tuple: cheap to build per try).

    `outcome` is the status code or the exception class name; `backoff`
    the wait before the next try (0.0 for the last); `note` why the call
    went on or stopped (`retry`, `budget`, `deadline`, ...); `split`
    the attempt's latency split (service, network, meshlib) when the call's
    latency was measured (see `meshlib.telemetry.latency`), else None.
    """

    number: int
    endpoint: str
    outcome: int | str
    elapsed: float
    backoff: float = 0.0
    note: str = ""
    split: LatencySplit | None = None  # the last field: telemetry.client fills it in by position
