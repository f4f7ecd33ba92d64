"""ProviderGate: a real provider is noticed, a missing one is asked about at most once a second."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider

from meshlib.telemetry.providers import ProviderGate, is_real_provider


def test_sdk_and_api_providers_told_apart() -> None:
    assert is_real_provider(MeterProvider())
    assert not is_real_provider(NoOpMeterProvider())


def test_explicit_provider_is_real_without_asking() -> None:
    asked: list[int] = []
    gate = ProviderGate(MeterProvider(), lambda: asked.append(1))
    assert gate(0.0)
    assert gate(100.0)
    assert asked == []


def test_explicit_noop_provider_is_off_whatever_the_global() -> None:
    """A no-op provider given explicitly turns telemetry off for good, even with an SDK installed globally."""
    asked: list[int] = []
    gate = ProviderGate(NoOpMeterProvider(), lambda: asked.append(1) or MeterProvider())
    assert not gate(0.0)
    assert not gate(100.0)
    assert asked == []


def test_a_no_is_remembered_for_a_second_then_asked_again() -> None:
    current: list[object] = [NoOpMeterProvider()]
    asked: list[float] = []

    def get_global() -> object:
        asked.append(1)
        return current[0]

    gate = ProviderGate(None, get_global)
    assert not gate(10.0)
    current[0] = MeterProvider()  # the application sets its provider
    assert not gate(10.5)  # still the remembered "no"
    assert len(asked) == 1
    assert gate(11.0)
    assert gate(50.0)  # a "yes" is kept for good
    assert len(asked) == 2


def test_api_proxies_are_not_real() -> None:
    assert not is_real_provider(trace.ProxyTracerProvider())
    assert not is_real_provider(trace.NoOpTracerProvider())
    assert not is_real_provider(metrics_internal._ProxyMeterProvider())
