"""The control plane's ASGI app (Starlette): versioned policy with long-poll watch, publish, history, reports.

Endpoints (JSON unless noted; reading and publishing are separate rights):

| endpoint                       | right   | what                                                         |
|--------------------------------|---------|--------------------------------------------------------------|
| `GET /v1/policy`               | read    | current version + document, `ETag`; `If-None-Match` + `?wait=30s` long-polls (304) |
| `PUT`/`POST /v1/policy`        | publish | YAML/JSON/TOML body; 201, 422 with the issues, 412 when `If-Match` lost |
| `GET /v1/policy/history`       | read    | versions, newest first (`?limit=`)                           |
| `GET /v1/policy/history/N`     | read    | version N with its text                                      |
| `GET /v1/policy/diff`          | read    | unified diff `?from=N&to=M`                                  |
| `POST /v1/policy/rollback`     | publish | `{"version": N}`: N's content as a new version               |
| `POST /v1/reports`             | read    | an instance's state (see [`reports`][meshlib.controlplane.reports]) |
| `GET /v1/mesh`                 | read    | services, edges, instances (the dashboard's data)            |
| `/v1/registry/...`             | various | the instance registry (see [`registry`][meshlib.controlplane.registry]) |
| `GET /dashboard`               | -       | the dashboard page (HTML + JS, no build step)                |
| `GET /healthz`, `/readyz`      | -       | liveness; readiness = a policy is in force (`read-only` while the store is lost) |

Run it with `meshlib controlplane serve` (which adds slow-client protection
and a clean shutdown, see [`server`][meshlib.controlplane.server]) or any ASGI server:

```python
app = create_app(ControlPlaneSettings(policy="mesh/", publish_tokens=("alice=s3cret",)))
uvicorn.run(app, host="127.0.0.1", port=8700)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import tenacity
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.auth import Authenticator, Denied, Principal, Right
from meshlib.controlplane.backend import PolicyBackend, RegistryBackend, backends_from_settings
from meshlib.controlplane.backoff import Backoff
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.reports import InstanceReport, ReportStore
from meshlib.controlplane.storage import PolicyVersion
from meshlib.controlplane.telemetry import RateLimitedLog, publish_refused
from meshlib.controlplane.watch import VersionHub, version_of_etag
from meshlib.errors import PolicyError, StoreUnavailableError, VersionConflictError
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
    """One replica's state: its two backends, the watch hub fed by the policy backend, reports, auth.

    The replica keeps nothing of its own beyond caches: policy versions come
    from the [`PolicyBackend`][meshlib.controlplane.backend.PolicyBackend]'s
    watch (never polled by the routes), registrations from the
    [`RegistryBackend`][meshlib.controlplane.backend.RegistryBackend]. When the
    store is lost, the replica keeps serving the last version it read,
    refuses publishes with 503, and says so on `/readyz`.
    """

    def __init__(
        self,
        settings: ControlPlaneSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        policy_backend: PolicyBackend | None = None,
        registry_backend: RegistryBackend | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        if policy_backend is None or registry_backend is None:
            default_policy, default_registry = backends_from_settings(settings, clock=clock)
            policy_backend = policy_backend or default_policy
            registry_backend = registry_backend or default_registry
        self.backend: PolicyBackend = policy_backend
        self.registry: RegistryBackend = registry_backend
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
        self.store_error: str | None = None
        """Why the store cannot be read right now (None while it can): the replica is read-only."""
        self.watch_restarts = 0
        """Times the store's watch was found stalled and restarted."""
        self.refused: Counter[str] = Counter()
        """Publishes and rollbacks refused since start, by outcome."""
        self.stopping = asyncio.Event()
        """Set when the replica begins to stop: parked long-polls answer at once."""
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._backends_started = False
        self._synced = asyncio.Event()
        self._backoff = Backoff(tenacity.wait_random_exponential(multiplier=0.2, max=5.0))
        self._store_log = RateLimitedLog(logger, every=30.0, clock=clock)
        self._rendered: dict[tuple[str, float, str], bytes] = {}

    async def _follow(self) -> None:
        """Feed the hub from the backend's watch; on loss, back off (tenacity) and resume."""
        while True:
            try:
                if not self._backends_started:
                    await self.backend.start()
                    await self.registry.start()
                    self._backends_started = True
                self.hub.set(await self.backend.current())  # caught up, even on an empty store
                self._store_back()
                await self._watch_guarded()
                raise StoreUnavailableError(f"{self.backend.name}: the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is gone: serve what we have, read-only
                self.store_error = str(exc) or type(exc).__name__
                current = self.hub.current
                self._store_log.warning(
                    "the store %s is unavailable; serving version %s read-only: %s",
                    self.backend.name,
                    current.version if current else "none",
                    self.store_error,
                )
                self._synced.set()
                await asyncio.sleep(self._backoff.failed())

    async def _watch_guarded(self) -> None:
        """Feed the hub from the backend's watch, guarded against a watch that stalls.

        A watch stream can stop delivering without breaking (a member cut off
        behind a half-open connection). Every `store_resync` seconds a
        linearizable read of the newest version catches the hub up at once;
        a version the store had at one check and the watch still had not
        delivered by the next one means the watch is stuck, so it is restarted.
        Returns when the watch ends; raises what it raised.
        """
        delivered = 0

        async def pump() -> None:
            nonlocal delivered
            async for version in self.backend.watch():
                delivered = max(delivered, version.version)
                self.hub.set(version)

        loop = asyncio.get_running_loop()
        task = loop.create_task(pump())
        undelivered = 0  # the store's newest version at the last check, if the watch lacked it
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.store_resync)
                if done:
                    task.result()
                    return
                newest = await self.backend.current()
                if newest is None or newest.version <= delivered:
                    undelivered = 0
                    continue
                self.hub.set(newest)
                if undelivered and undelivered > delivered:
                    logger.warning(
                        "the watch on %s delivered nothing past version %s for %gs while the "
                        "store holds version %s: restarting it",
                        self.backend.name,
                        delivered,
                        self.settings.store_resync,
                        newest.version,
                    )
                    self.watch_restarts += 1
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    task = loop.create_task(pump())
                    undelivered = 0
                else:
                    undelivered = newest.version
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _store_back(self) -> None:
        if self.store_error is not None:
            logger.warning("the store %s answers again", self.backend.name)
            self._store_log.reset()
        self.store_error = None
        self._backoff.succeeded()
        self._synced.set()

    async def ensure_started(self) -> None:
        """Start the backends and the watch once, and wait until the store was read (or failed)."""
        if not self._started:
            self._started = True
            self._task = asyncio.get_running_loop().create_task(self._follow())
        await self._synced.wait()

    def begin_shutdown(self) -> None:
        """Answer every parked long-poll now (304, the version it has) so a stop is quick and clean."""
        self.stopping.set()
        self.hub.close()

    async def stop(self) -> None:
        """Stop following the store and close both backends."""
        self.begin_shutdown()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in (self.backend, self.registry):
            try:
                await backend.close()
            except Exception:
                logger.exception("closing the store %s failed", backend.name)

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
        """The caller, if it holds `right`; raises Denied otherwise."""
        principal = self.auth.authenticate(
            request.headers, request.scope.get("extensions", {}).get("tls")
        )
        self.auth.require(principal, right)
        return principal

    def refuse(self, outcome: str, who: str, detail: str) -> None:
        """Log and count a refused publish or rollback (the caller also gets the answer)."""
        self.refused[outcome] += 1
        publish_refused(outcome)
        logger.warning("publish by %s refused (%s): %s", who, outcome, detail)

    def status(self) -> dict[str, Any]:
        """What `/readyz` says beyond ready or not: the store, whether it is lost, counters."""
        return {
            "store": self.backend.name,
            "read_only": self.store_error is not None,
            "store_error": self.store_error,
            "watchers": self.hub.watchers,
            "publishes_refused": dict(self.refused),
            "watch_restarts": self.watch_restarts,
            **self.backend.status(),
        }


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 past `limit` bytes and 408 when slower than `timeout` s."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than the {limit}-byte limit")

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"the body is larger than the {limit}-byte limit")
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise HTTPException(
            408, f"the body did not arrive within {timeout:g}s", headers={"Connection": "close"}
        ) from None


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _policy_response(plane: ControlPlane, version: PolicyVersion, status: int = 200) -> Response:
    headers = {"ETag": version.etag, "Cache-Control": "no-cache"}
    if status == 304:
        return Response(status_code=304, headers=headers)
    return Response(
        plane.render(version), status_code=status, headers=headers, media_type="application/json"
    )


def _no_policy(plane: ControlPlane) -> JSONResponse:
    if plane.store_error is not None:
        return _error(503, f"the store is unavailable: {plane.store_error}")
    return _error(404, "no policy has been published yet")


async def get_policy(request: Request) -> Response:
    """The version in force; long-polls while the caller's `If-None-Match` is not older.

    A caller holding a version newer than this replica's (it came from a
    replica that saw a publish first) waits for this replica to catch up, and
    is never answered with the older version.
    """
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
    held = [n for n in map(version_of_etag, known) if n is not None]
    than = max(held) if held else None
    if current is not None and current.etag in known:
        than = max(than or 0, current.version)
    if than is not None and (current is None or current.version <= than):
        current = await plane.hub.wait_newer(than, wait)
    if current is None:
        return _no_policy(plane)
    if than is not None and current.version <= than:
        headers = {"Cache-Control": "no-cache"}
        if current.etag in known:
            headers["ETag"] = current.etag
        return Response(status_code=304, headers=headers)
    return _policy_response(plane, current)


def _expected(request: Request, plane: ControlPlane) -> int | None:
    """The version an `If-Match` publish expects to replace (None: unconditional).

    Raises:
        HTTPException: 412 when the header names no version this control plane issued.
    """
    header = request.headers.get("if-match")
    if header is None:
        return None
    if header.strip() == "*":
        current = plane.hub.current
        if current is None:
            raise HTTPException(412, "If-Match: * but no policy has been published yet")
        return current.version
    numbers = {version_of_etag(tag) for tag in _etags(header)}
    numbers.discard(None)
    if len(numbers) != 1:
        raise HTTPException(412, f"If-Match {header!r} names no single policy version")
    return numbers.pop()


async def _publishing(
    plane: ControlPlane, who: str, publish: Callable[[], Awaitable[PolicyVersion]]
) -> Response:
    """Run a publish or rollback; map its refusals to answers, and log and count them."""
    try:
        version = await publish()
    except PolicyError as exc:
        plane.refuse("invalid", who, str(exc).splitlines()[0])
        return _invalid(exc, plane.hub.current)
    except VersionConflictError as exc:
        plane.refuse("conflict", who, str(exc))
        current = plane.hub.current
        return _error(
            412,
            f"{exc} (If-Match does not match)",
            current=current.summary() if current else None,
        )
    except StoreUnavailableError as exc:
        plane.refuse("unavailable", who, str(exc))
        return _error(503, f"the store is unavailable, nothing was published: {exc}")
    plane.hub.set(version)
    return JSONResponse(
        version.summary() | {"etag": version.etag}, status_code=201, headers={"ETag": version.etag}
    )


async def _publisher(request: Request, plane: ControlPlane) -> Principal:
    try:
        return plane.principal(request, Right.PUBLISH)
    except Denied as exc:
        plane.refuse("denied", "anonymous", exc.message)
        raise


async def _body_for_publish(request: Request, plane: ControlPlane, who: str, limit: int) -> bytes:
    try:
        return await read_body(request, limit, plane.settings.body_timeout)
    except HTTPException as exc:
        plane.refuse("too_large" if exc.status_code == 413 else "slow_body", who, str(exc.detail))
        raise


async def put_policy(request: Request) -> Response:
    """Validate and publish the body as the next version (compare-and-set with `If-Match`)."""
    plane = _plane(request)
    principal = await _publisher(request, plane)
    await plane.ensure_started()
    try:
        expected = _expected(request, plane)
    except HTTPException as exc:
        plane.refuse("conflict", principal.name, str(exc.detail))
        raise
    raw = await _body_for_publish(request, plane, principal.name, plane.settings.max_policy_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        plane.refuse("invalid", principal.name, "the body is not UTF-8")
        return _error(400, f"the body is not UTF-8 text: {exc}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    comment = request.headers.get("x-mesh-comment") or request.query_params.get("comment", "")
    return await _publishing(
        plane,
        principal.name,
        lambda: plane.backend.publish(
            text,
            fmt=_FORMATS.get(content_type),
            who=principal.name,
            comment=comment[:500],
            expected=expected,
        ),
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
    try:
        versions = await plane.backend.history(limit)
    except StoreUnavailableError as exc:
        return _error(503, f"the store is unavailable: {exc}")
    current = plane.hub.current
    return JSONResponse(
        {
            "current": current.version if current else None,
            "versions": [v.summary() for v in versions],
            "file_error": plane.backend.status().get("file_error"),
        }
    )


async def _version(plane: ControlPlane, number: int) -> PolicyVersion:
    try:
        return await plane.backend.get(number)
    except KeyError:
        raise HTTPException(404, f"there is no policy version {number}") from None
    except StoreUnavailableError as exc:
        raise HTTPException(503, f"the store is unavailable: {exc}") from None


async def get_version(request: Request) -> Response:
    """One version with its document and its text."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    await plane.ensure_started()
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
        frm = int(request.query_params.get("from") or 0)
    except ValueError:
        return _error(400, "query parameters from and to: expected version numbers")
    new = await _version(plane, to)
    if not frm:  # versions may have gaps (etcd revisions): "the one before" is in the history
        older = [v for v in await plane.backend.history(500) if v.version < to]
        frm = older[0].version if older else 0
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
    principal = await _publisher(request, plane)
    await plane.ensure_started()
    expected = _expected(request, plane)
    raw = await _body_for_publish(request, plane, principal.name, 4096)
    try:
        body = json.loads(raw or b"{}")
        number = body["version"]
        if not isinstance(number, int) or isinstance(number, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, 'the body must be JSON {"version": <earlier version number>}')
    await _version(plane, number)
    return await _publishing(
        plane,
        principal.name,
        lambda: plane.backend.rollback(number, who=principal.name, expected=expected),
    )


async def post_report(request: Request) -> Response:
    """Keep one instance's state report."""
    plane = _plane(request)
    plane.principal(request, Right.READ)
    raw = await read_body(request, plane.settings.max_report_bytes, plane.settings.body_timeout)
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
    """Ready once a policy version is in force; `read-only` while the store is unavailable.

    A replica that lost its store stays ready (200): it still serves the last
    version it read, and taking every replica out of rotation during a store
    outage would take the policy away from services that restart meanwhile.
    """
    plane = _plane(request)
    await plane.ensure_started()
    current = plane.hub.current
    status = plane.status()
    if current is None:
        message = (
            f"the store is unavailable: {plane.store_error}"
            if plane.store_error is not None
            else "no policy has been published yet"
        )
        return _error(503, message, **status)
    state = "read-only" if plane.store_error is not None else "ready"
    return JSONResponse({"status": state, "version": current.version, **status})


async def _denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Denied)
    headers = {"WWW-Authenticate": 'Bearer realm="meshlib"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    settings: ControlPlaneSettings | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    policy_backend: PolicyBackend | None = None,
    registry_backend: RegistryBackend | None = None,
) -> Starlette:
    """The control plane as an ASGI app (see the module docstring for its endpoints).

    Args:
        settings: The replica's settings (default: from `MESH_CONTROLPLANE_*`).
        clock: The clock for reports and the registry's leases.
        policy_backend: Where policy lives (default: what `settings.store` names).
        registry_backend: Where registrations live (default: what `settings.store` names).
    """
    from meshlib.controlplane.dashboard import dashboard_routes
    from meshlib.controlplane.registry import registry_routes

    plane = ControlPlane(
        settings or ControlPlaneSettings(),
        clock=clock,
        policy_backend=policy_backend,
        registry_backend=registry_backend,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await plane.ensure_started()  # a (re)started replica catches up before it answers
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
        *registry_routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Denied: _denied, HTTPException: _http_error},
    )
    app.state.plane = plane
    return app
