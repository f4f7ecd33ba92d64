"""An httpx transport backed by aiohttp: the same httpx API over asyncio's fastest HTTP/1.1 pool.

httpcore's async pool re-scans every queued request against every
connection on each event, so under tens of concurrent requests an
`httpx.AsyncClient` is CPU-bound in its pool (see the benchmarks page).
aiohttp's connector is not. [`AiohttpTransport`][meshlib.outbound.aiohttp_transport.AiohttpTransport]
keeps everything above the pool (httpx requests and responses, meshlib's
flow) and swaps the pool. It is the default endpoint transport of
[`AsyncMeshClient`][meshlib.AsyncMeshClient]; `http2=True` picks httpcore's
pool instead. Used on its own:

```python
async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
    await client.get("http://127.0.0.1:8000/")
```

What it keeps of `httpx.AsyncHTTPTransport`'s contract:

- **Timeouts** from the request's `timeout` extension, as httpx documents
  them: `connect` (name resolution, TCP and TLS handshake), `read` (each wait
  for data from the server), `write` (each write of a streamed request body),
  `pool` (the wait for a free connection). aiohttp's read timer also runs
  while the request body is sent, so a read timeout that fires before the body
  is fully written is reported as `httpx.WriteTimeout`: the stall was in writing.
- **Errors** mapped onto httpx's exception tree (`ConnectError`,
  `ConnectTimeout`, `ReadTimeout`, `WriteTimeout`, `PoolTimeout`,
  `RemoteProtocolError`, `ReadError`, `WriteError`, `ProxyError`,
  `UnsupportedProtocol`), so user code and meshlib's retry rules read them as
  they read httpcore's.
- **Limits**: `max_connections` bounds requests in flight (each holds one
  connection until its body is closed; waiting is bounded by the `pool`
  timeout), `max_keepalive_connections` bounds idle connections kept,
  `keepalive_expiry` closes idle ones.
- **TLS**: `verify` and `cert` go through `httpx.create_ssl_context`, so
  certifi, `SSL_CERT_FILE` (with `trust_env`) and `verify=False` behave as in
  httpx. meshlib's rotating, identity-checking contexts
  ([`meshlib.security.tls`][meshlib.security.tls]) work unchanged: asyncio
  makes every connection with `wrap_bio`, where the SPIFFE identity check runs.
- **Proxies**: an `http://` or `https://` forward proxy (`proxy=`), with
  credentials from its URL or `httpx.Proxy(auth=...)`. SOCKS proxies, `uds`
  and `socket_options` are refused with a message naming the alternative.
- **`trace` extension**: a request that carries one gets httpx's event names
  for what aiohttp reports (`connection.connect_tcp.started/complete`,
  `http11.send_request_headers.started/complete`,
  `http11.receive_response_headers.complete`), through a second session on the
  same pool, so requests without the extension pay nothing for it. meshlib's
  latency split uses them for sampled calls.

HTTP/1.1 only. aiohttp's own cookie jar, `~/.netrc` and environment proxy
look-ups are off: httpx's client does cookies and proxies itself.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from yarl import URL

from meshlib.outbound.aiohttp_bodies import STREAMED_UPLOAD, ResponseBody, Upload, chunks, uncancel
from meshlib.outbound.aiohttp_errors import map_error

if TYPE_CHECKING:
    from httpx._types import CertTypes, ProxyTypes

__all__ = ["AiohttpTransport"]

_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_HOP_BY_HOP = (b"transfer-encoding",)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, keeping at most `max_idle` idle connections (httpx's keep-alive limit).

    A connection dropped with unsent bytes (a request body the server stopped
    reading) is aborted: a graceful close would wait forever for the peer to
    read them, and leave the socket open.
    """

    max_idle: int | None = None

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        max_idle = self.max_idle
        if (
            not should_close
            and max_idle is not None
            and sum(map(len, self._conns.values())) >= max_idle
        ):
            should_close = True
        if should_close or protocol.should_close:
            transport = protocol.transport
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()
        super()._release(key, protocol, should_close=should_close)


def _event(name: str) -> Any:
    async def send(session: Any, context: Any, params: Any) -> None:
        hook = context.trace_request_ctx
        if hook is not None:
            await hook(name, {})

    return send


def _trace_config() -> aiohttp.TraceConfig:
    """The request signals of aiohttp, re-emitted under httpx's `trace` event names."""
    config = aiohttp.TraceConfig()
    config.on_connection_create_start.append(_event("connection.connect_tcp.started"))
    config.on_connection_create_end.append(_event("connection.connect_tcp.complete"))
    config.on_connection_create_end.append(_event("http11.send_request_headers.started"))
    config.on_connection_reuseconn.append(_event("http11.send_request_headers.started"))
    config.on_request_headers_sent.append(_event("http11.send_request_headers.complete"))
    config.on_request_end.append(_event("http11.receive_response_headers.complete"))
    return config


def _proxy_settings(proxy: ProxyTypes | None) -> tuple[URL | None, dict[str, str] | None]:
    """`(url, headers)` for aiohttp from an httpx proxy argument; refuses what aiohttp lacks."""
    if proxy is None:
        return None, None
    if not isinstance(proxy, httpx.Proxy):
        proxy = httpx.Proxy(proxy)
    if proxy.url.scheme not in ("http", "https"):
        raise ValueError(
            f"AiohttpTransport supports http:// and https:// proxies, not {proxy.url.scheme}://; "
            "for a SOCKS proxy use httpx's own transport (endpoint_transport=httpx.AsyncHTTPTransport)"
        )
    headers = dict(proxy.headers.items())
    if proxy.auth:
        headers["Proxy-Authorization"] = aiohttp.encode_basic_auth(*proxy.auth)
    return URL(str(proxy.url.copy_with(username=None, password=None))), headers or None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` that sends requests through one `aiohttp.ClientSession`.

    Takes `httpx.AsyncHTTPTransport`'s keyword arguments. `trust_env` only
    decides whether `SSL_CERT_FILE`/`SSL_CERT_DIR` are read (as in httpx):
    aiohttp's own per-request `~/.netrc` and proxy look-ups would cost about
    half of its CPU per request, and httpx's client resolves environment
    proxies itself. The session is made on first use, inside the running event
    loop, and belongs to that loop.

    Example:
        ```python
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=10))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://127.0.0.1:8000/")
        ```

    Raises:
        ValueError: an option aiohttp cannot honour (HTTP/2, a SOCKS proxy,
            `uds`, `socket_options`, connect `retries`).
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        proxy: ProxyTypes | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: Any = None,
    ) -> None:
        if http2 or not http1:
            raise ValueError(
                "AiohttpTransport speaks HTTP/1.1 only: for HTTP/2 use httpx.AsyncHTTPTransport "
                "(AsyncMeshClient(http2=True) picks it for you)"
            )
        for name, value in (("uds", uds), ("socket_options", socket_options)):
            if value is not None:
                raise ValueError(
                    f"AiohttpTransport does not support {name}=; use httpx.AsyncHTTPTransport"
                )
        if retries:
            raise ValueError(
                "AiohttpTransport does not retry connects itself (retries=); meshlib's retry "
                "policy retries connect failures, or use httpx.AsyncHTTPTransport(retries=...)"
            )
        if isinstance(verify, ssl.SSLContext):
            self._ssl: ssl.SSLContext = verify
            if cert is not None:  # what httpx does with a context and cert= together
                self._ssl.load_cert_chain(*((cert,) if isinstance(cert, str) else cert))
        else:
            self._ssl = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._limits = limits
        self._local = (local_address, 0) if local_address else None
        self._proxy, self._proxy_headers = _proxy_settings(proxy)
        self._slots = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None
        self._session: aiohttp.ClientSession | None = None
        self._traced: aiohttp.ClientSession | None = None
        self._closed = False
        self._active = 0  # requests and open bodies: the pool may close only when 0

    def is_idle(self) -> bool:
        """Whether no request or response body is using the pool (so closing it is safe)."""
        return self._active == 0

    def _make_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this AiohttpTransport is closed; make a new one")
        limits = self._limits
        connector = _Connector(
            limit=0,  # requests in flight are bounded by self._slots, with httpx's pool timeout
            limit_per_host=0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=self._ssl,
            local_addr=self._local,
            timeout_ceil_threshold=math.inf,  # aiohttp rounds timeouts > 5 s up to whole seconds
        )
        connector.max_idle = limits.max_keepalive_connections
        self._session = aiohttp.ClientSession(**self._session_kwargs(connector))
        return self._session

    def _session_kwargs(self, connector: aiohttp.BaseConnector) -> dict[str, Any]:
        return {
            "connector": connector,
            "auto_decompress": False,  # httpx decodes Content-Encoding itself
            "trust_env": False,  # see the class docstring: no per-request netrc/proxy look-ups
            "cookie_jar": aiohttp.DummyCookieJar(),  # httpx's client keeps the cookies
            "skip_auto_headers": ("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            "timeout": aiohttp.ClientTimeout(total=None),
        }

    def _traced_session(self) -> aiohttp.ClientSession:
        """A session on the same pool that reports `trace` events (made when first needed)."""
        if self._traced is None:
            main = self._session or self._make_session()
            kwargs = self._session_kwargs(main.connector)  # type: ignore[arg-type]
            self._traced = aiohttp.ClientSession(
                **kwargs, connector_owner=False, trace_configs=[_trace_config()]
            )
        return self._traced

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through aiohttp; the response body streams from the connection.

        Raises:
            httpx.TransportError: the subclass httpcore would raise for the same failure.
        """
        extensions = request.extensions
        hook = extensions.get("trace")
        if hook is None:
            session = self._session or self._make_session()
        else:
            session = self._traced_session()
        timeout = extensions.get("timeout") or {}
        client_timeout = _client_timeout(timeout.get("connect"), timeout.get("read"))
        upload: Upload | None = None
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):
            data: Any = request.content or None
            if data is not None and len(data) > STREAMED_UPLOAD:
                upload = data = Upload(chunks(data), timeout.get("write"))
        else:
            upload = data = Upload(stream, timeout.get("write"))  # type: ignore[arg-type]
        headers = _headers(request.headers)
        proxy_headers = self._proxy_headers
        if proxy_headers and request.url.scheme == "http":
            # aiohttp sends proxy headers only on CONNECT (https targets); plain http
            # requests to the proxy carry them themselves, as httpcore's do.
            headers.extend(proxy_headers.items())
        await self._acquire(request, timeout.get("pool"))
        self._active += 1
        try:
            if upload is not None:
                upload.watch(asyncio.current_task())
            response = await session.request(
                request.method,
                str(request.url),  # aiohttp's own parse is cached per URL string
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
                proxy=self._proxy,
                proxy_headers=proxy_headers,
                trace_request_ctx=hook,
                server_hostname=extensions.get("sni_hostname"),
            )
        except BaseException as exc:
            self._release()
            if upload is not None:
                upload.unwatch()
                if isinstance(exc, asyncio.CancelledError) and upload.expired:
                    uncancel()
                    raise httpx.WriteTimeout("timed out writing the request body") from None
            if isinstance(exc, Exception):
                raise map_error(
                    exc, request, writing=upload is not None and not upload.done
                ) from exc
            raise
        if upload is not None:
            upload.unwatch()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=ResponseBody(response, request, self._release),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def _acquire(self, request: httpx.Request, timeout: float | None) -> None:
        """Take a connection slot, waiting at most `timeout` (httpx's pool timeout)."""
        slots = self._slots
        if slots is None:
            return
        if not slots.locked():
            await slots.acquire()
            return
        try:
            await asyncio.wait_for(slots.acquire(), timeout)
        except asyncio.TimeoutError:
            raise httpx.PoolTimeout(
                f"no free connection within the pool timeout ({timeout} s; "
                f"max_connections={self._limits.max_connections})",
                request=request,
            ) from None

    def _release(self) -> None:
        self._active -= 1
        if self._slots is not None:
            self._slots.release()

    async def aclose(self) -> None:
        """Close the sessions and every pooled connection; later requests raise RuntimeError."""
        self._closed = True
        traced, self._traced = self._traced, None
        if traced is not None:
            await traced.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


_TIMEOUTS: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}


def _client_timeout(connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """The aiohttp timeout for httpx's `connect` and `read`, made once per pair (the pool's is ours).

    `connect` bounds name resolution too (aiohttp's `connect`), and the TCP
    and TLS handshakes (`sock_connect`).
    """
    key = (connect, read)
    made = _TIMEOUTS.get(key)
    if made is None:
        if len(_TIMEOUTS) >= 1024:  # deadline-capped timeouts vary per call: do not grow forever
            _TIMEOUTS.clear()
        made = _TIMEOUTS[key] = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=read
        )
    return made


def _headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The request headers as aiohttp takes them, without the framing aiohttp does itself.

    aiohttp refuses a Transfer-Encoding it did not set. httpx keeps
    `(raw name, lower-case name, value)` triples; reading them directly skips
    building `Headers.raw` for every request.
    """
    triples = getattr(headers, "_list", None)
    if triples is None:  # pragma: no cover - a future httpx with another layout
        triples = [(k, k.lower(), v) for k, v in headers.raw]
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, lower, value in triples
        if lower not in _HOP_BY_HOP
    ]
