"""The dashboard: a static page plus small JS polling `/v1/mesh` and the policy endpoints.

No front-end build step: `static/` holds the HTML, JS and CSS as written.
The page shows services and the edges between them (rates, errors, latency),
endpoint breaker and ejection states, which instance runs which policy
version, the instances registered in the service registry with their leases,
the current policy with its history and diffs, and a rollback
button (which needs a publish token, typed into the page and kept only in the
tab's `sessionStorage`). The data comes from `mesh_view`:

```python
routes = dashboard_routes()   # mounted by create_app: /dashboard, /dashboard/app.js, /v1/mesh
```
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlib.controlplane.auth import Right

if TYPE_CHECKING:
    from meshlib.controlplane.app import ControlPlane

__all__ = ["dashboard_routes", "mesh_view"]

_STATIC = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}
# The page loads only its own script and style and talks only to this origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mesh_view(plane: ControlPlane) -> dict[str, Any]:
    """Everything the dashboard draws: the mesh from reports, and the policy in force."""
    view = plane.reports.mesh_view()
    current = plane.hub.current
    current_version = current.version if current else None
    view["policy"] = current.summary() if current else None
    view["file_error"] = plane.backend.status().get("file_error")
    for service in view["services"]:
        for instance in service["instances"]:
            instance["current"] = instance["policy_revision"] == str(current_version)
    return view


async def _mesh(request: Request) -> Response:
    plane: ControlPlane = request.app.state.plane
    plane.principal(request, Right.READ)
    await plane.ensure_started()
    view = mesh_view(plane)
    registry = plane.registry
    view["registry"] = [
        {"service": name, **instance}
        for name in registry.services()
        for instance in registry.listing(name)["instances"]
    ]
    return JSONResponse(view)


def _static(path: str, name: str, media_type: str) -> Route:
    body = resources.files("meshlib.controlplane").joinpath("static").joinpath(name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return Route(path, serve, methods=["GET"])


def dashboard_routes() -> list[Route]:
    """The page, its script and style, and `GET /v1/mesh`."""
    routes = [_static(path, name, media) for path, (name, media) in _STATIC.items()]
    routes.append(Route("/v1/mesh", _mesh, methods=["GET"]))
    return routes
