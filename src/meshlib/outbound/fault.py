"""Fault injection: abort or delay a share of calls, decided by the calling side, for chaos tests.

Decided once per call, before the first try, from the effective `fault`
section (destination, route):

```python
decision = decide_fault(effective.fault, clock)
decision.delay    # seconds to wait first, or 0.0
decision.abort    # a status to answer without sending, or None
```

An aborted call is answered locally with that status and the header
`x-meshlib-fault: abort`; it is not retried (a fault stands for the
upstream's answer, not for a flaky attempt).
"""

from __future__ import annotations

from typing import NamedTuple

from meshlib.clock import Clock
from meshlib.policy.model import Fault

__all__ = ["FAULT_HEADER", "NO_FAULT", "FaultDecision", "decide_fault", "has_fault"]

FAULT_HEADER = "x-meshlib-fault"


class FaultDecision(NamedTuple):
    """What to do to one call: wait `delay` seconds first, then answer `abort` if set."""

    delay: float
    abort: int | None


NO_FAULT = FaultDecision(0.0, None)


def has_fault(fault: Fault) -> bool:
    """Whether a fault section can inject anything (so calls without faults skip the dice)."""
    return (fault.abort is not None and fault.abort.percent > 0) or (
        fault.delay is not None and fault.delay.percent > 0 and fault.delay.duration > 0
    )


def decide_fault(fault: Fault, clock: Clock) -> FaultDecision:
    """Roll the dice for one call: each of delay and abort hits `percent` % of calls."""
    delay = 0.0
    abort = None
    if fault.delay is not None and clock.random() * 100.0 < fault.delay.percent:
        delay = fault.delay.duration
    if fault.abort is not None and clock.random() * 100.0 < fault.abort.percent:
        abort = fault.abort.status
    if delay == 0.0 and abort is None:
        return NO_FAULT
    return FaultDecision(delay, abort)
