"""W3C Trace Context intake: ``traceparent`` and ``tracestate`` to an OpenTelemetry context.

Follows the W3C Trace Context Recommendation (Level 1): bad input never
fails the request, it only starts a new trace. OpenTelemetry's
``TraceContextTextMapPropagator`` does the field parsing, where it is
spec-correct; this module adds the rules it leaves out:

* **duplicated traceparent**: two ``traceparent`` fields are invalid and
  start a new trace (the W3C test suite's ``test_traceparent_duplicated``);
  the propagator would quietly take the first one.
* **unknown trace-flags**: only ``sampled`` (``0x01``) is defined; other
  bits are zeroed, as the spec says vendors MUST.
* **tracestate**: all fields are combined in order (RFC 9110 field order);
  an invalid member, a duplicated key or more than 32 members discards the
  whole tracestate but keeps the traceparent. A valid tracestate longer than
  :data:`TRACESTATE_LIMIT` characters is truncated as the spec asks: whole
  entries only, those over 128 characters first, then from the end. It is
  never parsed when the traceparent is invalid.

Oversized traceparent values (over 512 characters) are ignored::

    ctx = extract_context(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], [])
    trace.get_current_span(ctx).get_span_context().trace_id   # 0x4bf9...
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

__all__ = [
    "SAMPLED_FLAG",
    "TRACESTATE_LIMIT",
    "extract_context",
    "parent_span_context",
    "truncate_tracestate",
]

SAMPLED_FLAG = 0x01
"""The only trace-flag defined by the Recommendation; every other bit is zeroed."""

TRACESTATE_LIMIT = 8192
"""Longest combined tracestate meshlib keeps and propagates (the spec asks for at least 512)."""

_PROHIBITIVE = 65536  # a tracestate this long is not worth parsing at all

_PROPAGATOR = TraceContextTextMapPropagator()


class _FieldsGetter(Getter[dict[str, Sequence[str]]]):
    """Hands the propagator the header fields exactly as they arrived."""

    def get(self, carrier: dict[str, Sequence[str]], key: str) -> list[str] | None:
        values = carrier.get(key)
        return list(values) if values else None

    def keys(self, carrier: dict[str, Sequence[str]]) -> list[str]:
        return list(carrier)


_GETTER = _FieldsGetter()


def _size(entries: Sequence[tuple[str, str]]) -> int:
    return sum(len(key) + 1 + len(value) for key, value in entries) + max(0, len(entries) - 1)


def truncate_tracestate(
    entries: Sequence[tuple[str, str]], limit: int = TRACESTATE_LIMIT
) -> list[tuple[str, str]]:
    """Drop whole entries until the header fits ``limit``: over-128-character ones first, from the end.

    ``truncate_tracestate([("a", "1"), ("big", "x" * 200)], 10)`` -> ``[("a", "1")]``
    """
    kept = list(entries)
    for index in range(len(kept) - 1, -1, -1):
        if _size(kept) <= limit:
            return kept
        key, value = kept[index]
        if len(key) + 1 + len(value) > 128:
            del kept[index]
    while kept and _size(kept) > limit:
        kept.pop()
    return kept


def _combined_length(fields: Sequence[str]) -> int:
    return sum(len(field) for field in fields) + max(0, len(fields) - 1)


def parent_span_context(
    traceparent: Sequence[str], tracestate: Sequence[str] = ()
) -> trace.SpanContext | None:
    """The caller's span context, or ``None`` when there is none or it is invalid.

    ``traceparent`` and ``tracestate`` are every field of that name, in the
    order received (header names are case-insensitive; the driver folds them)::

        parent_span_context(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
    """
    if len(traceparent) != 1:
        return None  # absent, or duplicated: both start a new trace
    carrier: dict[str, Sequence[str]] = {"traceparent": traceparent}
    oversized = _combined_length(tracestate) > TRACESTATE_LIMIT
    if tracestate and not oversized:
        carrier["tracestate"] = tracestate
    span = trace.get_current_span(_PROPAGATOR.extract(carrier, Context(), _GETTER))
    parent = span.get_span_context()
    if not parent.is_valid:
        return None
    state = parent.trace_state
    if oversized:  # the propagator would drop it whole; the spec asks to truncate it
        fields = [] if _combined_length(tracestate) > _PROHIBITIVE else list(tracestate)
        state = TraceState(truncate_tracestate(list(TraceState.from_header(fields).items())))
    flags = parent.trace_flags & SAMPLED_FLAG
    if flags != parent.trace_flags or state is not parent.trace_state:
        parent = trace.SpanContext(
            trace_id=parent.trace_id,
            span_id=parent.span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=state,
        )
    return parent


def extract_context(traceparent: Sequence[str], tracestate: Sequence[str] = ()) -> Context:
    """A fresh OpenTelemetry context holding the caller's span, or an empty one (new trace).

    Never raises, whatever the headers hold::

        ctx = extract_context(["garbage"], ["k=v"])   # empty context: a new trace starts
    """
    parent = parent_span_context(traceparent, tracestate)
    if parent is None:
        return Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())
