"""The clients under test, each opened the same way: `open_sync(kind, target)` / `open_async`.

Kinds:

- `httpx`: a bare `httpx.Client` / `httpx.AsyncClient`;
- `aiohttp`: an `aiohttp.ClientSession` (async only, for reference);
- `naive`: httpx wrapped the way a user would write it by hand: a tenacity
  `@retry` around a pybreaker `@breaker` around `client.get`, with
  OpenTelemetry's httpx instrumentation on the client;
- `mesh`: `meshlib.MeshClient` / `meshlib.AsyncMeshClient` with the
  default policy, imported lazily so the rest runs before it exists;
- `httpx-aiotr` (async only): `httpx.AsyncClient` over meshlib's
  `AiohttpTransport`, the transport `AsyncMeshClient` drives by default
  (so `mesh` minus this is meshlib's own cost);
- `httpx-aiohttp` (async only): `httpx.AsyncClient` over the
  `httpx-aiohttp` package's transport, the reference the issue names;
- `mesh-httpcore` (async only): `AsyncMeshClient` over httpcore's pool;
- `mesh-nosdk` (async only): `AsyncMeshClient` given OpenTelemetry's no-op
  providers, so the difference to `mesh` is what the SDK's telemetry costs;
  `mesh-traces` / `mesh-metrics`: only the no-op meter / tracer provider,
  so the SDK's traces alone or metrics alone.

Each returns a `Opened` whose `call()` makes one GET and returns the
status code:

```python
opened = open_sync("httpx", Target(url="http://127.0.0.1:8080/"))
try:
    assert opened.call() == 200
finally:
    opened.close()
```
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.certs import Pki

__all__ = [
    "MESH_TRUST_DOMAIN",
    "AsyncOpened",
    "Opened",
    "Target",
    "mesh_unavailable",
    "open_async",
    "open_sync",
]

MESH_TRUST_DOMAIN = "bench.local"
_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    """Where a client sends its GETs.

    `url` is what non-mesh clients call; `mesh_service` and `mesh_endpoint`
    describe the same upstream as a service in the mesh policy (the mesh client
    calls `http://<mesh_service>/`); `pki` makes the call mutual TLS.
    """

    url: str
    mesh_service: str = "upstream"
    mesh_endpoint: str | None = None
    pki: Pki | None = None


@dataclass
class Opened:
    """An open sync client: `call()` makes one request, `close()` releases it."""

    call: Callable[[], int]
    close: Callable[[], None]


@dataclass
class AsyncOpened:
    """An open async client: `await call()` makes one request, `await close()` releases it."""

    call: Callable[[], Awaitable[int]]
    close: Callable[[], Awaitable[None]]


def mesh_unavailable() -> str | None:
    """Why the mesh paths cannot run yet, or None when `meshlib.MeshClient` imports."""
    try:
        for name in ("MeshClient", "AsyncMeshClient"):
            _mesh_class(name)
    except (ImportError, AttributeError) as exc:
        return f"meshlib.MeshClient not importable yet ({exc})"
    return None


def _client_ssl(pki: Pki | None) -> ssl.SSLContext | bool:
    if pki is None:
        return True
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def _mesh_class(name: str) -> Any:
    import meshlib

    if hasattr(meshlib, name):
        return getattr(meshlib, name)
    from meshlib.outbound import client  # until meshlib/__init__.py re-exports it

    return getattr(client, name)


def mesh_policy(target: Target) -> Any:
    """The policy the mesh clients run with: defaults everywhere, one service for `target`."""
    from meshlib import load_policy

    service: dict[str, Any] = {"endpoints": [target.mesh_endpoint or target.url.rstrip("/")]}
    if target.pki is not None:
        service["identity"] = target.pki.server_id
        service["tls"] = {
            "mode": "mutual",
            "ca": str(target.pki.ca),
            "cert": str(target.pki.client_cert),
            "key": str(target.pki.client_key),
        }
    return load_policy(
        {
            "version": 1,
            "trust_domain": MESH_TRUST_DOMAIN,
            "services": {target.mesh_service: service},
        }
    )


def _mesh_url(target: Target) -> str:
    return f"http://{target.mesh_service}/"


def _naive_guards() -> tuple[Any, Any]:
    import pybreaker
    import tenacity

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    retry = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(initial=0.025, max=1.0),
        retry=tenacity.retry_if_exception_type(httpx.TransportError),
        reraise=True,
    )
    return breaker, retry


def _instrument(client: httpx.Client | httpx.AsyncClient) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    # Per client, not instrument(): the global patch would also slow every other path.
    HTTPXClientInstrumentor.instrument_client(client)


def open_sync(kind: str, target: Target) -> Opened:
    """Open a sync client of `kind` (httpx, naive, mesh) aimed at `target`."""
    if kind == "httpx":
        client = httpx.Client(verify=_client_ssl(target.pki), timeout=_TIMEOUT)
        url = target.url
        return Opened(lambda: client.get(url).status_code, client.close)
    if kind == "naive":
        client = httpx.Client(verify=_client_ssl(target.pki), timeout=_TIMEOUT)
        _instrument(client)
        breaker, retry = _naive_guards()
        url = target.url

        def get() -> int:
            return client.get(url).status_code

        # What a user writes as @retry @breaker def get(): ... (decorators applied by hand for mypy).
        guarded: Callable[[], int] = retry(breaker(get))
        return Opened(guarded, client.close)
    if kind in ("mesh", "mesh-stock-cookies"):
        mesh = _mesh_class("MeshClient")(mesh_policy(target), service_name="bench-client")
        if kind == "mesh-stock-cookies":
            # httpx's own jar: meshlib's cost alone, without MeshCookies' saving.
            mesh._cookies = httpx.Cookies(mesh.cookies)
        url = _mesh_url(target)
        return Opened(lambda: int(mesh.get(url).status_code), mesh.close)
    raise ValueError(f"unknown sync client kind {kind!r}")


def _aiohttp_transport() -> Any:
    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    return AiohttpTransport


async def open_async(kind: str, target: Target) -> AsyncOpened:
    """Open an async client of `kind` (see the module docstring) aimed at `target`."""
    if kind == "httpx-aiotr":
        transport = _aiohttp_transport()(verify=_client_ssl(target.pki))
        tclient = httpx.AsyncClient(transport=transport, timeout=_TIMEOUT)
        turl = target.url

        async def tget() -> int:
            return (await tclient.get(turl)).status_code

        return AsyncOpened(tget, tclient.aclose)
    if kind == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport as ReferenceTransport

        rclient = httpx.AsyncClient(
            transport=ReferenceTransport(verify=_client_ssl(target.pki)), timeout=_TIMEOUT
        )
        rurl = target.url

        async def rget() -> int:
            return (await rclient.get(rurl)).status_code

        return AsyncOpened(rget, rclient.aclose)
    if kind in ("mesh-nosdk", "mesh-traces", "mesh-metrics"):
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        providers: dict[str, Any] = {}
        if kind != "mesh-metrics":
            providers["meter_provider"] = NoOpMeterProvider()
        if kind != "mesh-traces":
            providers["tracer_provider"] = NoOpTracerProvider()
        nmesh = _mesh_class("AsyncMeshClient")(
            mesh_policy(target), service_name="bench-client", **providers
        )
        nurl = _mesh_url(target)

        async def nmesh_get() -> int:
            return int((await nmesh.get(nurl)).status_code)

        return AsyncOpened(nmesh_get, nmesh.aclose)
    if kind == "mesh-httpcore":
        hmesh = _mesh_class("AsyncMeshClient")(
            mesh_policy(target),
            service_name="bench-client",
            endpoint_transport=httpx.AsyncHTTPTransport,
        )
        hurl = _mesh_url(target)

        async def hmesh_get() -> int:
            return int((await hmesh.get(hurl)).status_code)

        return AsyncOpened(hmesh_get, hmesh.aclose)
    if kind in ("httpx", "naive"):
        client = httpx.AsyncClient(verify=_client_ssl(target.pki), timeout=_TIMEOUT)
        url = target.url
        if kind == "httpx":

            async def plain() -> int:
                return (await client.get(url)).status_code

            return AsyncOpened(plain, client.aclose)
        _instrument(client)
        breaker, retry = _naive_guards()

        async def aget() -> int:
            # pybreaker's own async path needs Tornado; under asyncio users reach for calling().
            with breaker.calling():
                return (await client.get(url)).status_code

        aguarded: Callable[[], Awaitable[int]] = retry(aget)
        return AsyncOpened(aguarded, client.aclose)
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ssl=_client_ssl(target.pki)),
            timeout=aiohttp.ClientTimeout(total=_TIMEOUT),
        )
        url = target.url

        async def fetch() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        return AsyncOpened(fetch, session.close)
    if kind == "mesh":
        amesh = _mesh_class("AsyncMeshClient")(mesh_policy(target), service_name="bench-client")
        url = _mesh_url(target)

        async def mesh_get() -> int:
            return int((await amesh.get(url)).status_code)

        return AsyncOpened(mesh_get, amesh.aclose)
    raise ValueError(f"unknown async client kind {kind!r}")
