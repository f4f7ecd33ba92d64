"""The control plane's instance registry: self-registration with leases, and a long-poll watch.

Instances of a service register themselves (`meshlib.discovery.registry`),
renew their lease with a heartbeat and deregister when they drain; an
instance whose lease lapses is dropped, as in Eureka. Callers watch a
service's live instances with the same long-poll as the policy
(`If-None-Match` + `?wait=`); an expiry wakes watchers too.

=============================================  ==========  ==================================
`GET    /v1/registry`                        read        services and their instance counts
`GET    /v1/registry/{service}`              read        live instances, `ETag`; long-poll
`POST   /v1/registry/{service}/instances`    register    register (or replace) an instance
`PUT    /v1/registry/{service}/instances/ID` register    renew the lease; 404: register again
`DELETE /v1/registry/{service}/instances/ID` register    deregister (drain)
=============================================  ==========  ==================================

Registering needs a register token (`register_tokens`) or the publish
right. Under mTLS, a caller presenting a SPIFFE ID may only act for the
service that identity belongs to (the policy's `identity` of that service,
else `spiffe://<trust_domain>/<service>`); a presented identity listed in
`register_identities` (or `*`: any) needs no token.

Registrations live in the replica's
[`RegistryBackend`][meshlib.controlplane.backend.RegistryBackend]: in the
embedded store, this replica's memory (after a restart, the heartbeats' 404
make every instance register again within one renewal); on etcd, keys under
etcd leases that every replica sees and that outlive any replica. The app
mounts these routes beside the policy's:

```python
routes = [..., *registry_routes()]
```
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Coroutine, Iterable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlib.controlplane.auth import ANONYMOUS, Denied, Right, parse_token
from meshlib.controlplane.backend import RegistryBackend
from meshlib.controlplane.instances import Registration, RegistryConfig, expected_identity
from meshlib.errors import StoreUnavailableError
from meshlib.policy.durations import parse_duration

__all__ = ["authorize_register", "registry_routes"]

_SERVICE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_BODY = 16 << 10


def _registry(request: Request) -> RegistryBackend:
    registry: RegistryBackend = request.app.state.plane.registry
    return registry


def _config(request: Request, registry: RegistryBackend) -> RegistryConfig:
    config = getattr(registry, "config", None)
    if isinstance(config, RegistryConfig):
        return config
    return RegistryConfig.from_settings(request.app.state.plane.settings)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _service(request: Request) -> str:
    service: str = request.path_params["service"]
    if not _SERVICE.match(service):
        raise Denied(400, f"service name {service!r} must be a DNS label, e.g. 'payments'")
    return service


def _peer_identity(request: Request) -> str | None:
    try:
        from meshlib.security.identity import identity_from_scope
    except ImportError:  # pragma: no cover - meshlib.security needs cryptography
        return None
    return identity_from_scope(request.scope)


def _token_is(presented: str, tokens: Iterable[str]) -> str | None:
    found = None
    for i, spec in enumerate(tokens, 1):
        name, secret = parse_token(spec, i)
        if hmac.compare_digest(secret, presented.encode()) and found is None:
            found = name
    return found


def authorize_register(request: Request, registry: RegistryBackend, service: str) -> str:
    """Who is registering for `service`; raises Denied unless they may.

    A register token or the publish right allows it; a presented mTLS identity
    must be the service's own (and, from `register_identities`, suffices).
    """
    plane = request.app.state.plane
    config = _config(request, registry)
    peer = _peer_identity(request)
    if peer is not None:
        current = plane.hub.current
        expected = expected_identity(current.data if current else None, service)
        if peer != expected:
            raise Denied(
                403,
                f"{peer} may not register instances of {service!r}, whose identity is {expected}",
            )
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() == "bearer" and token.strip():
        name = _token_is(token.strip(), config.register_tokens)
        if name is not None:
            return name
    if (
        not header
        and peer is not None
        and ("*" in config.register_identities or peer in config.register_identities)
    ):
        return peer
    tls = (request.scope.get("extensions") or {}).get("tls")
    principal = plane.auth.authenticate(request.headers, tls)
    if not principal.may(Right.PUBLISH):
        status = 401 if principal is ANONYMOUS else 403
        raise Denied(status, "registering an instance needs a register token or the publish right")
    return str(principal.name)


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise Denied(413, f"the body is larger than the {_MAX_BODY}-byte limit")
    return bytes(body)


async def register(request: Request) -> Response:
    """Register (or replace) an instance; answers the lease granted."""
    registry = _registry(request)
    service = _service(request)
    await request.app.state.plane.ensure_started()  # the policy names the service's identity
    who = authorize_register(request, registry, service)
    try:
        body = Registration.model_validate_json(await _body(request))
        body.endpoint_url()
        body.checked_identity()
        if body.lease is not None:
            parse_duration(body.lease)
    except (ValidationError, ValueError) as exc:
        return _error(422, f"the registration is invalid: {exc}")
    peer = _peer_identity(request)
    if peer is not None and body.identity not in (None, peer):
        return _error(403, f"{peer} may not register an instance claiming identity {body.identity}")
    try:
        instance = await registry.register(service, body, who=who)
    except OverflowError as exc:
        return _error(507, str(exc))
    except StoreUnavailableError as exc:
        return _error(503, f"the registry store is unavailable: {exc}")
    return JSONResponse(
        instance.to_json(instance.expires_at - instance.lease) | {"service": service},
        status_code=201,
    )


async def renew(request: Request) -> Response:
    """Renew a lease; 404 tells the instance to register again."""
    registry = _registry(request)
    service = _service(request)
    await request.app.state.plane.ensure_started()
    authorize_register(request, registry, service)
    try:
        instance = await registry.renew(service, request.path_params["instance"])
    except StoreUnavailableError as exc:
        return _error(503, f"the registry store is unavailable: {exc}")
    if instance is None:
        return _error(404, "no such instance (its lease lapsed?): register again")
    return JSONResponse({"lease_s": instance.lease})


async def deregister(request: Request) -> Response:
    """Deregister an instance (it is draining or gone)."""
    registry = _registry(request)
    service = _service(request)
    await request.app.state.plane.ensure_started()
    authorize_register(request, registry, service)
    try:
        found = await registry.deregister(service, request.path_params["instance"])
    except StoreUnavailableError as exc:
        return _error(503, f"the registry store is unavailable: {exc}")
    if not found:
        return _error(404, "no such instance")
    return Response(status_code=204)


async def _wait_or_disconnect(request: Request, waiting: Coroutine[Any, Any, None]) -> bool:
    """Run `waiting`; False if the client went away first (its parked watch is released).

    A replica that is shutting down ends the wait at once (the caller answers 304).
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    wait_task = asyncio.ensure_future(waiting)
    gone_task = asyncio.ensure_future(disconnected())
    stopping = asyncio.ensure_future(request.app.state.plane.stopping.wait())
    done, pending = await asyncio.wait(
        {wait_task, gone_task, stopping}, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return gone_task not in done


async def watch(request: Request) -> Response:
    """A service's live instances; long-polls while `If-None-Match` matches and `wait` runs."""
    plane = request.app.state.plane
    plane.principal(request, Right.READ)
    registry = _registry(request)
    service = _service(request)
    await plane.ensure_started()
    wait = 0.0
    if "wait" in request.query_params:
        try:
            wait = min(parse_duration(request.query_params["wait"]), plane.settings.max_wait)
        except ValueError as exc:
            return _error(400, f"query parameter wait: {exc}")
    known = {t.strip() for t in request.headers.get("if-none-match", "").split(",") if t.strip()}
    etag = registry.etag(service)
    if etag in known and wait > 0:
        if not await _wait_or_disconnect(request, registry.wait(service, etag, wait)):
            return Response(status_code=499)  # nobody is listening any more
        etag = registry.etag(service)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in known:
        return Response(status_code=304, headers=headers)
    return JSONResponse(registry.listing(service), headers=headers)


async def services(request: Request) -> Response:
    """Every service with registered instances, and how many."""
    request.app.state.plane.principal(request, Right.READ)
    registry = _registry(request)
    await request.app.state.plane.ensure_started()
    return JSONResponse({"services": registry.services(), **registry.status()})


def registry_routes() -> list[Route]:
    """The registry's routes, for `Starlette(routes=[...])` beside the policy's."""
    instance = "/v1/registry/{service}/instances/{instance}"
    return [
        Route("/v1/registry", services, methods=["GET"]),
        Route("/v1/registry/{service}", watch, methods=["GET"]),
        Route("/v1/registry/{service}/instances", register, methods=["POST"]),
        Route(instance, renew, methods=["PUT"]),
        Route(instance, deregister, methods=["DELETE"]),
    ]
