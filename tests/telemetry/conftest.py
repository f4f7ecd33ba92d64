"""Telemetry fixtures: local in-memory providers, and a subprocess for anything global.

OpenTelemetry lets a process set its global providers once, so tests that
need `configure_telemetry` or a global provider run their code in a fresh
interpreter (`run_python`); everything else uses local providers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RunPython = Callable[..., Any]


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Spans finished on `tracer_provider`."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A local SDK tracer provider exporting synchronously to `span_exporter`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """Reads what `meter_provider` collected."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """A local SDK meter provider read by `metric_reader`."""
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Collected data points by metric name."""
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    if data is None:
        return points
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def run_snippet(
    code: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; its last stdout line is JSON, returned as `result`.

    MESH_*/OTEL_* variables are dropped, then `env` is added; warnings are errors there too.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**clean, "PYTHONWARNINGS": "error", **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"snippet failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    lines = result.stdout.strip().splitlines()
    return {"result": json.loads(lines[-1]), "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture
def run_python() -> RunPython:
    """`run_snippet`, for tests that need their own interpreter (global providers)."""
    return run_snippet
