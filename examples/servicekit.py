"""What the three example services share: counters, metrics and the `/mesh/stats` document.

Each example service (`frontend`, `orders`, `payments`) answers
`GET /mesh/stats` with a JSON document built here from its own telemetry:

* `mesh`: meshlib's outbound state, `meshlib.outbound.stats.snapshot()`
  (requests, errors, retries, budget refusals, latency percentiles and breaker
  state per destination and endpoint);
* `metrics`: meshlib's OpenTelemetry counters and the latency split
  (service / network / meshlib) per edge, read from an in-memory metric reader;
* `app`: the service's own counters (orders placed, deadlines hit, ...).

The demo (`examples/demo.py`) polls these documents to tell what happened:

```python
counters = Counters()
counters.add("charged")
stats_document("payments", counters)   # {"service": "payments", "app": {...}, ...}
```
"""

from __future__ import annotations

import argparse
import inspect
import os
import threading
from pathlib import Path
from typing import Any, Literal

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from meshlib.telemetry import names

__all__ = [
    "DEV_POLICY",
    "Counters",
    "fastapi_options",
    "install_metrics",
    "mesh_snapshot",
    "metric_summary",
    "parse_args",
    "serve",
    "stats_document",
]

DEV_POLICY = Path(__file__).with_name("mesh.yaml")
"""The dev policy: used when neither MESH_POLICY_FILE nor MESH_CONTROL_PLANE_URL is set."""

_SPLIT = {
    names.CLIENT_LATENCY_SERVICE.name: "service",
    names.CLIENT_LATENCY_NETWORK.name: "network",
    names.CLIENT_LATENCY_UNKNOWN.name: "unknown",
    names.CLIENT_LATENCY_MESHLIB.name: "meshlib",
}

_SPLIT_PARTS = ("service", "network", "unknown", "meshlib", "waits")

_reader_lock = threading.Lock()
_reader: InMemoryMetricReader | None = None


class Counters:
    """Named counters an example service keeps about its own work; safe across threads.

    `counters.add("deadline_exceeded")` then `counters.snapshot()` ->
    `{"deadline_exceeded": 1}`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name` (created at zero)."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)


def fastapi_options() -> dict[str, Any]:
    """`FastAPI(**fastapi_options())`: leave server spans and metrics to MeshMiddleware.

    FastAPI releases with built-in OpenTelemetry (the `telemetry=` argument)
    would record a second SERVER span and a second `http.server.request.duration`
    beside meshlib's; older releases record none and lack the argument.
    """
    from fastapi import FastAPI

    if "telemetry" in inspect.signature(FastAPI).parameters:
        return {"telemetry": {"tracing": False, "metrics": False}}
    return {}


def install_metrics() -> InMemoryMetricReader:
    """Install a global MeterProvider with an in-memory reader, once per process.

    meshlib records its metrics on whatever provider is global when a call is
    made, so this may run after the clients were built.
    """
    global _reader
    with _reader_lock:
        if _reader is None:
            _reader = InMemoryMetricReader()
            metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
        return _reader


def mesh_snapshot() -> dict[str, Any]:
    """meshlib's outbound state for this process, or `{}` when this meshlib has none."""
    try:
        from meshlib.outbound.stats import snapshot
    except ImportError:
        return {}
    return dict(snapshot())


def _key(attributes: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dict(attributes or {}).items()))


def metric_summary() -> dict[str, Any]:
    """meshlib's metrics so far: counter totals by attributes, and the latency split per edge.

    ``{"counters": {"meshlib.client.retries": {"meshlib.destination=payments,...": 7}},
    "latency_split": {"orders->payments": {"service_ms": 1.2, "network_ms": 0.4,
    "meshlib_ms": 0.1, "calls": 50}}}``; empty without `install_metrics`.
    """
    reader = _reader
    counters: dict[str, dict[str, float]] = {}
    split: dict[str, dict[str, float]] = {}
    data = reader.get_metrics_data() if reader is not None else None
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != names.SCOPE:
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint) and metric.name in _SPLIT:
                        attrs = dict(point.attributes or {})
                        edge = (
                            f"{attrs.get(names.ATTR_CALLER, '?')}->"
                            f"{attrs.get(names.ATTR_DESTINATION, '?')}"
                        )
                        row = split.setdefault(edge, {})
                        part = _SPLIT[metric.name]
                        row[f"{part}_sum_ms"] = row.get(f"{part}_sum_ms", 0.0) + point.sum * 1000
                        row[f"{part}_calls"] = row.get(f"{part}_calls", 0.0) + point.count
                    elif isinstance(point, NumberDataPoint):
                        by_attrs = counters.setdefault(metric.name, {})
                        by_attrs[_key(point.attributes)] = float(point.value)
    latency_split = {
        edge: {
            **{
                f"{part}_ms": row[f"{part}_sum_ms"] / row[f"{part}_calls"]
                for part in _SPLIT.values()
                if row.get(f"{part}_calls")
            },
            "calls": max(row.get(f"{part}_calls", 0.0) for part in _SPLIT.values()),
        }
        for edge, row in split.items()
    }
    return {"counters": counters, "latency_split": latency_split}


def _split_from_snapshot(service: str, mesh: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean split per call from the snapshot's `latency_split_s` sums, where meshlib keeps them."""
    split: dict[str, dict[str, float]] = {}
    for dest, row in (mesh.get("destinations") or {}).items():
        sums = row.get("latency_split_s") or {}
        calls = float(sums.get("calls") or 0)
        if calls:
            split[f"{service}->{dest}"] = {
                **{
                    f"{part}_ms": 1000 * float(sums.get(part, 0.0)) / calls for part in _SPLIT_PARTS
                },
                "calls": calls,
            }
    return split


def stats_document(service: str, counters: Counters) -> dict[str, Any]:
    """The `/mesh/stats` document of `service`.

    The latency split per edge comes from meshlib's outbound snapshot when it
    sums the split of every call, else from its split histograms.
    """
    mesh = mesh_snapshot()
    summary = metric_summary()
    summary["latency_split"] = {
        **summary["latency_split"],
        **_split_from_snapshot(service, mesh),
    }
    return {
        "service": service,
        "pid": os.getpid(),
        "app": counters.snapshot(),
        "mesh": mesh,
        "metrics": summary,
    }


def parse_args(service: str, default_port: int) -> argparse.Namespace:
    """`--host`/`--port` for a service, and the dev policy unless MESH_* says otherwise.

    Without `MESH_POLICY_FILE` or `MESH_CONTROL_PLANE_URL` in the
    environment, the service runs against `examples/mesh.yaml`.
    """
    parser = argparse.ArgumentParser(description=f"The {service} example service.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=default_port, help="port to listen on")
    args = parser.parse_args()
    if not os.environ.get("MESH_POLICY_FILE") and not os.environ.get("MESH_CONTROL_PLANE_URL"):
        os.environ["MESH_POLICY_FILE"] = str(DEV_POLICY)
    os.environ.setdefault("MESH_SERVICE_NAME", service)
    return args


def serve(app: Any, args: argparse.Namespace, kind: Literal["asgi", "wsgi"], *, tls: bool) -> None:
    """Serve `app` until interrupted: with mutual TLS when `tls` and MESH_TLS_CERT is set.

    Mutual TLS goes through `meshlib.serve.serve()`, which takes the certificate, key
    and client CA from MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA and hands
    the caller's certificate to the middleware (its SPIFFE ID is the caller's
    identity for authz). Otherwise: plain HTTP, uvicorn or werkzeug.
    """
    if tls and os.environ.get("MESH_TLS_CERT"):
        from meshlib.serve import serve as serve_mtls

        serve_mtls(app, host=args.host, port=args.port, interface=kind)
    elif kind == "asgi":
        import uvicorn

        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    else:
        from werkzeug.serving import run_simple

        run_simple(args.host, args.port, app, threaded=True)
