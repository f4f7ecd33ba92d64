"""A Prometheus scrape endpoint for meshlib's metrics (the `prometheus` extra).

OpenTelemetry's `PrometheusMetricReader` turns the meter provider's metrics
into a `prometheus_client` collector; this module serves that collector.
Three ways, from least to most integrated:

- `MESH_PROMETHEUS_PORT=9464`: `configure_telemetry` starts a server on
  `127.0.0.1:9464` (loopback only: a scraper on the same host or a port
  forward reaches it, the network does not).
- `start_prometheus_server(port)` does the same by hand.
- An application with its own `MeterProvider` adds a reader and mounts the
  app into its own web server:

  ```python
  endpoint = PrometheusEndpoint()
  provider = MeterProvider(metric_readers=[endpoint.reader])
  app.mount("/metrics", endpoint.asgi_app())      # or endpoint.wsgi_app()
  ```

Each endpoint has its own `CollectorRegistry` by default, so metrics from
one provider are never exposed twice; pass `registry=prometheus_client.REGISTRY`
to share the process-wide registry with the application's own collectors.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from meshlib.errors import SettingsError

if TYPE_CHECKING:
    from collections.abc import Callable
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

__all__ = ["PrometheusEndpoint", "start_prometheus_server"]

_HOST = "127.0.0.1"


def _import() -> tuple[Any, Any]:
    try:
        import prometheus_client
        from opentelemetry.exporter import prometheus as otel_prometheus
    except ImportError as exc:
        from meshlib.extras import install_hint

        raise SettingsError(
            f"Prometheus exposition needs its extra: run `{install_hint('prometheus')}`"
        ) from exc
    return prometheus_client, otel_prometheus


class PrometheusEndpoint:
    """A metric reader and the Prometheus exposition of what it reads.

    Give `reader` to a `MeterProvider`, then serve with `serve` or mount
    `wsgi_app` / `asgi_app`. `close` stops the server; the provider's own
    shutdown detaches the reader.

    Example:
        ```python
        endpoint = PrometheusEndpoint()
        provider = MeterProvider(metric_readers=[endpoint.reader])
        endpoint.serve(9464)         # http://127.0.0.1:9464/metrics
        ...
        endpoint.close()
        ```
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        prometheus_client, otel_prometheus = _import()
        self.registry: CollectorRegistry = (
            registry if registry is not None else prometheus_client.CollectorRegistry()
        )
        self.reader: PrometheusMetricReader = otel_prometheus.PrometheusMetricReader(
            registry=self.registry
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port `serve` listens on (useful after `serve(0)`), or None."""
        return None if self._server is None else int(self._server.server_port)

    def wsgi_app(self) -> Callable[..., Any]:
        """A WSGI app answering scrapes from this endpoint's registry."""
        prometheus_client, _ = _import()
        app: Callable[..., Any] = prometheus_client.make_wsgi_app(self.registry)
        return app

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app answering scrapes from this endpoint's registry."""
        prometheus_client, _ = _import()
        app: Callable[..., Any] = prometheus_client.make_asgi_app(self.registry)
        return app

    def serve(self, port: int) -> None:
        """Serve scrapes on `127.0.0.1:port` (`0` picks a free port) in a daemon thread."""
        prometheus_client, _ = _import()
        if self._server is not None:
            raise RuntimeError(f"already serving on {_HOST}:{self.port}")
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                port, addr=_HOST, registry=self.registry
            )
        except OSError as exc:
            raise SettingsError(
                f"MESH_PROMETHEUS_PORT={port}: cannot listen on {_HOST}:{port}: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        """Stop the server started by `serve`, if any; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def start_prometheus_server(
    port: int, *, registry: CollectorRegistry | None = None
) -> PrometheusEndpoint:
    """A `PrometheusEndpoint` already serving on `127.0.0.1:port`.

    Example:
        ```python
        endpoint = start_prometheus_server(9464)
        provider = MeterProvider(metric_readers=[endpoint.reader])
        ```
    """
    endpoint = PrometheusEndpoint(registry=registry)
    endpoint.serve(port)
    return endpoint
