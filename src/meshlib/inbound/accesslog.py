"""Access-denied log lines a security team can grep, rate-limited so a flood cannot flood the log.

Every request the middleware refuses for who or what it is (authz 403, a
path not in normal form 400) is logged on the `meshlib.access` logger at
WARNING, one line each, with the caller's verified identity, the method and
path, and the policy rule that decided:

```text
access denied: service=payments status=403 caller="spiffe://example.org/billing" method=GET path="/v1/charges" rule=services.payments.inbound.authz.rules[0] client=127.0.0.1:51234
access denied: service=payments status=400 caller=- method=GET path="/v1/../admin" rule=path-normal-form reason=dot-segment client=127.0.0.1:51236
```

Values a caller controls (path, identity) are quoted with JSON escapes, so a
`%0a` in a path cannot forge a second line. At most `rate` lines a second
are written (after a burst of `burst`); the next line written says how many
were left out (`suppressed=N`). Shadow-mode denials are logged the same way
with `shadow=true`, at INFO. The `meshlib.server.denied` and
`meshlib.server.rejected` counters count every one, logged or not.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from meshlib.clock import Clock
from meshlib.inbound.admission import TokenBucket

if TYPE_CHECKING:
    from meshlib.inbound.core import RequestInfo

__all__ = ["AccessLog"]

logger = logging.getLogger("meshlib.access")

_MAX_PATH = 512


def _quote(value: str | None) -> str:
    if value is None:
        return "-"
    if len(value) > _MAX_PATH:
        value = value[:_MAX_PATH] + "..."
    return json.dumps(value)


class AccessLog:
    """The access-denied lines of one middleware, at most `rate` a second after a `burst`."""

    __slots__ = ("_bucket", "_lock", "_suppressed", "service")

    def __init__(self, service: str, clock: Clock, *, rate: float = 10.0, burst: int = 50) -> None:
        self.service = service
        self._bucket = TokenBucket(rate, burst, clock)
        self._lock = threading.Lock()
        self._suppressed = 0

    def denied(
        self,
        info: RequestInfo,
        status: int,
        rule: str,
        identity: str | None,
        *,
        shadow: bool = False,
        reason: str | None = None,
    ) -> None:
        """Log one refusal (or, `shadow`, one that would have been), unless over the rate."""
        if not logger.isEnabledFor(logging.INFO if shadow else logging.WARNING):
            return
        if self._bucket.try_acquire() > 0.0:
            with self._lock:
                self._suppressed += 1
            return
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        client = f"{info.client[0]}:{info.client[1]}" if info.client else "-"
        line = (
            f"service={self.service} status={status} caller={_quote(identity)} "
            f"method={_quote(info.method) if not info.method.isalpha() else info.method} "
            f"path={_quote(info.path)} rule={rule}"
        )
        if reason is not None:
            line += f" reason={reason}"
        line += f" client={client}"
        if shadow:
            line += " shadow=true"
        if suppressed:
            line += f" suppressed={suppressed}"
        logger.log(logging.INFO if shadow else logging.WARNING, "access denied: %s", line)
