"""OpenTelemetry as a production service would configure it, with a switch for sampling.

One SDK ``TracerProvider`` is installed globally before any client exists,
with the sampler shape a production service has (the SDK default,
``ParentBased``, as ``OTEL_TRACES_SAMPLER=parentbased_*`` and
``MESH_TRACE_SAMPLE_RATIO`` configure it) whose root the bench flips per
path: ``ALWAYS_OFF`` for the "unsampled" paths (as with a low sampling
ratio, for a call that is not sampled) and ``ALWAYS_ON`` for the "sampled"
ones. Finished spans go through a
``SimpleSpanProcessor`` to an exporter that only counts them, so the bench pays
for recording a span but not for a network export. An SDK ``MeterProvider``
with an in-memory reader (never collected during a round) is installed too,
because a service that traces also counts::

    tel = install()
    with tel.sampling(True):
        client.get(url)
    tel.spans_exported
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

__all__ = ["Telemetry", "install"]


class _SwitchSampler(ParentBased):
    """``ParentBased`` with a root sampler the bench can swap (a plain SDK sampler otherwise)."""

    def __init__(self) -> None:
        super().__init__(root=ALWAYS_OFF)

    @property
    def current(self) -> Sampler:
        return self._root  # type: ignore[no-any-return]

    @current.setter
    def current(self, sampler: Sampler) -> None:
        self._root = sampler


class _CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Telemetry:
    """The installed providers and the sampling switch."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _sampler: _SwitchSampler
    _exporter: _CountingExporter

    @property
    def spans_exported(self) -> int:
        """Spans finished and exported (only sampled paths export any)."""
        return self._exporter.count

    @contextmanager
    def sampling(self, on: bool) -> Iterator[None]:
        """Sample every new trace inside the block (``on``) or none of them."""
        previous = self._sampler.current
        self._sampler.current = ALWAYS_ON if on else ALWAYS_OFF
        try:
            yield
        finally:
            self._sampler.current = previous

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def install() -> Telemetry:
    """Install the SDK providers globally (once per process) and return the switch."""
    sampler = _SwitchSampler()
    exporter = _CountingExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider, meter_provider, sampler, exporter)
