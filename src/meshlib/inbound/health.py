"""Liveness and readiness answers, given by the middleware without reaching the app.

`/healthz` (`MeshSettings.health_path`) answers 200 while the process
serves at all; `/readyz` (`MeshSettings.ready_path`) answers 200 only when
a policy is loaded and the service is not draining, so a load balancer
stops sending traffic before shutdown:

```python
health = HealthPaths("/healthz", "/readyz")
health.answer("/readyz", ready=False).status   # 503
health.answer("/v1/orders", ready=True)        # None: not a health path
```
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HealthPaths", "MeshResponse"]


@dataclass(frozen=True, slots=True)
class MeshResponse:
    """A response the middleware sends itself: status, headers (lower-case names) and body.

    `MeshResponse.text(403, "Forbidden", "forbidden").status == 403`
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def text(cls, status: int, reason: str, body: str, *extra: tuple[str, str]) -> MeshResponse:
        """A small `text/plain` response."""
        data = body.encode()
        headers = (
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(data))),
            ("cache-control", "no-store"),
            *extra,
        )
        return cls(status, reason, headers, data)

    def with_header(self, name: str, value: str) -> MeshResponse:
        """A copy with one more header."""
        return MeshResponse(self.status, self.reason, (*self.headers, (name, value)), self.body)


_LIVE = MeshResponse.text(200, "OK", "ok\n")
_READY = MeshResponse.text(200, "OK", "ready\n")
_NOT_READY = MeshResponse.text(503, "Service Unavailable", "not ready\n", ("retry-after", "1"))


class HealthPaths:
    """The two health paths and their answers."""

    __slots__ = ("live", "ready")

    def __init__(self, live: str, ready: str) -> None:
        self.live = live
        self.ready = ready

    def answer(self, path: str, *, ready: bool) -> MeshResponse | None:
        """The answer for `path`, or `None` when it is not a health path."""
        if path == self.live:
            return _LIVE
        if path == self.ready:
            return _READY if ready else _NOT_READY
        return None
