"""`x-request-id`: one id per request, accepted from the caller or made up, passed on to every call.

As Envoy does: an inbound request keeps the caller's `x-request-id` (when it
is a sane token) or gets a new UUID4; the app sees it in its request
headers, and every outbound call made while serving the request carries it
(retries included). A call made outside any request gets a new id of its own.

Example:
    ```python
    with request_id_scope("7f3c..."):
        client.get("http://payments/v1/charges")   # sends x-request-id: 7f3c...
    ```
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpx

__all__ = [
    "REQUEST_ID_HEADER",
    "accept_request_id",
    "current_request_id",
    "new_request_id",
    "request_id_scope",
    "stamp_request_id",
]

REQUEST_ID_HEADER = "x-request-id"
"""The header name (as Envoy, nginx and most frameworks spell it)."""

current_request_id: ContextVar[str | None] = ContextVar("meshlib_request_id", default=None)
"""The id of the request being served, set by the inbound middleware around the app."""

_MAX_LENGTH = 200
_HEADER = REQUEST_ID_HEADER.encode()
# UUID4: version nibble 4 (bits 76-79) and variant 10 (bits 62-63).
_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_VERSION_4 = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    """A random UUID4 in its usual text form, as Envoy generates (without `uuid`'s `os.urandom` call).

    Example:
        ```python
        new_request_id()   # '0f8fad5b-d9cb-469f-a165-70867728950e'
        ```
    """
    h = f"{random.getrandbits(128) & _KEEP | _VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def stamp_request_id(headers: httpx.Headers) -> None:
    """Add `x-request-id` to an outbound request that has none: the current request's, or a new one.

    Example:
        ```python
        stamp_request_id(request.headers)
        ```
    """
    items = getattr(headers, "_list", None)
    if items is None:  # pragma: no cover - a future httpx without its header list
        if REQUEST_ID_HEADER not in headers:
            headers[REQUEST_ID_HEADER] = current_request_id.get() or new_request_id()
        return
    # httpx keeps (raw name, lower-case name, value) triples: scanning them is a third of `in`.
    for item in items:
        if item[1] == _HEADER:
            return
    value = current_request_id.get() or new_request_id()
    items.append((_HEADER, _HEADER, value.encode("ascii")))


def accept_request_id(value: str | None) -> tuple[str, bool]:
    """`(id, made)`: the caller's id when it is 1-200 visible ASCII characters, else a new one (`made`).

    Example:
        ```python
        accept_request_id("abc")      # ("abc", False)
        accept_request_id("bad id")   # (<new uuid>, True)
        ```
    """
    if (
        value
        and len(value) <= _MAX_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        return value, False
    return new_request_id(), True


@contextmanager
def request_id_scope(request_id: str | None) -> Iterator[str | None]:
    """Bind `request_id` as the current one for the block (outbound calls send it).

    Example:
        ```python
        with request_id_scope("batch-42"):
            client.get("http://payments/v1/charges")
        ```
    """
    token = current_request_id.set(request_id)
    try:
        yield request_id
    finally:
        current_request_id.reset(token)
