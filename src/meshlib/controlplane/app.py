"""The control plane's ASGI app (Starlette): versioned policy with long-poll watch, publish, history, reports.

Endpoints (JSON unless noted; reading and publishing are separate rights):

=============================  =========  ==============================================
``GET  /v1/policy``            read       current version + document, ``ETag``;
                                          ``If-None-Match`` + ``?wait=30s`` long-polls (304)
``PUT|POST /v1/policy``        publish    YAML/JSON/TOML body; 201, or 422 with the issues
``GET  /v1/policy/history``    read       versions, newest first (``?limit=``)
``GET  /v1/policy/history/N``  read       version N with its text
``GET  /v1/policy/diff``       read       unified diff ``?from=N&to=M``
``POST /v1/policy/rollback``   publish    ``{"version": N}``: N's content as a new version
``POST /v1/reports``           read       an instance's state (see :mod:`.reports`)
``GET  /v1/mesh``              read       services, edges, instances (the dashboard's data)
``GET  /dashboard``            -          the dashboard page (HTML + JS, no build step)
``GET  /healthz``, ``/readyz`` -          liveness; readiness = a policy is in force
=============================  =========  ==============================================

Run it with ``meshlib controlplane serve`` or any ASGI server::

    app = create_app(ControlPlaneSettings(policy="mesh/", publish_tokens=("alice=s3cret",)))
    uvicorn.run(app, host="127.0.0.1", port=8700)
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.auth import Authenticator, Denied, Principal, Right
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.reports import InstanceReport, ReportStore
from meshlib.controlplane.storage import PolicyRepository, PolicyVersion
from meshlib.controlplane.watch import VersionHub
from meshlib.errors import PolicyError
from meshlib.policy.durations import parse_duration
from meshlib.policy.parse import Format

__all__ = ["ControlPlane", "create_app"]

logger = logging.getLogger("meshlib.controlplane")

_FORMATS: dict[str, Format] = {
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "application/toml": "toml",
}


class ControlPlane:
    """The server's state: repository, watch hub, reports and auth, plus the refresh loop."""

    def __init__(self, settings: ControlPlaneSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.repository = PolicyRepository(settings.policy, clock=clock)
        self.hub = VersionHub()
        self.reports = ReportStore(
            max_instances=settings.max_instances,
            max_destinations=settings.max_destinations,
            max_endpoints=settings.max_endpoints,
            ttl=settings.report_ttl,
            clock=clock,
        )
        self.auth = Authenticator(
            read_tokens=[t.get_secret_value() for t in settings.read_tokens],
            publish_tokens=[t.get_secret_value() for t in settings.publish_tokens],
            read_identities=settings.read_identities,
            publish_identities=settings.publish_identities,
        )
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._rendered: dict[tuple[str, float, str], bytes] = {}

    async def sync(self) -> PolicyVersion | None:
        """Adopt what changed on disk (hand edits, other replicas) and wake watchers."""
        version = await anyio.to_thread.run_sync(self.repository.refresh)
        self.hub.set(version)
        return version

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # a transient disk error must not stop the refresher
                logger.exception("refreshing the policy repository failed")
            self._synced.set()
            await asyncio.sleep(self.settings.poll_interval)

    async def ensure_started(self) -> None:
        """Start the refresh loop once (from the lifespan, or the first request without one)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())
        await self._synced.wait()

    async def stop(self) -> None:
        """Stop the refresh loop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def render(self, version: PolicyVersion) -> bytes:
        """The JSON body of a version, rendered once: a publish answers every watcher at once."""
        key = (version.etag, version.when, version.who)
        body = self._rendered.get(key)
        if body is None:
            body = bytes(JSONResponse(version.to_json()).body)
            if len(self._rendered) >= 8:
                self._rendered.clear()
            self._rendered[key] = body
        return body

    def principal(self, request: Request, right: Right) -> Principal:
        """The caller, if it holds ``right``; raises Denied otherwise."""
        principal = self.auth.authenticate(
            request.headers, request.scope.get("extensions", {}).get("tls")
        )
        self.auth.require(principal, right)
        return principal


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the body is larger than the {limit}-byte limit")
    return bytes(body)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _policy_response(plane: ControlPlane, version: PolicyVersion, status: int = 200) -> Response:
    headers = {"ETag": version.etag, "Cache-Control": "no-cache"}
    if status == 304:
        return Response(status_code=304, headers=headers)
    return Response(
        plane.render(version), status_code=status, headers=headers, media_type="application/json"
    )


async def get_policy(request: Request) -> Response:
    """The version in force; long-polls while ``If-None-Match`` matches and ``wait`` has not passed."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    await plane.ensure_started()
    wait = 0.0
    if "wait" in request.query_params:
        try:
            wait = min(parse_duration(request.query_params["wait"]), plane.settings.max_wait)
        except ValueError as exc:
            return _error(400, f"query parameter wait: {exc}")
    known = _etags(request.headers.get("if-none-match", ""))
    current = plane.hub.current
    if known and (current is None or current.etag in known):
        current = await plane.hub.wait(current.etag if current else None, wait)
    if current is None:
        return _error(404, "no policy has been published yet")
    return _policy_response(plane, current, 304 if current.etag in known else 200)


async def put_policy(request: Request) -> Response:
    """Validate and publish the body as the next version."""
    plane = _plane(request)
    principal = plane.principal(request, Right.PUBLISH)
    await plane.ensure_started()
    current = plane.hub.current
    if_match = request.headers.get("if-match")
    if (
        if_match
        and if_match.strip() != "*"
        and (current is None or current.etag not in _etags(if_match))
    ):
        return _error(
            412,
            "the policy changed since you read it (If-Match does not match)",
            current=current.summary() if current else None,
        )
    raw = await _read_body(request, plane.settings.max_policy_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(400, f"the body is not UTF-8 text: {exc}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    comment = request.headers.get("x-mesh-comment") or request.query_params.get("comment", "")
    try:
        version = await anyio.to_thread.run_sync(
            lambda: plane.repository.publish(
                text, fmt=_FORMATS.get(content_type), who=principal.name, comment=comment[:500]
            )
        )
    except PolicyError as exc:
        return _invalid(exc, plane.hub.current)
    plane.hub.set(version)
    return JSONResponse(
        version.summary() | {"etag": version.etag}, status_code=201, headers={"ETag": version.etag}
    )


def _invalid(exc: PolicyError, current: PolicyVersion | None) -> JSONResponse:
    kept = f"version {current.version} stays in force" if current else "no policy is in force"
    issues = [
        {"message": i.message, "field": i.field, "line": i.line, "column": i.column}
        for i in exc.issues
    ]
    return _error(422, f"the policy is invalid; {kept}", issues=issues)


async def get_history(request: Request) -> Response:
    """Versions newest first, without their documents."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    await plane.ensure_started()
    try:
        limit = max(1, min(int(request.query_params.get("limit", "50")), 500))
    except ValueError:
        return _error(400, "query parameter limit: expected an integer")
    versions = await anyio.to_thread.run_sync(plane.repository.history, limit)
    current = plane.hub.current
    return JSONResponse(
        {
            "current": current.version if current else None,
            "versions": [v.summary() for v in versions],
            "file_error": str(plane.repository.file_error) if plane.repository.file_error else None,
        }
    )


async def _version(plane: ControlPlane, number: int) -> PolicyVersion:
    try:
        return await anyio.to_thread.run_sync(plane.repository.get, number)
    except KeyError:
        raise HTTPException(404, f"there is no policy version {number}") from None


async def get_version(request: Request) -> Response:
    """One version with its document and its text."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    version = await _version(plane, request.path_params["version"])
    return JSONResponse(version.to_json() | {"text": version.text, "format": version.format})


async def get_diff(request: Request) -> Response:
    """A unified diff between two versions (default: the current one and the one before)."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    await plane.ensure_started()
    current = plane.hub.current
    try:
        to = int(request.query_params.get("to") or (current.version if current else 0))
        frm = int(request.query_params.get("from") or to - 1)
    except ValueError:
        return _error(400, "query parameters from and to: expected version numbers")
    new = await _version(plane, to)
    old_text = (await _version(plane, frm)).text if frm >= 1 else ""
    diff = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        new.text.splitlines(keepends=True),
        fromfile=f"version {frm}",
        tofile=f"version {to}",
    )
    return JSONResponse({"from": frm, "to": to, "diff": "".join(diff)})


async def rollback(request: Request) -> Response:
    """Publish an earlier version's content again, as a new version."""
    plane = _plane(request)
    principal = plane.principal(request, Right.PUBLISH)
    await plane.ensure_started()
    raw = await _read_body(request, 4096)
    try:
        body = json.loads(raw or b"{}")
        number = body["version"]
        if not isinstance(number, int) or isinstance(number, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, 'the body must be JSON {"version": <earlier version number>}')
    await _version(plane, number)
    try:
        version = await anyio.to_thread.run_sync(
            lambda: plane.repository.rollback(number, who=principal.name)
        )
    except PolicyError as exc:  # an old version the current model no longer accepts
        return _invalid(exc, plane.hub.current)
    plane.hub.set(version)
    return JSONResponse(version.summary() | {"etag": version.etag}, status_code=201)


async def post_report(request: Request) -> Response:
    """Keep one instance's state report."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    raw = await _read_body(request, plane.settings.max_report_bytes)
    try:
        report = InstanceReport.model_validate_json(raw)
    except ValidationError as exc:
        issues = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)[:20]
        ]
        return _error(422, "the report is invalid", issues=issues)
    plane.reports.ingest(report)
    return JSONResponse({"accepted": True, "ttl_s": plane.settings.report_ttl}, status_code=202)


async def healthz(request: Request) -> Response:
    """Liveness."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready once a policy version is in force."""
    plane = _plane(request)
    await plane.ensure_started()
    current = plane.hub.current
    if current is None:
        return _error(503, "no policy has been published yet")
    return JSONResponse(
        {"status": "ready", "version": current.version, "watchers": plane.hub.watchers}
    )


async def _denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Denied)
    headers = {"WWW-Authenticate": 'Bearer realm="meshlib"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _registry_routes() -> list[Route]:
    try:
        from meshlib.controlplane.registry import registry_routes
    except ImportError:  # a build without the service registry
        return []
    return registry_routes()


def create_app(
    settings: ControlPlaneSettings | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> Starlette:
    """The control plane as an ASGI app (see the module docstring for its endpoints)."""
    from meshlib.controlplane.dashboard import dashboard_routes

    plane = ControlPlane(settings or ControlPlaneSettings(), clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await plane.ensure_started()
        try:
            yield
        finally:
            await plane.stop()

    routes = [
        Route("/", lambda request: RedirectResponse("/dashboard"), methods=["GET"]),
        Route("/v1/policy", get_policy, methods=["GET"]),
        Route("/v1/policy", put_policy, methods=["PUT", "POST"]),
        Route("/v1/policy/history", get_history, methods=["GET"]),
        Route("/v1/policy/history/{version:int}", get_version, methods=["GET"]),
        Route("/v1/policy/diff", get_diff, methods=["GET"]),
        Route("/v1/policy/rollback", rollback, methods=["POST"]),
        Route("/v1/reports", post_report, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *dashboard_routes(),
        *_registry_routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Denied: _denied, HTTPException: _http_error},
    )
    app.state.plane = plane
    return app
