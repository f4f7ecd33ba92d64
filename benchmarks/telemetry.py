"""OpenTelemetry as a production service configures it, with a switch for the sampled paths.

The judged paths run what a production service runs: an SDK
`TracerProvider` sampling `ParentBased(TraceIdRatioBased(0.01))` (1% of
new traces, as `OTEL_TRACES_SAMPLER=parentbased_traceidratio` and
`OTEL_TRACES_SAMPLER_ARG=0.01` set it up) with a `BatchSpanProcessor`, and
an SDK `MeterProvider` with a `PeriodicExportingMetricReader`. The
exporters only count what they are given, so the bench pays for recording,
batching and collecting but not for a network export. The `*-sampled` paths
flip the root sampler to `ALWAYS_ON` (every span recorded), to show what a
recorded trace costs:

```python
tel = install()
with tel.sampling(True):
    client.get(url)
tel.spans_exported
```
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

__all__ = ["METRIC_INTERVAL_S", "SAMPLE_RATIO", "Telemetry", "install"]

SAMPLE_RATIO = 0.01
"""The share of new traces sampled on the judged paths."""
METRIC_INTERVAL_S = 10.0
"""How often the periodic reader collects and exports (several times per run, so it is paid for)."""


class _SwitchSampler(ParentBased):
    """`ParentBased` with a root sampler the bench can swap (a plain SDK sampler otherwise)."""

    def __init__(self, production: Sampler) -> None:
        super().__init__(root=production)
        self.production = production

    @property
    def current(self) -> Sampler:
        return self._root  # type: ignore[no-any-return]

    @current.setter
    def current(self, sampler: Sampler) -> None:
        self._root = sampler


class _CountingSpans(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _CountingMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@dataclass
class Telemetry:
    """The installed providers and the sampling switch."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _sampler: _SwitchSampler
    _spans: _CountingSpans
    _metrics: _CountingMetrics

    @property
    def spans_exported(self) -> int:
        """Spans finished and exported so far."""
        return self._spans.count

    @property
    def metric_exports(self) -> int:
        """Periodic metric exports so far."""
        return self._metrics.exports

    @contextmanager
    def sampling(self, on: bool) -> Iterator[None]:
        """Sample every new trace inside the block (`on`), or the production 1%."""
        previous = self._sampler.current
        self._sampler.current = ALWAYS_ON if on else self._sampler.production
        try:
            yield
        finally:
            self._sampler.current = previous

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def install(ratio: float = SAMPLE_RATIO, interval_s: float = METRIC_INTERVAL_S) -> Telemetry:
    """Install the production-shaped SDK providers globally (once per process) and return the switch."""
    sampler = _SwitchSampler(TraceIdRatioBased(ratio))
    spans = _CountingSpans()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    exporter = _CountingMetrics()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000)
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider, meter_provider, sampler, spans, exporter)
