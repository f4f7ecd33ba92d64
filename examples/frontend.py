"""frontend: the FastAPI service users call; it places orders through an AsyncMeshClient.

`POST /checkout` calls `POST http://orders/v1/orders`. The policy gives
that call a total deadline (`services.orders.timeouts.total`), which
meshlib sends on as `x-mesh-deadline-ms`: orders, and the payments call
orders makes, give up when it runs out instead of working for nobody:

```text
curl -X POST localhost:8000/checkout -H 'content-type: application/json' \\
     -d '{"item": "book", "amount_cents": 1200}'
```

Run it with `python examples/frontend.py` (port 8000, policy `examples/mesh.yaml`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from servicekit import Counters, fastapi_options, install_metrics, parse_args, serve, stats_document

import meshlib
from meshlib import AsyncMeshClient, MeshMiddleware

__all__ = ["Checkout", "create_app", "main"]


class Checkout(BaseModel):
    """A purchase to make."""

    item: str = Field("book", min_length=1, max_length=100)
    amount_cents: int = Field(1200, gt=0)


def create_app(policy: meshlib.Policy | meshlib.PolicyStore | str | None = None) -> FastAPI:
    """The frontend app; `policy` as for AsyncMeshClient (None: MESH_POLICY_FILE or the control plane)."""
    counters = Counters()
    orders = AsyncMeshClient(policy, service_name="frontend")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await orders.aclose()

    app = FastAPI(title="frontend", lifespan=lifespan, **fastapi_options())
    app.add_middleware(MeshMiddleware, policy=policy, service_name="frontend")

    @app.post("/checkout")
    async def checkout(purchase: Checkout) -> dict[str, Any]:
        counters.add("checkouts")
        try:
            response = await orders.post("http://orders/v1/orders", json=purchase.model_dump())
        except meshlib.DeadlineExceeded:
            counters.add("deadline_exceeded")
            raise HTTPException(504, "orders did not answer within the deadline") from None
        except meshlib.CircuitOpenError:
            counters.add("circuit_open")
            raise HTTPException(503, "orders is failing: its circuit breaker is open") from None
        except httpx.TransportError as exc:
            counters.add("unreachable")
            raise HTTPException(502, f"orders unreachable: {exc!r}") from None
        if response.status_code == 504:
            counters.add("orders_timed_out")  # orders' deadline ran out before frontend's
        if response.status_code != 201:
            counters.add("failed")
            raise HTTPException(
                response.status_code,
                f"orders answered {response.status_code}: {response.text[:200]}",
            )
        counters.add("ok")
        return {"status": "paid", "order": response.json()}

    @app.get("/mesh/stats")
    def stats() -> dict[str, Any]:
        return stats_document("frontend", counters)

    return app


def main() -> None:
    """Serve frontend (the edge: plain HTTP; its calls to orders still use MESH_TLS_*)."""
    args = parse_args("frontend", 8000)
    install_metrics()
    serve(create_app(), args, "asgi", tls=False)


if __name__ == "__main__":
    main()
