"""PolicyStore: the current policy snapshot, swapped atomically; readers never lock.

Sources (a local file, the control plane) hand documents to the store. A
document that fails validation is rejected with its precise error, counted,
and the last good snapshot stays in force. Requests read `store.current`,
a plain attribute read, and keep the snapshot they started with:

```python
store = PolicyStore(load_policy("mesh.yaml"))
snapshot = store.current          # PolicySnapshot(policy, revision, source)
store.subscribe(lambda old, new: print("now", new.revision))
store.update_from_text(text, source="mesh.yaml")   # raises PolicyError, keeps the old one
```
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import PolicyError
from meshlib.policy.model import Policy
from meshlib.policy.parse import Format, parse_policy, validate_policy
from meshlib.policy.resolve import Resolver, resolver_for

__all__ = ["PolicySnapshot", "PolicyStore", "Subscriber"]

logger = logging.getLogger("meshlib.policy")


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One immutable policy in force: the model, its revision and where it came from."""

    policy: Policy
    revision: str
    source: str
    loaded_at: float = 0.0
    resolver: Resolver = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolver", resolver_for(self.policy))


Subscriber = Callable[[PolicySnapshot | None, PolicySnapshot], None]
"""Called after each swap with the old snapshot (None at first load) and the new one."""


def revision_of(policy: Policy) -> str:
    """A content hash of a policy, used as its revision when the source gives none."""
    digest = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()
    return digest[:12]


class PolicyStore:
    """Holds the policy in force and tells subscribers when it changes."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        revision: str | None = None,
        source: str = "<code>",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # orders writers; readers never take it
        self._subscribers: list[Subscriber] = []
        self._current: PolicySnapshot | None = None
        self.reload_failures = 0
        self.last_error: PolicyError | None = None
        if policy is not None:
            self.update(policy, revision=revision, source=source)

    @property
    def current(self) -> PolicySnapshot:
        """The snapshot in force. Raises LookupError before the first policy arrives."""
        snapshot = self._current
        if snapshot is None:
            raise LookupError("no policy loaded yet")
        return snapshot

    @property
    def loaded(self) -> bool:
        """Whether a policy has been loaded (readiness)."""
        return self._current is not None

    def peek(self) -> PolicySnapshot | None:
        """The snapshot in force, or None before the first policy."""
        return self._current

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(old, new)` after every swap; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def update(
        self, policy: Policy, *, revision: str | None = None, source: str = "<code>"
    ) -> bool:
        """Make `policy` current. Returns False when it is the revision already in force."""
        revision = revision or revision_of(policy)
        with self._lock:
            old = self._current
            if old is not None and old.revision == revision:
                return False
            new = PolicySnapshot(policy, revision, source, self._clock.wall())
            self._current = new
            self.last_error = None
            subscribers = list(self._subscribers)
        logger.info("policy %s from %s is in force", revision, source)
        for callback in subscribers:
            try:
                callback(old, new)
            except Exception:
                logger.exception("policy subscriber %r failed", callback)
        return True

    def reject(self, error: PolicyError) -> None:
        """Record a document that failed validation; the current snapshot stays."""
        with self._lock:
            self.reload_failures += 1
            self.last_error = error
        logger.error("policy rejected, the last good one stays in force:\n%s", error)

    def update_from_text(
        self, text: str, *, source: str, fmt: Format | None = None, revision: str | None = None
    ) -> bool:
        """Parse, validate and apply a document; on failure record it, keep the old one and raise."""
        try:
            policy = parse_policy(text, source=source, fmt=fmt)
        except PolicyError as exc:
            self.reject(exc)
            raise
        return self.update(policy, revision=revision, source=source)

    def update_from_data(self, data: Any, *, source: str, revision: str | None = None) -> bool:
        """Validate and apply already-parsed data, as `update_from_text`."""
        try:
            policy = validate_policy(data, source=source)
        except PolicyError as exc:
            self.reject(exc)
            raise
        return self.update(policy, revision=revision, source=source)
