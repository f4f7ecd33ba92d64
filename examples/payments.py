"""payments: a Flask service behind MeshWSGIMiddleware, flaky on demand.

It captures charges with an idempotent `PUT /v1/charges/<id>` (a retried
charge is answered from memory, never charged twice). `PUT /admin/fault`
makes it fail or slow down, so the callers' retries, breaker, retry budget
and deadlines have something to do (`{"fail_next": 2}` fails exactly the next
two charges):

```text
curl -X PUT localhost:8002/admin/fault -H 'content-type: application/json' \\
     -d '{"error_rate": 0.5}'           # half the charges answer 503
curl -X PUT localhost:8002/admin/fault -H 'content-type: application/json' \\
     -d '{"delay": 1.5, "delay_rate": 0.3}'   # 3 charges in 10 take 1.5 s
curl -X PUT localhost:8002/admin/fault -d '{}' -H 'content-type: application/json'   # healthy
```

Run it with `python examples/payments.py` (port 8002, policy `examples/mesh.yaml`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from flask import Flask, request
from servicekit import Counters, install_metrics, parse_args, serve, stats_document

import meshlib
from meshlib import MeshWSGIMiddleware

__all__ = ["FaultSwitch", "create_app", "main"]

_REMEMBERED_CHARGES = 10_000


@dataclass
class FaultSwitch:
    """The failure this instance fakes: a share of errors, and a delay on a share of answers."""

    error_rate: float = 0.0
    status: int = 503
    delay: float = 0.0
    delay_rate: float = 1.0
    fail_next: int = 0

    def update(self, document: dict[str, Any]) -> None:
        """Replace the fault with `document`'s keys; a missing key means healthy."""
        error_rate = float(document.get("error_rate", 0.0))
        status = int(document.get("status", 503))
        delay = float(document.get("delay", 0.0))
        delay_rate = float(document.get("delay_rate", 1.0))
        fail_next = int(document.get("fail_next", 0))
        if not (
            0.0 <= error_rate <= 1.0
            and 500 <= status <= 599
            and 0.0 <= delay <= 30.0
            and 0.0 <= delay_rate <= 1.0
            and 0 <= fail_next <= 1000
        ):
            raise ValueError(
                "error_rate and delay_rate are 0..1, status 500..599, delay 0..30 seconds, "
                "fail_next 0..1000"
            )
        self.error_rate, self.status = error_rate, status
        self.delay, self.delay_rate = delay, delay_rate
        self.fail_next = fail_next

    def fails(self) -> bool:
        """Whether this charge should fail: one of the next `fail_next`, or by chance."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return random.random() < self.error_rate

    def as_dict(self) -> dict[str, Any]:
        """The fault as JSON."""
        return {
            "error_rate": self.error_rate,
            "status": self.status,
            "delay": self.delay,
            "delay_rate": self.delay_rate,
            "fail_next": self.fail_next,
        }


def create_app(policy: meshlib.Policy | meshlib.PolicyStore | str | None = None) -> Flask:
    """The payments Flask app, wrapped in meshlib's WSGI middleware.

    `policy` as for MeshWSGIMiddleware: None reads MESH_POLICY_FILE or the control plane.
    """
    app = Flask("payments")
    fault = FaultSwitch()
    counters = Counters()
    lock = threading.Lock()
    charges: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @app.put("/v1/charges/<charge_id>")
    def capture(charge_id: str) -> tuple[dict[str, Any], int]:
        counters.add("requests")
        body = request.get_json(silent=True) or {}
        if fault.delay and random.random() < fault.delay_rate:
            time.sleep(fault.delay)
        with lock:
            failing = fault.fails()
        if failing:
            counters.add("failed")
            return {"error": "payments is failing on purpose (see PUT /admin/fault)"}, fault.status
        with lock:
            charge = charges.get(charge_id)
            if charge is None:
                counters.add("charged")
                charge = {
                    "charge_id": charge_id,
                    "amount_cents": int(body.get("amount_cents", 0)),
                    "status": "captured",
                    # What was left of the caller's deadline when the charge arrived.
                    "deadline_ms": request.headers.get("x-mesh-deadline-ms"),
                }
                charges[charge_id] = charge
                if len(charges) > _REMEMBERED_CHARGES:
                    charges.popitem(last=False)
            else:
                counters.add("replayed")
        return charge, 200

    @app.get("/admin/fault")
    def show_fault() -> dict[str, Any]:
        return fault.as_dict()

    @app.put("/admin/fault")
    def set_fault() -> tuple[dict[str, Any], int]:
        try:
            fault.update(request.get_json(force=True) or {})
        except (TypeError, ValueError, AttributeError) as exc:
            return {"error": str(exc)}, 422
        return fault.as_dict(), 200

    @app.get("/mesh/stats")
    def stats() -> dict[str, Any]:
        return stats_document("payments", counters)

    app.wsgi_app = MeshWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, policy=policy, service_name="payments"
    )
    return app


def main() -> None:
    """Serve payments: werkzeug, with mutual TLS when MESH_TLS_CERT is set."""
    args = parse_args("payments", 8002)
    install_metrics()
    serve(create_app(), args, "wsgi", tls=True)


if __name__ == "__main__":
    main()
