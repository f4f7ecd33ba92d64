"""Prometheus exposition: meshlib's metrics scraped over 127.0.0.1, served or mounted."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider

from meshlib.errors import SettingsError
from meshlib.telemetry import names
from meshlib.telemetry.prometheus import PrometheusEndpoint, start_prometheus_server
from tests.support.servers import serve_asgi, serve_wsgi


@pytest.fixture
def endpoint() -> Iterator[PrometheusEndpoint]:
    """An endpoint whose reader feeds a local provider with two meshlib instruments recorded."""
    endpoint = PrometheusEndpoint()
    provider = MeterProvider(metric_readers=[endpoint.reader])
    meter = provider.get_meter(names.SCOPE)
    retries = names.create_instrument(meter, names.CLIENT_RETRIES)
    retries.add(3, {names.ATTR_DESTINATION: "payments", names.ATTR_RETRY_REASON: "503"})
    names.create_instrument(meter, names.CLIENT_LATENCY_SERVICE).record(
        0.02, {names.ATTR_DESTINATION: "payments"}
    )
    yield endpoint
    endpoint.close()
    provider.shutdown()


def _assert_meshlib_metrics(text: str) -> None:
    assert 'meshlib_client_retries_total{meshlib_destination="payments"' in text
    assert 'meshlib_retry_reason="503"' in text
    assert "meshlib_client_service_duration_seconds_bucket" in text


def test_served_on_loopback(endpoint: PrometheusEndpoint) -> None:
    """serve(0) listens on 127.0.0.1 and a scrape returns meshlib's counters and histograms."""
    endpoint.serve(0)
    assert endpoint.port
    response = httpx.get(f"http://127.0.0.1:{endpoint.port}/metrics")
    assert response.status_code == 200
    _assert_meshlib_metrics(response.text)
    with pytest.raises(RuntimeError, match="already serving"):
        endpoint.serve(0)
    endpoint.close()
    endpoint.close()
    assert endpoint.port is None


def test_wsgi_app_mounts_in_a_wsgi_server(endpoint: PrometheusEndpoint) -> None:
    """wsgi_app() answers scrapes from a WSGI server the application runs."""
    with serve_wsgi(endpoint.wsgi_app()) as server:
        _assert_meshlib_metrics(httpx.get(server.url + "/metrics").text)


def test_asgi_app_mounts_in_an_asgi_server(endpoint: PrometheusEndpoint) -> None:
    """asgi_app() answers scrapes from an ASGI server the application runs."""
    with serve_asgi(endpoint.asgi_app()) as server:
        _assert_meshlib_metrics(httpx.get(server.url + "/metrics").text)


def test_busy_port_is_a_settings_error(endpoint: PrometheusEndpoint) -> None:
    """A port already taken fails with a SettingsError naming MESH_PROMETHEUS_PORT and the address."""
    endpoint.serve(0)
    port = endpoint.port
    assert port is not None
    with pytest.raises(
        SettingsError, match=f"MESH_PROMETHEUS_PORT={port}: cannot listen on 127.0.0.1"
    ):
        start_prometheus_server(port)


def test_missing_extra_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, building an endpoint says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(SettingsError, match=r"pip install 'servicemeshlib\[prometheus\]'"):
        PrometheusEndpoint()
