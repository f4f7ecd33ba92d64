"""The unsampled fast path: a standard sampler's "drop" decided without building a span.

With an SDK tracer provider installed, `tracer.start_span` for a call that
will not be sampled still generates ids, runs the sampler, builds a
`SamplingResult`, a `SpanContext` and a `NonRecordingSpan` (about 3 us
here), and `propagate.inject` then runs the composite propagator (about
3 us more) to write one header. For the samplers the SDK ships and
`OTEL_TRACES_SAMPLER` selects (`ParentBased`, `always_off`/`always_on`,
`TraceIdRatioBased`) the decision is a few attribute reads, so
`QuickTrace` makes it itself and, when the global propagator is the
default W3C one, writes `traceparent` (and the parent's `tracestate`)
directly:

```text
00-<trace id, 32 hex>-<span id, 16 hex>-<flags, 2 hex>
```

Anything else (a custom sampler or id generator wrapper the SDK does not
describe, a sampler that would record, other propagators, baggage in the
context) returns None or a plain `NonRecordingSpan`, and the caller takes the
SDK's own path. Skipped spans are never recorded spans: the SDK creates a
`NonRecordingSpan` for them too, and calls no span processor. The inbound
middleware uses the same decision for the SERVER span of a request whose
caller's trace is not sampled (`unsampled(parent_context, as_span=True)`):

```python
quick = QuickTrace(tracer)
decided = quick.unsampled()     # None: ask the SDK
```
"""

from __future__ import annotations

from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanContext, TraceFlags

__all__ = ["QuickTrace", "Unsampled"]

_TRACE_ID_LIMIT = (1 << 64) - 1
_RANDOM_FLAG = 0x02  # W3C Trace Context level 2 "random trace id"


class Unsampled:
    """An unsampled call's trace context: either the header values, or a span to inject."""

    __slots__ = ("span", "traceparent", "tracestate")

    def __init__(
        self, traceparent: str | None, tracestate: str | None, span: trace.Span | None
    ) -> None:
        self.traceparent = traceparent
        """The `traceparent` value to write (None: inject `span` with the global propagator)."""
        self.tracestate = tracestate
        self.span = span


_SDK: tuple[Any, Any] | None = None


def _sdk() -> tuple[Any, Any]:
    # Imported only once an SDK provider is in place (so the SDK is loaded already).
    global _SDK
    if _SDK is None:
        from opentelemetry.sdk import trace as sdk_trace
        from opentelemetry.sdk.trace import sampling

        _SDK = sdk_trace, sampling
    return _SDK


def _default_propagator(textmap: object) -> bool:
    """Whether `textmap` is OpenTelemetry's default: W3C trace context (and baggage) only."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if type(textmap) is TraceContextTextMapPropagator:
        return True
    if type(textmap) is not CompositePropagator:
        return False
    kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
    return kinds in (
        [TraceContextTextMapPropagator],
        [TraceContextTextMapPropagator, W3CBaggagePropagator],
    )


class QuickTrace:
    """Decides, for one tracer, whether a new call span would surely be dropped.

    Example:
        ```python
        decided = QuickTrace(tracer).unsampled()
        if decided is None:
            span = tracer.start_span("meshlib.call GET")
        ```
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._sdk_tracer: Any = None
        self._sampling: Any = None
        self._foreign = False
        self._textmap: object = None
        self._textmap_default = False

    def _resolve(self) -> Any:
        """The SDK tracer behind `tracer` (a global-provider proxy resolves once set), or None."""
        tracer: Any = self._tracer
        real = getattr(tracer, "_real_tracer", None)
        if real is None and hasattr(tracer, "_real_tracer"):
            real = tracer._tracer  # the proxy binds to the global provider on first use
        candidate = real if real is not None else tracer
        if type(candidate).__name__ in ("NoOpTracer", "ProxyTracer"):
            return None  # no SDK in place (perhaps none installed): ask again next time
        try:
            sdk_trace, self._sampling = _sdk()
        except ImportError:  # another SDK, without OpenTelemetry's installed
            self._foreign = True
            return None
        if type(candidate) is sdk_trace.Tracer:
            self._sdk_tracer = candidate
        else:
            self._foreign = True  # another SDK: it always decides, never asked again
        return self._sdk_tracer

    def _drops(self, sampler: Any, parent: SpanContext | None, trace_id: int) -> bool:
        """True only when one of the SDK's own samplers surely drops this span."""
        sampling = self._sampling
        if type(sampler).should_sample is sampling.ParentBased.should_sample:
            if parent is None:
                sampler = sampler._root
            elif parent.is_remote:
                sampler = (
                    sampler._remote_parent_sampled
                    if parent.trace_flags.sampled
                    else sampler._remote_parent_not_sampled
                )
            else:
                sampler = (
                    sampler._local_parent_sampled
                    if parent.trace_flags.sampled
                    else sampler._local_parent_not_sampled
                )
        should_sample = type(sampler).should_sample
        if should_sample is sampling.StaticSampler.should_sample:
            return sampler._decision is sampling.Decision.DROP
        if should_sample is sampling.TraceIdRatioBased.should_sample:
            return not (trace_id & _TRACE_ID_LIMIT < sampler.bound)
        return False

    def unsampled(
        self, context: otel_context.Context | None = None, *, as_span: bool = False
    ) -> Unsampled | None:
        """The context of a span the sampler drops, or None when the SDK must decide.

        The parent is the current span, or the one in `context` (a server's
        extracted caller context). `as_span`: always give a `NonRecordingSpan`
        (a server puts it in the context the app runs in), never header values.
        """
        tracer = self._sdk_tracer
        if tracer is None:
            if self._foreign:
                return None
            tracer = self._resolve()
            if tracer is None:
                return None
        current = trace.get_current_span(context)
        parent: SpanContext | None = current.get_span_context()
        assert parent is not None
        ids = tracer.id_generator
        if parent.is_valid:
            trace_id = parent.trace_id
            random_id = bool(parent.trace_flags & _RANDOM_FLAG)
            state = parent.trace_state
        else:
            parent = None
            trace_id = ids.generate_trace_id()
            is_random = getattr(ids, "is_trace_id_random", None)  # SDK >= 1.39
            random_id = bool(is_random is not None and is_random())
            state = None
        if not self._drops(tracer.sampler, parent, trace_id):
            return None
        is_enabled = getattr(tracer, "_is_enabled", None)  # a tracer configurator may disable us
        if is_enabled is not None and not is_enabled():
            return None
        span_id = ids.generate_span_id()
        flags = _RANDOM_FLAG if random_id else 0
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap_default = _default_propagator(textmap)
            self._textmap = textmap
        if not as_span and self._textmap_default and not baggage.get_all():
            return Unsampled(
                f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}",
                state.to_header() if state else None,
                None,
            )
        dropped = SpanContext(
            trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state
        )
        return Unsampled(None, None, trace.NonRecordingSpan(dropped))
