"""The SERVER span of an unsampled caller's request is the SDK's drop, made without the SDK."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan

from meshlib.inbound.core import RequestInfo
from meshlib.inbound.tracecontext import extract_context
from meshlib.telemetry.server import ServerTelemetry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _telemetry_that_must_not_ask_the_sdk() -> ServerTelemetry:
    telemetry = ServerTelemetry(tracer_provider=TracerProvider())

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the SDK's start_span was called")

    telemetry.tracer.start_span = refuse  # type: ignore[method-assign]
    return telemetry


def test_unsampled_caller_takes_the_quick_drop() -> None:
    telemetry = _telemetry_that_must_not_ask_the_sdk()
    parent = extract_context([f"00-{TRACE_ID}-{PARENT_ID}-00"], ["vendor=x"])
    span = telemetry.start(RequestInfo("GET", "/"), parent)
    assert isinstance(span, NonRecordingSpan)
    context = span.get_span_context()
    assert f"{context.trace_id:032x}" == TRACE_ID
    assert f"{context.span_id:016x}" != PARENT_ID
    assert not context.trace_flags.sampled
    assert not context.is_remote
    assert context.trace_state.to_header() == "vendor=x"


@pytest.mark.parametrize("traceparent", [f"00-{TRACE_ID}-{PARENT_ID}-01", None])
def test_a_sampled_caller_or_a_new_trace_asks_the_sdk(traceparent: str | None) -> None:
    telemetry = _telemetry_that_must_not_ask_the_sdk()
    parent = extract_context([traceparent] if traceparent else [])
    with pytest.raises(AssertionError, match="start_span was called"):
        telemetry.start(RequestInfo("GET", "/"), parent)
