"""orders: a FastAPI service that charges payments through a synchronous MeshClient.

`POST /v1/orders` creates an order and captures its payment with
`PUT http://payments/v1/charges/<order id>`: `payments` is a service name
in the policy, so meshlib picks its endpoint, retries a 503 (the PUT is
idempotent), keeps the breaker and the retry budget, and caps the call by the
deadline `frontend` sent. The endpoint is a plain `def`: FastAPI runs it
in a worker thread, where the sync client is the natural choice.

Run it with `python examples/orders.py` (port 8001, policy `examples/mesh.yaml`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from servicekit import Counters, fastapi_options, install_metrics, parse_args, serve, stats_document

import meshlib
from meshlib import MeshClient, MeshMiddleware

__all__ = ["Order", "OrderRequest", "create_app", "main"]


class OrderRequest(BaseModel):
    """What frontend sends to place an order."""

    item: str = Field(min_length=1, max_length=100)
    amount_cents: int = Field(gt=0)


class Order(BaseModel):
    """A placed and paid order."""

    order_id: str
    item: str
    amount_cents: int
    payment: dict[str, Any]
    payment_attempts: int = Field(description="Tries meshlib made to charge, the first included.")


def create_app(policy: meshlib.Policy | meshlib.PolicyStore | str | None = None) -> FastAPI:
    """The orders app; `policy` as for MeshClient (None: MESH_POLICY_FILE or the control plane)."""
    counters = Counters()
    payments = MeshClient(policy, service_name="orders")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        payments.close()

    app = FastAPI(title="orders", lifespan=lifespan, **fastapi_options())
    app.add_middleware(MeshMiddleware, policy=policy, service_name="orders")

    @app.post("/v1/orders", status_code=201)
    def place_order(order: OrderRequest) -> Order:
        order_id = uuid.uuid4().hex[:12]
        try:
            response = payments.put(
                f"http://payments/v1/charges/{order_id}",
                json={"amount_cents": order.amount_cents},
            )
        except meshlib.DeadlineExceeded:
            counters.add("deadline_exceeded")
            raise HTTPException(504, "payments did not answer within the deadline") from None
        except meshlib.CircuitOpenError:
            counters.add("circuit_open")
            raise HTTPException(503, "payments is failing: its circuit breaker is open") from None
        except httpx.TransportError as exc:
            counters.add("unreachable")
            raise HTTPException(502, f"payments unreachable: {exc!r}") from None
        if response.status_code != 200:
            counters.add("payment_failed")
            raise HTTPException(502, f"payments answered {response.status_code}")
        counters.add("placed")
        attempts = response.extensions.get("meshlib.attempts", ())
        return Order(
            order_id=order_id,
            item=order.item,
            amount_cents=order.amount_cents,
            payment=response.json(),
            payment_attempts=max(1, len(attempts)),
        )

    @app.get("/mesh/stats")
    def stats() -> dict[str, Any]:
        return stats_document("orders", counters)

    return app


def main() -> None:
    """Serve orders: uvicorn, with mutual TLS when MESH_TLS_CERT is set."""
    args = parse_args("orders", 8001)
    install_metrics()
    serve(create_app(), args, "asgi", tls=True)


if __name__ == "__main__":
    main()
