"""Trace context intake: the caller's trace (and baggage) from a request, by the configured propagators.

Extraction uses OpenTelemetry's global propagator (`OTEL_PROPAGATORS`: W3C
`tracecontext` and `baggage` by default, or `b3`, `b3multi`,
`jaeger`, ... as configured), with its W3C Trace Context part replaced by
[MeshTraceContextPropagator][meshlib.inbound.tracecontext.MeshTraceContextPropagator],
which applies the rules the OpenTelemetry propagator leaves out. Per the W3C
Trace Context Recommendation (Level 1) and Level 2, bad input never fails
the request, it only starts a new trace:

* **duplicated traceparent**: two `traceparent` fields are invalid and
  start a new trace (the W3C test suite's `test_traceparent_duplicated`);
  the OpenTelemetry propagator would quietly take the first one.
* **trace-flags**: `sampled` (`0x01`) and Level 2's `random`
  (`0x02`) are kept as the caller sent them; other bits are zeroed, as
  the spec says vendors MUST.
* **tracestate**: all fields are combined in order (RFC 9110 field order)
  and parsed to the grammar (keys `simple-key` or
  `tenant-id@system-id`, lower case, at most 256/241/14 characters;
  values of printable ASCII without `,` and `=`, not ending in a space;
  empty members skipped); an invalid member, a duplicated key or more than
  32 members discards the whole tracestate but keeps the traceparent,
  without a log line per request (the input is the caller's). A valid
  tracestate longer than [TRACESTATE_LIMIT][meshlib.inbound.tracecontext.TRACESTATE_LIMIT]
  characters is truncated as the spec asks: whole entries only, those over
  128 characters first, then from the end. It is never parsed when the
  traceparent is invalid.

Oversized traceparent values (over 512 characters) are ignored.

Example:
    ```python
    ctx = extract_context(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], [])
    trace.get_current_span(ctx).get_span_context().trace_id   # 0x4bf9...
    ```
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

__all__ = [
    "KNOWN_FLAGS",
    "SAMPLED_FLAG",
    "TRACESTATE_LIMIT",
    "ASGIHeaders",
    "EnvironHeaders",
    "MeshTraceContextPropagator",
    "extract_context",
    "extract_with_propagators",
    "inbound_propagator",
    "parent_span_context",
    "parse_tracestate",
    "truncate_tracestate",
]

SAMPLED_FLAG = 0x01
"""The `sampled` trace-flag."""

KNOWN_FLAGS = 0x03
"""The flags Level 2 defines, kept as received: `sampled` (0x01) and `random` (0x02); others are zeroed."""

TRACESTATE_LIMIT = 8192
"""Longest combined tracestate meshlib keeps and propagates (the spec asks for at least 512)."""

_PROHIBITIVE = 65536  # a tracestate this long is not worth parsing at all

_PROPAGATOR = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()

# W3C Trace Context, "tracestate" grammar (Level 1, unchanged in Level 2's draft).
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_MEMBERS = 32


def parse_tracestate(fields: Sequence[str]) -> list[tuple[str, str]] | None:
    """The members of the combined `tracestate` fields, or None when the header is invalid.

    Empty members (`a=1,,b=2`, optional whitespace around members) are
    skipped; a member that breaks the grammar, a key seen twice, or more
    than 32 members make the whole header invalid.

    Example:
        ```python
        parse_tracestate(["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"])
        # [("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]
        ```
    """
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for field in fields:
        for raw in field.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            key, equals, value = member.partition("=")
            if not equals or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
                return None
            if key in seen:
                return None
            seen.add(key)
            members.append((key, value))
            if len(members) > _MAX_MEMBERS:
                return None
    return members


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
    """Drop whole entries until the header fits `limit`: over-128-character ones first, from the end.

    `truncate_tracestate([("a", "1"), ("big", "x" * 200)], 10)` -> `[("a", "1")]`
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
    """The caller's span context, or `None` when there is none or it is invalid.

    `traceparent` and `tracestate` are every field of that name, in the
    order received (header names are case-insensitive; the driver folds them).

    Example:
        ```python
        parent_span_context(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
        ```
    """
    if len(traceparent) != 1:
        return None  # absent, or duplicated: both start a new trace
    span = trace.get_current_span(
        _PROPAGATOR.extract({"traceparent": traceparent}, Context(), _GETTER)
    )
    parent = span.get_span_context()
    if not parent.is_valid:
        return None
    state = _trace_state(tracestate)
    flags = parent.trace_flags & KNOWN_FLAGS
    return trace.SpanContext(
        trace_id=parent.trace_id,
        span_id=parent.span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(flags),
        trace_state=state,
    )


def _trace_state(fields: Sequence[str]) -> TraceState:
    """The caller's tracestate per the grammar, truncated to the limit; empty when invalid."""
    if not fields:
        return TraceState()
    length = _combined_length(fields)
    if length > _PROHIBITIVE:
        return TraceState()
    members = parse_tracestate(fields)
    if not members:
        return TraceState()
    if length > TRACESTATE_LIMIT:
        members = truncate_tracestate(members)
    return TraceState(members)


def extract_context(traceparent: Sequence[str], tracestate: Sequence[str] = ()) -> Context:
    """A fresh OpenTelemetry context holding the caller's span, or an empty one (new trace).

    Never raises, whatever the headers hold.

    Example:
        ```python
        ctx = extract_context(["garbage"], ["k=v"])   # empty context: a new trace starts
        ```
    """
    parent = parent_span_context(traceparent, tracestate)
    if parent is None:
        return Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())


class MeshTraceContextPropagator(TextMapPropagator):
    """OpenTelemetry's W3C Trace Context propagator with meshlib's stricter intake (see the module docstring).

    Injection is OpenTelemetry's: `00-<trace id>-<span id>-<flags>`, the
    flags as the span has them (Level 2's random flag included), and the
    span's tracestate.

    Example:
        ```python
        ctx = MeshTraceContextPropagator().extract({"traceparent": "00-...-01"})
        ```
    """

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        """The caller's span in `context`; `context` unchanged when it sent none (or an invalid one)."""
        base = context if context is not None else Context()
        traceparent = getter.get(carrier, "traceparent") or ()
        if len(traceparent) == 1 and len(traceparent[0]) > 512:
            return base
        parent = parent_span_context(traceparent, getter.get(carrier, "tracestate") or ())
        if parent is None:
            return base
        return trace.set_span_in_context(trace.NonRecordingSpan(parent), base)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Write `traceparent` (and `tracestate`) for the span in `context`."""
        _PROPAGATOR.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        """`{"traceparent", "tracestate"}`."""
        return _PROPAGATOR.fields


_MESH_W3C = MeshTraceContextPropagator()


def _is_default(textmap: object) -> bool:
    from meshlib.telemetry.quicktrace import _default_propagator

    return _default_propagator(textmap)


_cached: tuple[object, TextMapPropagator | None] = (None, None)


def inbound_propagator() -> TextMapPropagator | None:
    """The propagator requests are read with; None when it is the default (W3C and baggage).

    The global propagator with each W3C Trace Context propagator in it
    replaced by [MeshTraceContextPropagator][meshlib.inbound.tracecontext.MeshTraceContextPropagator];
    worked out once per global propagator.
    """
    global _cached
    textmap = propagate.get_global_textmap()
    if _cached[0] is textmap:
        return _cached[1]
    if _is_default(textmap):
        found: TextMapPropagator | None = None
    else:
        found = _wrap(textmap)
    _cached = (textmap, found)
    return found


def _wrap(textmap: TextMapPropagator) -> TextMapPropagator:
    if type(textmap) is TraceContextTextMapPropagator:
        return _MESH_W3C
    if type(textmap) is CompositePropagator:
        return CompositePropagator([_wrap(p) for p in textmap._propagators])
    return textmap


def extract_with_propagators(
    traceparent: Sequence[str],
    tracestate: Sequence[str],
    baggage: Sequence[str],
    carrier: Any,
    getter: Getter[Any],
) -> Context:
    """The caller's context from a request, by the configured propagators (never raises).

    With the default propagators the driver's already gathered
    `traceparent`/`tracestate`/`baggage` fields are used directly;
    otherwise the configured propagator reads `carrier` through `getter`.

    Example:
        ```python
        ctx = extract_with_propagators(["00-...-01"], [], [], headers, ASGIHeaders())
        ```
    """
    propagator = inbound_propagator()
    if propagator is None:
        context = extract_context(traceparent, tracestate)
        if baggage:
            try:
                context = _BAGGAGE.extract({"baggage": ",".join(baggage)}, context)
            except Exception:  # a caller's garbage never fails the request
                return extract_context(traceparent, tracestate)
        return context
    try:
        return propagator.extract(carrier, Context(), getter)
    except Exception:  # a third-party propagator choking on a caller's garbage
        return Context()


class ASGIHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads an ASGI scope's `headers` list (lower-case byte names) for a propagator, every field kept."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        """Every value of header `key`, in order; None when absent."""
        wanted = key.lower().encode("latin-1")
        found = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return found or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        """Every header name."""
        return [name.decode("latin-1") for name, _ in carrier]


class EnvironHeaders(Getter[MutableMapping[str, Any]]):
    """Reads a WSGI environ's `HTTP_*` entries for a propagator (servers join repeated fields)."""

    def get(self, carrier: MutableMapping[str, Any], key: str) -> list[str] | None:
        """The value of header `key` as a one-item list; None when absent."""
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: MutableMapping[str, Any]) -> list[str]:
        """Every header name."""
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]
