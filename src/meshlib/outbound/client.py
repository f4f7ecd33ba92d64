"""MeshClient and AsyncMeshClient: httpx clients with the mesh transport installed.

They are `httpx.Client` / `httpx.AsyncClient` with every argument and
method of those (base_url, headers, auth, hooks, streaming, `with`
blocks); only the transport differs. Built from a [`Policy`][meshlib.Policy],
a policy file path, a [`PolicyStore`][meshlib.PolicyStore], or nothing (the
process-wide store from `MESH_POLICY_FILE` / the control plane):

```python
with MeshClient("mesh.yaml", service_name="orders") as client:
    client.get("http://payments/v1/charges")      # routed, retried, traced
```

`transport=` wraps an existing transport for URLs that are not mesh
services, so adopting meshlib is one line. Timeouts come from the policy; a
`timeout=` given here can only shorten them. TLS settings given here
(`verify`, `cert`) apply to non-mesh URLs and to mesh endpoints whose
policy has `tls: {mode: disabled}`. A `proxy=` given here carries the calls
to non-mesh URLs only: mesh endpoints are always dialled directly, and the
proxy environment variables are not read (as in httpx whenever a client is
given a transport). `mounts=` likewise route only the URLs the mesh does
not: a call to a mesh service always goes through the mesh, whatever
pattern matches it (`meshlib.outbound.mounts`). Their cookie jar is httpx's, minus the
no-op pass httpx makes over every response without `Set-Cookie`
(`meshlib.outbound.cookies`).

The async client's endpoints use
[`AiohttpTransport`][meshlib.outbound.aiohttp_transport.AiohttpTransport]
(aiohttp's pool) by default, and httpcore's (`httpx.AsyncHTTPTransport`) with
`http2=True` or when asked for with `endpoint_transport=`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import metrics, trace

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.outbound.cookies import MeshCookiesMixin
from meshlib.outbound.mounts import Mounts
from meshlib.outbound.transport import AsyncMeshTransport, MeshTransport, PolicyArg
from meshlib.settings import MeshSettings

if TYPE_CHECKING:
    import ssl

    from httpx._types import (
        AuthTypes,
        CertTypes,
        CookieTypes,
        HeaderTypes,
        ProxyTypes,
        QueryParamTypes,
        TimeoutTypes,
    )

__all__ = ["AsyncMeshClient", "MeshClient"]

EventHook = Callable[..., Any]


def _base_transport(
    transport: Any,
    proxy: ProxyTypes | None,
    mounts: Mapping[str, Any] | None,
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
) -> Any:
    """The transport for non-mesh URLs: the user's, or a pool through `proxy`, behind `mounts`.

    httpx would consult the proxy and the mounts for every URL, mesh services
    included, and so bypass the mesh; here they only carry what the mesh does
    not route.
    """
    base = transport
    if proxy is not None:
        if transport is not None:
            raise ValueError(
                "give either transport= or proxy=, not both: configure the proxy on your transport"
            )
        base = factory(proxy=proxy, **kwargs)
    if mounts:
        base = Mounts(base if base is not None else factory(**kwargs), mounts)
    return base


def _async_endpoint_factory(
    endpoint_transport: Callable[..., httpx.AsyncBaseTransport] | None, http2: bool
) -> Callable[..., httpx.AsyncBaseTransport]:
    """The pool class of an async client: the one asked for, httpcore for HTTP/2, else aiohttp."""
    if endpoint_transport is not None:
        return endpoint_transport
    if http2:
        return httpx.AsyncHTTPTransport
    from meshlib.outbound.aiohttp_transport import AiohttpTransport

    return AiohttpTransport


def _pool_kwargs(
    verify: Any, cert: Any, trust_env: bool, http1: bool, http2: bool, limits: httpx.Limits
) -> dict[str, Any]:
    return {
        "verify": verify,
        "cert": cert,
        "trust_env": trust_env,
        "http1": http1,
        "http2": http2,
        "limits": limits,
    }


class MeshClient(MeshCookiesMixin, httpx.Client):
    """An `httpx.Client` whose calls go through the mesh (routing, retries, breakers, tracing).

    Example:
        ```python
        client = MeshClient(load_policy("mesh.yaml"), service_name="orders")
        response = client.post("http://payments/v1/charges", json={"amount": 5})
        response.extensions["meshlib.attempts"]      # every try, with outcomes
        client.close()
        ```
    """

    def __init__(
        self,
        policy: PolicyArg = None,
        *,
        service_name: str | None = None,
        transport: httpx.BaseTransport | None = None,
        settings: MeshSettings | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Clock = SYSTEM_CLOCK,
        auth: AuthTypes | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        proxy: ProxyTypes | None = None,
        mounts: Mapping[str, httpx.BaseTransport | None] | None = None,
        timeout: TimeoutTypes = None,
        follow_redirects: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        max_redirects: int = 20,
        event_hooks: Mapping[str, list[EventHook]] | None = None,
        base_url: httpx.URL | str = "",
        default_encoding: str | Callable[[bytes], str] = "utf-8",
    ) -> None:
        pool_kwargs = _pool_kwargs(verify, cert, trust_env, http1, http2, limits)
        self.mesh_transport = MeshTransport(
            policy,
            service_name=service_name,
            transport=_base_transport(transport, proxy, mounts, httpx.HTTPTransport, pool_kwargs),
            settings=settings,
            clock=clock,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            **pool_kwargs,
        )
        super().__init__(
            auth=auth,
            params=params,
            headers=headers,
            cookies=cookies,
            trust_env=trust_env,
            timeout=timeout,
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            event_hooks=event_hooks,
            base_url=base_url,
            transport=self.mesh_transport,
            default_encoding=default_encoding,
        )
        self.cookies = self._cookies  # httpx's jar, as MeshCookies (see meshlib.outbound.cookies)


class AsyncMeshClient(MeshCookiesMixin, httpx.AsyncClient):
    """An `httpx.AsyncClient` whose calls go through the mesh; the twin of [`MeshClient`][meshlib.outbound.client.MeshClient].

    Its connection pools are aiohttp's by default
    ([`AiohttpTransport`][meshlib.outbound.aiohttp_transport.AiohttpTransport]):
    at 32 in flight they move several times the requests per second of
    httpcore's pool at a fraction of the CPU per request (see the benchmarks
    page). `http2=True` picks httpcore's pool (`httpx.AsyncHTTPTransport`),
    which speaks HTTP/2; `endpoint_transport=` picks any other (a class or
    factory taking `httpx.AsyncHTTPTransport`'s keyword arguments), for
    example `httpx.AsyncHTTPTransport` for SOCKS proxies, `uds=` or httpx's
    full set of `trace` events.

    Example:
        ```python
        async with AsyncMeshClient(policy, service_name="orders") as client:
            response = await client.get("http://payments/v1/charges")
        ```
    """

    def __init__(
        self,
        policy: PolicyArg = None,
        *,
        service_name: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        settings: MeshSettings | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Clock = SYSTEM_CLOCK,
        endpoint_transport: Callable[..., httpx.AsyncBaseTransport] | None = None,
        auth: AuthTypes | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        proxy: ProxyTypes | None = None,
        mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = None,
        timeout: TimeoutTypes = None,
        follow_redirects: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        max_redirects: int = 20,
        event_hooks: Mapping[str, list[EventHook]] | None = None,
        base_url: httpx.URL | str = "",
        default_encoding: str | Callable[[bytes], str] = "utf-8",
    ) -> None:
        pool_kwargs = _pool_kwargs(verify, cert, trust_env, http1, http2, limits)
        factory = _async_endpoint_factory(endpoint_transport, http2)
        self.mesh_transport = AsyncMeshTransport(
            policy,
            service_name=service_name,
            transport=_base_transport(transport, proxy, mounts, factory, pool_kwargs),
            settings=settings,
            clock=clock,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            endpoint_transport=factory,
            **pool_kwargs,
        )
        super().__init__(
            auth=auth,
            params=params,
            headers=headers,
            cookies=cookies,
            trust_env=trust_env,
            timeout=timeout,
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            event_hooks=event_hooks,
            base_url=base_url,
            transport=self.mesh_transport,
            default_encoding=default_encoding,
        )
        self.cookies = self._cookies  # httpx's jar, as MeshCookies (see meshlib.outbound.cookies)
