"""Certificate rotation: material rebuilt from its files when they change, checked lazily.

`Reloading` holds a value built from a few files (an `SSLContext`
built from a CA bundle, a certificate and a key) and hands it out with
`Reloading.current`. At most once per `interval` seconds that call
stats the files (mtime, size, inode, as [`meshlib.policy.sources.FileSource`][meshlib.policy.sources.FileSource]
does, so symlink swaps of Kubernetes secrets count); when they changed it
rebuilds the value. There is no watcher thread to start or stop: a process
that makes no new connections does no work, and the check costs three
`stat` calls per second at most.

A rebuild that fails (a certificate written before its key, a half-copied
bundle, a garbage file) keeps the previous value, logs the reason once per
distinct file state, and is retried at the next check, so a botched
rotation never takes a running service down:

```python
material = Reloading(build_context, [ca, cert, key])
ctx = material.current()      # the newest good SSLContext
```
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import CertificateError

__all__ = ["DEFAULT_RELOAD_INTERVAL", "Reloading"]

logger = logging.getLogger("meshlib.security")

DEFAULT_RELOAD_INTERVAL = 1.0
"""Seconds between checks of certificate files for changes."""

T = TypeVar("T")
Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(paths: Sequence[str]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class Reloading(Generic[T]):
    """A value built from files, rebuilt when they change (checked at most every `interval` s).

    The first build happens in the constructor and its errors propagate:
    there is nothing older to fall back on. `generation` counts successful
    rebuilds and `failures` failed ones, for tests and health reports.

    ```pycon
    >>> material = Reloading(lambda: open("ca.pem").read(), ["ca.pem"])   # doctest: +SKIP
    >>> material.current()                                               # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        build: Callable[[], T],
        paths: Sequence[str | os.PathLike[str]],
        *,
        interval: float = DEFAULT_RELOAD_INTERVAL,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "certificates",
    ) -> None:
        self._build = build
        self.paths = tuple(os.fspath(p) for p in paths)
        self.interval = interval
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = _signature(self.paths)
        self._failed: Signature | None = None
        self._value = build()
        self._next_check = clock.monotonic() + interval
        self.generation = 0
        self.failures = 0

    def current(self) -> T:
        """The newest good value, after a cheap change check when one is due."""
        if self._clock.monotonic() < self._next_check:
            return self._value
        # A thread already reloading will publish its result; nobody waits on it.
        if not self._lock.acquire(blocking=False):
            return self._value
        try:
            self._check()
        finally:
            self._lock.release()
        return self._value

    def _check(self) -> None:
        self._next_check = self._clock.monotonic() + self.interval
        signature = _signature(self.paths)
        if signature == self._seen:
            return
        try:
            value = self._build()
        except CertificateError as exc:
            self.failures += 1
            if signature != self._failed:
                self._failed = signature
                logger.warning(
                    "%s changed but cannot be loaded, keeping the previous ones: %s", self.name, exc
                )
            return
        except Exception:  # never let a rotation error reach a connection attempt
            self.failures += 1
            if signature != self._failed:
                self._failed = signature
                logger.exception("reloading %s failed, keeping the previous ones", self.name)
            return
        self._value = value
        self._seen = signature
        self._failed = None
        self.generation += 1
        logger.info("reloaded %s (%s)", self.name, ", ".join(self.paths))
