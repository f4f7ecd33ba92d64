"""The soak's upstream: a small ASGI app answering 503 to one request in twenty, in its own process.

`uvicorn benchmarks.soak_upstream:app` (started by `benchmarks/soak.py`).
The failures are spread evenly (every 20th request per process), so every run
of the soak sees the same 5% whatever its length.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["FAIL_EVERY", "app"]

FAIL_EVERY = 20
"""One request in this many is answered 503 (5%)."""

_count = itertools.count(1)
_BODY = (
    b'{"order": "7", "status": "confirmed", "items": [' + b'{"sku": "SKU-00001"},' * 20 + b"{}]}"
)
_OK = [(b"content-type", b"application/json"), (b"server-timing", b"app;dur=0.2")]
_FAILED = [(b"content-type", b"text/plain"), (b"retry-after", b"0")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 with a JSON document of about 450 bytes, or 503 for every FAIL_EVERY-th request."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    failed = next(_count) % FAIL_EVERY == 0
    await send(
        {
            "type": "http.response.start",
            "status": 503 if failed else 200,
            "headers": _FAILED if failed else _OK,
        }
    )
    await send({"type": "http.response.body", "body": b"unavailable" if failed else _BODY})
