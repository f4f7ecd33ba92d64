"""MeshTransport and AsyncMeshTransport: thin drivers of the outbound flow.

Both run `meshlib.outbound.flow.Outbound.flow` and differ only in
`await` and in which sleep they call, as httpx's `sync_auth_flow` and
`async_auth_flow` do. They wrap one httpx transport per endpoint (and a
base transport for URLs that are not mesh services) and pass `close()` on
to all of them:

```python
transport = MeshTransport(policy, service_name="orders")
client = httpx.Client(transport=transport)    # what MeshClient does for you
```
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from opentelemetry import metrics, trace

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.discovery.binding import DiscoveredEndpoints
from meshlib.outbound import stats
from meshlib.outbound.endpoints import Pools
from meshlib.outbound.flow import Outbound
from meshlib.outbound.routing import Router
from meshlib.outbound.steps import Send
from meshlib.policy.sources import PolicyArg, store_for
from meshlib.policy.store import PolicySnapshot, PolicyStore
from meshlib.settings import MeshSettings
from meshlib.telemetry.client import ClientTelemetry

__all__ = ["AsyncMeshTransport", "MeshTransport", "PolicyArg"]


class _MeshBase:
    """What both transports share: the store, the router, the pools, and closing them."""

    _pool_class: Any = httpx.HTTPTransport
    _is_async = False

    def __init__(
        self,
        policy: PolicyArg = None,
        *,
        service_name: str | None = None,
        transport: Any = None,
        settings: MeshSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        endpoint_transport: Callable[..., Any] | None = None,
        **pool_kwargs: Any,
    ) -> None:
        store, self._source = store_for(policy, settings, service_name=service_name)
        resolved = settings or MeshSettings()
        if service_name is None:
            service_name = resolved.service_name
        self.service_name = service_name
        factory = endpoint_transport or self._pool_class
        pools: Pools[Any] = Pools(factory, settings=settings, **pool_kwargs)
        base = transport if transport is not None else factory(**pool_kwargs)
        self._discovered = DiscoveredEndpoints(store, settings=settings, clock=clock)
        self.router = Router(store, pools, base, clock, self._discovered)
        self.router.caller = self.service_name
        telemetry = ClientTelemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            caller=self.service_name,
            endpoint_attribute=resolved.metrics_endpoint_attribute,
        )
        self.outbound = Outbound(
            store, self.router, pools, telemetry, clock, is_async=self._is_async
        )
        snapshot = store.peek()
        if snapshot is not None:
            self.router.sync(snapshot)
        self._unsubscribe = _follow(store, self)
        stats.register(self.router)

    def _swapped(self, old: Any, new: PolicySnapshot) -> None:
        """A new policy is in force: follow it, and close the pools of removed endpoints now."""
        self.router.sync(new)
        if self.outbound.pools._retired:
            self._close_retired()

    def _close_retired(self) -> None:
        """Close the idle pools of removed endpoints (each driver the way its pools close)."""
        raise NotImplementedError

    @property
    def store(self) -> PolicyStore:
        """The policy store this transport reads (shared with the client's other users)."""
        return self.outbound.store

    def _detach(self) -> list[Any]:
        """Stop following the policy; return every transport to close."""
        self._unsubscribe()
        stats.unregister(self.router)
        self._discovered.close()
        if self._source is not None:
            self._source.close()
        # Like OTel's and httpx's wrapping transports, closing passes on to the wrapped one.
        return [*self.outbound.pools.drain(), self.router.base]


class MeshTransport(_MeshBase, httpx.BaseTransport):
    """An httpx transport with the mesh's routing, resilience and telemetry.

    Example:
        ```python
        with httpx.Client(transport=MeshTransport("mesh.yaml")) as client:
            client.get("http://payments/v1/charges")
        ```
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Carry out one call: every attempt, backoff and decision of the flow."""
        flow = self.outbound.flow(request)
        try:
            step = next(flow)
            while True:
                if step.__class__ is Send:
                    try:
                        response = step.transport.handle_request(step.request)
                    except Exception as exc:
                        step = flow.throw(exc)
                    else:
                        step = flow.send(response)
                    continue
                discard = step.discard  # type: ignore[union-attr]
                if discard is not None:
                    _discard(discard)
                if step.seconds > 0:  # type: ignore[union-attr]
                    time.sleep(step.seconds)  # type: ignore[union-attr]
                step = next(flow)
        except StopIteration as stop:
            response = stop.value
            return response  # type: ignore[no-any-return]
        finally:
            flow.close()
            if self.outbound.pools._retired:
                self._close_retired()

    def _close_retired(self) -> None:
        """Close the idle pools of removed endpoints (busy ones close after their last request)."""
        for pool in self.outbound.pools.idle_retired():
            pool.close()

    def close(self) -> None:
        """Close every endpoint pool and the base transport."""
        for transport in self._detach():
            transport.close()

    def __enter__(self) -> MeshTransport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncMeshTransport(_MeshBase, httpx.AsyncBaseTransport):
    """The asyncio (anyio) twin of [`MeshTransport`][meshlib.outbound.transport.MeshTransport]; same flow, awaited.

    Example:
        ```python
        async with httpx.AsyncClient(transport=AsyncMeshTransport(policy)) as client:
            await client.get("http://payments/v1/charges")
        ```
    """

    _pool_class = httpx.AsyncHTTPTransport
    _is_async = True

    _loop: Callable[[], asyncio.AbstractEventLoop | None] | None = None

    def _close_retired(self) -> None:
        """Close the idle pools of removed endpoints on the transport's event loop, from any thread.

        Async pools close on the loop that uses them; until a call has shown
        which loop that is (or once it has stopped), they close at the end of
        the next call, or with the client.
        """
        loop = self._loop() if self._loop is not None else None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn_close)

    def _spawn_close(self) -> None:
        task = asyncio.get_running_loop().create_task(self._aclose_retired())
        self._closing.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._closing.discard)

    async def _aclose_retired(self) -> None:
        for pool in self.outbound.pools.idle_retired():
            await pool.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Carry out one call: every attempt, backoff and decision of the flow."""
        if self._loop is None:
            self._remember_loop()
        flow = self.outbound.flow(request)
        try:
            step = next(flow)
            while True:
                if step.__class__ is Send:
                    try:
                        response = await step.transport.handle_async_request(step.request)
                    except Exception as exc:
                        step = flow.throw(exc)
                    else:
                        step = flow.send(response)
                    continue
                discard = step.discard  # type: ignore[union-attr]
                if discard is not None:
                    await _adiscard(discard)
                if step.seconds > 0:  # type: ignore[union-attr]
                    await anyio.sleep(step.seconds)  # type: ignore[union-attr]
                step = next(flow)
        except StopIteration as stop:
            response = stop.value
            return response  # type: ignore[no-any-return]
        finally:
            flow.close()
            if self.outbound.pools._retired:
                await self._aclose_retired()

    def _remember_loop(self) -> None:
        try:
            self._loop = weakref.ref(asyncio.get_running_loop())
        except RuntimeError:  # pragma: no cover - not asyncio (trio): pools close after calls
            self._loop = _no_loop
            return
        self._closing: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close every endpoint pool and the base transport."""
        for transport in self._detach():
            await transport.aclose()

    async def __aenter__(self) -> AsyncMeshTransport:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()


def _follow(store: PolicyStore, transport: _MeshBase) -> Callable[[], None]:
    """Subscribe `transport` to the store's swaps without the store keeping it alive.

    A client dropped without `close()` is then collected like an unclosed
    `httpx.Client`, instead of living as long as the (often process-wide) store.
    """
    method = weakref.WeakMethod(transport._swapped)
    unsubscribe: Callable[[], None] | None = None

    def swapped(old: Any, new: PolicySnapshot) -> None:
        follower = method()
        if follower is not None:
            follower(old, new)
        elif unsubscribe is not None:
            unsubscribe()

    unsubscribe = store.subscribe(swapped)
    return unsubscribe


def _no_loop() -> None:
    return None


def _discard(response: httpx.Response) -> None:
    """Read (so the connection is reused) and close a response that is being retried."""
    try:
        response.read()
    except httpx.HTTPError:
        pass
    finally:
        response.close()


async def _adiscard(response: httpx.Response) -> None:
    try:
        await response.aread()
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
