"""Public helpers for testing code that uses meshlib.

[`set_testing`][meshlib.testing.set_testing] turns backoff sleeps off and fixes the number of
attempts, as stamina's `set_testing` does, so a test of retry behaviour
runs in milliseconds:

```python
from meshlib.testing import set_testing

with set_testing(attempts=2):
    client.get("http://payments/v1/charges")   # at most 2 tries, no sleeping
```

It can also be called without `with`; it then stays on until
`set_testing(False)`. `FakeClock` is re-exported for
tests of decision objects.
"""

from __future__ import annotations

from types import TracebackType

from meshlib.clock import FakeClock
from meshlib.outbound.retry import TestingMode, current_testing, set_testing_mode

__all__ = ["FakeClock", "is_testing", "set_testing"]


class _RestoreTesting:
    """Returned by [`set_testing`][meshlib.testing.set_testing]; restores the previous mode when used as a context manager."""

    def __init__(self, previous: TestingMode | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        set_testing_mode(self._previous)


def set_testing(testing: bool = True, *, attempts: int = 1, cap: bool = False) -> _RestoreTesting:
    """Turn test mode on (no backoff sleeps, `attempts` tries) or off.

    With `cap=True` a policy's own `attempts` is kept when lower than
    `attempts`. Returns a context manager that restores the previous mode:

    ```python
    with set_testing(attempts=3, cap=True):
        ...
    ```
    """
    if testing and attempts < 1:
        raise ValueError(f"attempts counts tries including the first; got {attempts}, need >= 1")
    previous = set_testing_mode(TestingMode(attempts, cap) if testing else None)
    return _RestoreTesting(previous)


def is_testing() -> bool:
    """Whether test mode is on."""
    return current_testing() is not None
