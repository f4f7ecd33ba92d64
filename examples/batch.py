"""batch: a plain asyncio program, no web framework, that places orders through the mesh.

It calls `http://frontend/checkout` by service name with an
`AsyncMeshClient`, a few calls at a time, and gives the whole batch one
deadline with `meshlib.deadline.deadline_scope`: every call is capped by
the time the batch has left, and frontend, orders and payments receive it as
`x-mesh-deadline-ms`, so nothing keeps working for a batch that gave up:

```text
python examples/batch.py --orders 50 --within 10
```

Like the services, it reads `examples/mesh.yaml` unless MESH_POLICY_FILE or
MESH_CONTROL_PLANE_URL says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter

import httpx
from servicekit import DEV_POLICY

import meshlib
from meshlib.clock import SYSTEM_CLOCK
from meshlib.deadline import Deadline, deadline_scope

__all__ = ["main", "place_orders"]


async def _checkout(client: meshlib.AsyncMeshClient, gate: asyncio.Semaphore) -> str:
    async with gate:
        try:
            response = await client.post("http://frontend/checkout", json={"item": "book"})
        except meshlib.DeadlineExceeded:
            return "deadline"
        except httpx.TransportError as exc:
            return type(exc).__name__
        return "paid" if response.status_code == 200 else str(response.status_code)


async def place_orders(
    client: meshlib.AsyncMeshClient, count: int, *, within: float, concurrency: int = 5
) -> Counter[str]:
    """Place `count` orders, at most `concurrency` at once, all within `within` seconds.

    Returns how many ended which way: `paid`, `deadline`, an HTTP status, or an error name.
    """
    gate = asyncio.Semaphore(concurrency)
    with deadline_scope(Deadline.after(within, SYSTEM_CLOCK)):
        # gather() copies this context into each task, deadline included.
        outcomes = await asyncio.gather(*(_checkout(client, gate) for _ in range(count)))
    return Counter(outcomes)


async def _run(count: int, within: float) -> Counter[str]:
    async with meshlib.AsyncMeshClient(service_name="batch") as client:
        return await place_orders(client, count, within=within)


def main() -> None:
    """Place the orders and print how they ended."""
    parser = argparse.ArgumentParser(description="Place orders through the example mesh.")
    parser.add_argument("--orders", type=int, default=20, help="how many (default 20)")
    parser.add_argument("--within", type=float, default=10.0, help="seconds for all of them")
    args = parser.parse_args()
    if not os.environ.get("MESH_POLICY_FILE") and not os.environ.get("MESH_CONTROL_PLANE_URL"):
        os.environ["MESH_POLICY_FILE"] = str(DEV_POLICY)
    outcomes = asyncio.run(_run(args.orders, args.within))
    print(", ".join(f"{n} {outcome}" for outcome, n in outcomes.most_common()))


if __name__ == "__main__":
    main()
