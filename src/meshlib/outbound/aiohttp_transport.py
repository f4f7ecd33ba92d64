"""An httpx transport backed by aiohttp: the same httpx API, a faster connection pool under asyncio.

httpcore's async pool re-scans every queued request against every
connection on each event, so under tens of concurrent requests an
``httpx.AsyncClient`` is CPU-bound in the pool (DESIGN.md, "facts
measured"). aiohttp's connector is not. This transport keeps everything
above the pool (httpx requests and responses, meshlib's flow) and swaps the
pool, for the endpoints of an :class:`~meshlib.AsyncMeshClient`::

    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    client = AsyncMeshClient(policy, endpoint_transport=AiohttpTransport)

It honours the httpx ``timeout`` extension (connect, read, pool) and maps
aiohttp's errors to the httpx exceptions meshlib's retry rules classify.
It does not emit httpx ``trace`` events (the latency split then uses each
attempt's wall time) and speaks HTTP/1.1 only. Needs ``pip install aiohttp``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["AiohttpTransport"]


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "AiohttpTransport needs aiohttp: run `pip install aiohttp`, or leave "
            "endpoint_transport unset to use httpx's own pool"
        ) from None
    return aiohttp


def _ssl_for(verify: ssl.SSLContext | str | bool, cert: Any) -> ssl.SSLContext | bool:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        return False
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if cert is not None:
        if isinstance(cert, str):
            context.load_cert_chain(cert)
        else:
            context.load_cert_chain(*cert)
    return context


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that sends requests with one ``aiohttp.ClientSession``.

    Takes the keyword arguments of ``httpx.AsyncHTTPTransport`` that make
    sense for it (``verify``, ``cert``, ``limits``); others are accepted and
    ignored so it can stand in for it. ``trust_env`` is ignored too: with it,
    aiohttp looks up ``~/.netrc`` in an executor thread and the proxy
    variables in another for every request (about half of its CPU per
    request), and proxies and netrc credentials make no sense for mesh
    endpoints. The session is made on first use, inside the running event loop.

    Example::

        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await client.get("http://127.0.0.1:8000/")
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        **_ignored: Any,
    ) -> None:
        self._aiohttp = _import_aiohttp()
        self._ssl = _ssl_for(verify, cert)
        self._limits = limits
        self._session: Any = None
        self._active = 0  # requests and open bodies: the pool may close only when 0

    def is_idle(self) -> bool:
        """Whether no request or response body is using the session (so closing it is safe)."""
        return self._active == 0

    def _make_session(self) -> Any:
        aiohttp = self._aiohttp
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 15.0,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            trust_env=False,  # see the class docstring: never per-request netrc/proxy look-ups
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through aiohttp; the response body streams from the connection."""
        aiohttp = self._aiohttp
        session = self._session or self._make_session()
        timeout = request.extensions.get("timeout") or {}
        client_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeout.get("pool"),
            sock_connect=timeout.get("connect"),
            sock_read=timeout.get("read"),
        )
        if isinstance(request.stream, httpx.ByteStream):
            data: Any = await request.aread() or None
        else:
            data = request.stream
        # aiohttp frames the body itself: it refuses a Transfer-Encoding it did not set.
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() != b"transfer-encoding"
        ]
        self._active += 1
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
            )
        except BaseException as exc:
            self._active -= 1
            if isinstance(exc, Exception):
                raise _map(aiohttp, exc, request) from exc
            raise
        return httpx.Response(
            response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=_Body(aiohttp, response, request, self),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream, errors mapped to httpx's."""

    def __init__(
        self, aiohttp: Any, response: Any, request: httpx.Request, owner: AiohttpTransport
    ) -> None:
        self._aiohttp = aiohttp
        self._response = response
        self._request = request
        self._owner: AiohttpTransport | None = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise _map(self._aiohttp, exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._active -= 1


def _map(aiohttp: Any, exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception that says what an aiohttp failure means for retries."""
    if isinstance(exc, httpx.HTTPError):  # e.g. PeerIdentityError from the TLS handshake
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientConnectionError, OSError)):
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    return exc
