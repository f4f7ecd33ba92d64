"""aiohttp's failures as the httpx exceptions httpcore raises for the same thing.

User code catches `httpx.ConnectError`, `httpx.ReadTimeout`, ...; meshlib's
retry rules classify them (connect failure, timeout, reset). So
[`AiohttpTransport`][meshlib.outbound.aiohttp_transport.AiohttpTransport]
maps every aiohttp error onto the most specific of them:

```python
raise map_error(exc, request, writing=False) from exc
```
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

__all__ = ["map_error"]


def _cause(exc: BaseException) -> str:
    """The most telling message of an aiohttp error (the OS or TLS error under it, if any)."""
    inner = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None)
    return str(inner or exc) or type(exc).__name__


def _reset(exc: aiohttp.ClientPayloadError) -> bool:
    """Whether a body was cut short by a connection reset (httpcore's ReadError), not a FIN.

    aiohttp keeps the connection error only in the message ("... . ConnectionResetError(104, ...)").
    """
    return isinstance(exc.__cause__, OSError) or "ConnectionResetError(" in str(exc)


def map_error(exc: Exception, request: httpx.Request, *, writing: bool) -> Exception:
    """The httpx exception that says what an aiohttp failure means, as httpcore would say it."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    inner = getattr(exc, "os_error", None)
    if isinstance(inner, httpx.HTTPError):  # PeerIdentityError from the TLS handshake
        return inner
    message = _cause(exc)
    kind: type[httpx.HTTPError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        kind = httpx.WriteTimeout if writing else httpx.ReadTimeout
    elif isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        kind = httpx.ProxyError
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ClientPayloadError) and _reset(exc):
        kind = httpx.ReadError  # the body was cut by a reset, not by a short message
    elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # a response aiohttp's parser could not read
    elif isinstance(exc, (aiohttp.ClientOSError, OSError)):
        kind = httpx.WriteError if writing else httpx.ReadError
    elif isinstance(exc, ValueError):
        kind = httpx.LocalProtocolError  # aiohttp refused a header or body we gave it
    else:
        return exc
    return kind(message, request=request)
