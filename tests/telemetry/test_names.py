"""The name catalogue: standard names come from semconv, meshlib's own are namespaced and unique."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.semconv.metrics.http_metrics import (
    HTTP_CLIENT_REQUEST_DURATION,
    HTTP_SERVER_REQUEST_DURATION,
)

from meshlib.telemetry import names
from meshlib.telemetry.reference import constant_docs, render_telemetry_reference

from .conftest import metric_points


def test_http_durations_use_the_semconv_names_in_seconds() -> None:
    """The two HTTP duration histograms carry the stable semconv names, unit s and advised buckets."""
    assert names.CLIENT_REQUEST_DURATION.name == HTTP_CLIENT_REQUEST_DURATION
    assert names.SERVER_REQUEST_DURATION.name == HTTP_SERVER_REQUEST_DURATION
    for spec in (names.CLIENT_REQUEST_DURATION, names.SERVER_REQUEST_DURATION):
        assert (spec.kind, spec.unit, spec.buckets) == ("histogram", "s", names.DURATION_BUCKETS)


def test_own_names_are_namespaced_and_unique() -> None:
    """Every meshlib instrument, event and attribute name starts with meshlib. and none repeats."""
    own = [spec.name for spec in names.INSTRUMENTS if not spec.name.startswith("http.")]
    events = [getattr(names, n) for n in names.__all__ if n.startswith("EVENT_")]
    attributes = [getattr(names, n) for n in names.__all__ if n.startswith("ATTR_")]
    for group in (own, events, attributes):
        assert len(group) == len(set(group))
        assert all(name.startswith("meshlib.") for name in group), group
    assert len(events) == 9
    listed = {
        getattr(names, n) for n in names.__all__ if isinstance(getattr(names, n), names.Instrument)
    }
    assert listed == set(names.INSTRUMENTS)


def test_every_instrument_records_on_a_real_meter() -> None:
    """Each catalogue entry creates an instrument of its kind that the SDK exports under its name."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter(names.SCOPE)
    try:
        for spec in names.INSTRUMENTS:
            if spec.kind.startswith("observable_"):
                names.create_instrument(meter, spec, [lambda options: []])
                continue
            instrument = names.create_instrument(meter, spec)
            if spec.kind == "histogram":
                instrument.record(0.02, {names.ATTR_DESTINATION: "payments"})
            else:
                instrument.add(1, {names.ATTR_DESTINATION: "payments"})
        data = reader.get_metrics_data()
        assert data is not None
        exported = {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        for spec in names.INSTRUMENTS:
            if not spec.kind.startswith("observable_"):
                assert exported[spec.name].unit == spec.unit
                assert exported[spec.name].description == spec.description
        points = metric_points(reader)
        assert list(points[names.CLIENT_LATENCY_SERVICE.name][0].explicit_bounds) == list(
            names.DURATION_BUCKETS
        )
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("spec", "callbacks"),
    [(names.CLIENT_RETRIES, [lambda options: []]), (names.POLICY_REVISION, None)],
)
def test_create_instrument_refuses_mismatched_callbacks(
    spec: names.Instrument, callbacks: object
) -> None:
    """Callbacks are required exactly for observable instruments, with an error naming the instrument."""
    meter = MeterProvider().get_meter(names.SCOPE)
    with pytest.raises(TypeError, match=spec.name):
        names.create_instrument(meter, spec, callbacks)


def test_reference_page_lists_every_name_with_its_description() -> None:
    """The generated reference has a row for each instrument, event and attribute, none undocumented."""
    page = render_telemetry_reference()
    docs = constant_docs()
    for constant in names.__all__:
        value = getattr(names, constant)
        if constant.startswith(("EVENT_", "ATTR_")):
            assert docs[constant], constant
            assert f"| `{value}` | {docs[constant]} |" in page
        elif isinstance(value, names.Instrument):
            assert f"| `{value.name}` |" in page
