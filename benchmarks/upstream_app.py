"""The realistic upstream: a small Starlette app under uvicorn, answering a JSON document.

Started in its own process by the bench (`uvicorn benchmarks.upstream_app:app`),
so its CPU never counts as the client's.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["app"]

_ITEMS: list[dict[str, Any]] = [
    {"id": i, "sku": f"SKU-{i:05d}", "qty": i % 7, "price_cents": 199 * i} for i in range(12)
]


async def order(request: Request) -> JSONResponse:
    """An order document of about 1 KB, as a typical internal JSON API would answer."""
    return JSONResponse(
        {
            "order": request.query_params.get("id", "7"),
            "status": "confirmed",
            "items": _ITEMS,
            "total_cents": sum(item["price_cents"] * item["qty"] for item in _ITEMS),
        }
    )


app = Starlette(routes=[Route("/", order)])


def mesh_app() -> Any:
    """The same app behind `MeshMiddleware`: the server half of the mesh (`uvicorn --factory`).

    Telemetry is set up as in a production service (SDK tracer and meter
    providers, traces sampled only when the caller's are), and the policy is
    the default one: what the ingress proxy of a sidecar pair stands for.
    """
    from benchmarks.telemetry import install
    from meshlib import MeshMiddleware, load_policy

    install()
    return MeshMiddleware(app, policy=load_policy({"version": 1}), service_name="upstream")
