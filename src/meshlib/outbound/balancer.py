"""Load balancing: which of the healthy endpoints takes the next attempt.

`round_robin` cycles through the candidates (each `weight` times per
cycle); `least_request` is the
power of two random choices (P2C): pick two at random, take the one with
fewer requests in flight, which tracks load nearly as well as scanning all
endpoints, with none of the herding (load is compared per unit of weight). A retry passes the endpoints already
tried so it prefers one it has not used:

```python
balancer = Balancer("least_request", clock)
endpoint = balancer.pick(candidates, tried=(first,))
```
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar

from meshlib.clock import Clock
from meshlib.policy.model import LoadBalancer

__all__ = ["Balancer", "Loaded"]


class Loaded(Protocol):
    """Anything with a count of requests in flight and a relative weight."""

    @property
    def in_flight(self) -> int:
        """Requests in flight right now."""

    @property
    def weight(self) -> int:
        """Relative share of traffic (1 when all endpoints are equal)."""


E = TypeVar("E", bound=Loaded)


class Balancer:
    """Chooses an endpoint; holds only the round-robin position, so it is cheap to share."""

    __slots__ = ("_counter", "clock", "kind")

    def __init__(self, kind: LoadBalancer, clock: Clock) -> None:
        self.kind = kind
        self.clock = clock
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[E], tried: Collection[E] = ()) -> E:
        """One endpoint from `candidates` (not empty), preferring ones not in `tried`."""
        if tried and len(candidates) > 1:
            fresh = [c for c in candidates if c not in tried]
            if fresh:
                candidates = fresh
        count = len(candidates)
        if count == 1:
            return candidates[0]
        if self.kind == "least_request":
            first = int(self.clock.random() * count)
            second = int(self.clock.random() * (count - 1))
            if second >= first:
                second += 1
            a, b = candidates[first], candidates[second]
            # Cross-multiplied: b.in_flight / b.weight < a.in_flight / a.weight.
            return b if b.in_flight * a.weight < a.in_flight * b.weight else a
        position = next(self._counter)  # atomic under the GIL: no lock needed
        total = 0
        for candidate in candidates:
            total += candidate.weight
        if total == count:
            return candidates[position % count]
        # Unequal weights: walk the weighted cycle, so each gets weight/total of the picks.
        slot = position % total
        for candidate in candidates:
            slot -= candidate.weight
            if slot < 0:
                return candidate
        return candidates[-1]  # pragma: no cover - unreachable: slots cover the total
