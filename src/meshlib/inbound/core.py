"""The framework-neutral inbound core: a `RequestInfo` in, an `Exchange` out.

The ASGI and WSGI middlewares are thin drivers around this module. Per
request they build a `RequestInfo` from the scope or environ and call
`InboundCore.begin`, which decides, in this order and without I/O:

1. no policy loaded yet: 503 (readiness says so too);
2. a path not in normal form, when a rule or route depends on the path: 400
   (`meshlib.inbound.paths`; the authz decision and the app's router
   must see the same path);
3. authz from the caller's verified identity: 403 (shadow: record only);
4. an incoming deadline already passed: 504 (shadow: count only);
5. the rate limit: 429 + Retry-After; 6. the concurrency limit: 503 + Retry-After.

Refusals of who or what a request is (2 and 3) are also logged, rate-limited,
on the `meshlib.access` logger (`meshlib.inbound.accesslog`).

The returned `Exchange` says whether to answer without the app
(`exchange.reply`) and carries the SERVER span, the deadline and the
concurrency slot; the driver calls `enter`/`exit` around the app,
`server_timing` when the response starts and `finish` at the end:

```python
core = InboundCore(store, "payments")
exchange = core.begin(RequestInfo("GET", "/v1/orders"))
if exchange.reply is None:
    exchange.enter()
    ...  # run the app; add ("server-timing", exchange.server_timing()) to its headers
    exchange.exit()
exchange.finish(200, "/v1/orders", None)
```
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Sequence
from contextvars import Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.deadline import Deadline, current_deadline
from meshlib.errors import CertificateError
from meshlib.inbound.accesslog import AccessLog
from meshlib.inbound.admission import ConcurrencyLimiter, LimiterRegistry, retry_after_header
from meshlib.inbound.deadlines import incoming_deadline
from meshlib.inbound.health import HealthPaths, MeshResponse
from meshlib.inbound.paths import PATH_PROBLEMS, path_problem
from meshlib.inbound.plan import InboundPlan
from meshlib.inbound.timing import server_timing
from meshlib.inbound.tracecontext import extract_with_propagators
from meshlib.policy.store import PolicyStore
from meshlib.security.identity import peer_identity_from_cert
from meshlib.settings import MeshSettings
from meshlib.telemetry.requestid import accept_request_id, current_request_id
from meshlib.telemetry.server import ServerTelemetry

__all__ = ["Exchange", "InboundCore", "RequestInfo", "drain_all"]

logger = logging.getLogger("meshlib.inbound")

_FORBIDDEN = MeshResponse.text(403, "Forbidden", "forbidden\n")
_BAD_PATHS = {
    reason: MeshResponse.text(400, "Bad Request", f"the request path {problem}\n")
    for reason, problem in PATH_PROBLEMS.items()
}
_DEADLINE = MeshResponse.text(504, "Gateway Timeout", "deadline exceeded\n")
_TOO_MANY = MeshResponse.text(429, "Too Many Requests", "too many requests\n")
_OVERLOADED = MeshResponse.text(
    503, "Service Unavailable", "overloaded, retry later\n", ("retry-after", "1")
)
_NO_POLICY = MeshResponse.text(503, "Service Unavailable", "not ready\n", ("retry-after", "1"))

_LIVE: weakref.WeakSet[InboundCore] = weakref.WeakSet()


def drain_all() -> int:
    """Drain every middleware in the process (e.g. from a SIGTERM handler); returns how many.

    Handy when a framework built the middleware for you (`app.add_middleware`):

    ```python
    signal.signal(signal.SIGTERM, lambda *_: meshlib.inbound.drain_all())
    ```
    """
    cores = list(_LIVE)
    for core in cores:
        core.drain()
    return len(cores)


@dataclass(slots=True)
class RequestInfo:
    """What the core needs to know about a request, gathered by a driver.

    Header values are raw strings (`None` when absent); `traceparent` and
    `tracestate` hold every field of that name in arrival order.
    `path` is percent-decoded, as the app routes it; `raw_path` is the
    path as sent, when the server tells it.
    `peer_cert` is the PEM of a client certificate the server's TLS layer
    verified, never anything taken from a header:

    ```python
    RequestInfo("GET", "/v1/orders", traceparent=["00-4bf9...-01"], deadline_ms="250")
    ```
    """

    method: str
    path: str
    scheme: str = "http"
    query: str = ""
    http_version: str = "1.1"
    host: str | None = None
    client: tuple[str, int] | None = None
    user_agent: str | None = None
    traceparent: Sequence[str] = ()
    tracestate: Sequence[str] = ()
    baggage: Sequence[str] = ()
    request_id: str | None = None
    headers: Any = None
    """Every header, as the driver holds them (ASGI list, WSGI environ), for non-default propagators."""
    getter: Any = None
    """The OpenTelemetry `Getter` that reads `headers`."""
    deadline_ms: str | None = None
    grpc_timeout: str | None = None
    envoy_timeout_ms: str | None = None
    attempt: str | None = None
    peer_cert: str | None = None
    raw_path: bytes | str | None = None


class Exchange:
    """One request's passage through the middleware; made by `InboundCore.begin`."""

    __slots__ = (
        "_app_seconds",
        "_app_start",
        "_core",
        "_deadline_token",
        "_otel_token",
        "_request_id_token",
        "_start",
        "context",
        "deadline",
        "info",
        "reply",
        "request_id",
        "request_id_made",
        "slot",
        "span",
    )

    def __init__(self, core: InboundCore, info: RequestInfo, start: float) -> None:
        self._core = core
        self.info = info
        self._start = start
        self._app_start = start
        self._app_seconds = 0.0
        self.reply: MeshResponse | None = None
        """Set when the middleware answers itself; the app must not run."""
        self.span: trace.Span = trace.INVALID_SPAN
        self.context = otel_context.Context()
        self.deadline: Deadline | None = None
        self.slot: ConcurrencyLimiter | None = None
        self._otel_token: Token[Any] | None = None
        self._deadline_token: Token[Deadline | None] | None = None
        self.request_id, self.request_id_made = accept_request_id(info.request_id)
        """The request's `x-request-id`: the caller's, or one made here (`request_id_made`)."""
        self._request_id_token: Token[str | None] | None = None

    def enter(self) -> None:
        """Make the trace context, deadline and request id current; call just before the app runs."""
        self._otel_token = otel_context.attach(self.context)
        self._request_id_token = current_request_id.set(self.request_id)
        if self.deadline is not None:
            self._deadline_token = current_deadline.set(self.deadline)
        self._app_start = self._core.clock.monotonic()

    def server_timing(self) -> str:
        """The Server-Timing value when the response starts: the app's time so far."""
        if self.reply is None:
            self._app_seconds = self._core.clock.monotonic() - self._app_start
        return server_timing(self._app_seconds)

    def exit(self) -> None:
        """Undo `enter`; call in the same context once the app is done."""
        token, self._otel_token = self._otel_token, None
        if token is not None:
            otel_context.detach(token)
        request_id_token, self._request_id_token = self._request_id_token, None
        if request_id_token is not None:
            with contextlib.suppress(ValueError):
                current_request_id.reset(request_id_token)
        deadline_token, self._deadline_token = self._deadline_token, None
        if deadline_token is not None:
            # ValueError: the server ended the response from another context.
            with contextlib.suppress(ValueError):
                current_deadline.reset(deadline_token)

    def finish(self, status: int, route: str | None, error: BaseException | None) -> None:
        """Release the concurrency slot, end the span, record the duration; call exactly once."""
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()
        core = self._core
        seconds = core.clock.monotonic() - self._start
        core.telemetry.finish(self.span, self.info, status, route, error, seconds)


class InboundCore:
    """Everything the middlewares share: policy, plan cache, limiters, telemetry, health.

    Drivers build it with `meshlib.inbound.config.build_core`; tests may
    build it directly from a store:

    ```python
    core = InboundCore(PolicyStore(policy), "payments", clock=FakeClock())
    core.health("/readyz").status   # 200
    ```
    """

    def __init__(
        self,
        store: PolicyStore,
        service: str,
        *,
        settings: MeshSettings | None = None,
        telemetry: ServerTelemetry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_close: Sequence[Any] = (),
    ) -> None:
        settings = settings if settings is not None else MeshSettings()
        self.store = store
        self.service = service
        self.clock = clock
        self.telemetry = telemetry if telemetry is not None else ServerTelemetry()
        self.health_paths = HealthPaths(settings.health_path, settings.ready_path)
        self.draining = False
        self.access_log = AccessLog(service, clock)
        self._registry = LimiterRegistry(clock)
        self._plan: InboundPlan | None = None
        self._failed: object = None  # a policy whose plan failed to compile, not retried
        self._plan_lock = threading.Lock()
        self._on_close = list(on_close)
        _LIVE.add(self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """A policy is loaded and the service is not draining."""
        return not self.draining and self.store.loaded

    def drain(self) -> None:
        """Report not-ready from now on, so load balancers stop sending new requests."""
        self.draining = True

    def close(self) -> None:
        """Stop what this core started (a policy file watcher); idempotent."""
        closers, self._on_close = self._on_close, []
        for source in closers:
            source.close()

    def health(self, path: str) -> MeshResponse | None:
        """The answer to a health probe, or `None` when `path` is not a health path."""
        paths = self.health_paths
        if path != paths.live and path != paths.ready:
            return None
        return paths.answer(path, ready=self.ready)

    def plan(self) -> InboundPlan | None:
        """The compiled plan of the policy in force (compiled on first use after a reload)."""
        snapshot = self.store.peek()
        if snapshot is None:
            return None
        plan = self._plan
        if plan is not None and plan.policy is snapshot.policy:
            return plan
        if self._failed is snapshot.policy:
            return plan
        with self._plan_lock:
            plan = self._plan
            if (plan is None or plan.policy is not snapshot.policy) and (
                self._failed is not snapshot.policy
            ):
                try:
                    plan = InboundPlan.compile(snapshot.policy, self.service, self._registry)
                except Exception:  # keep serving with the last good plan
                    logger.exception("cannot apply the inbound policy; the last good one stays")
                    self._failed = snapshot.policy
                else:
                    self._plan = plan
        return plan

    # ------------------------------------------------------------------ per request

    def begin(self, info: RequestInfo) -> Exchange:
        """Start a request: open its span and decide whether the app may see it."""
        clock = self.clock
        exchange = Exchange(self, info, clock.monotonic())
        parent = extract_with_propagators(
            info.traceparent, info.tracestate, info.baggage, info.headers, info.getter
        )
        span = self.telemetry.start(info, parent)
        exchange.span = span
        exchange.context = trace.set_span_in_context(span, parent)
        plan = self.plan()
        if plan is None:
            self.telemetry.shed(span, "no_policy", "policy", False)
            exchange.reply = _NO_POLICY
            return exchange
        path = info.path
        telemetry = self.telemetry
        if plan.path_sensitive:
            problem = path_problem(path, info.raw_path)
            if problem is not None:
                shadow = plan.path_shadow
                telemetry.rejected(span, problem, shadow)
                self.access_log.denied(
                    info,
                    400,
                    "path-normal-form",
                    _identity(info.peer_cert),
                    shadow=shadow,
                    reason=problem,
                )
                if not shadow:
                    exchange.reply = _BAD_PATHS[problem]
                    return exchange

        authz = plan.authz
        if authz.active:
            identity = _identity(info.peer_cert)
            decision = authz.decide(info.method, path, identity)
            telemetry.authz(span, decision, identity, authz.shadow)
            if not decision.allowed:
                self.access_log.denied(info, 403, decision.rule, identity, shadow=authz.shadow)
                if not authz.shadow:
                    exchange.reply = _FORBIDDEN
                    return exchange

        if info.deadline_ms is not None or info.grpc_timeout is not None or info.envoy_timeout_ms:
            deadline = incoming_deadline(
                info.deadline_ms,
                info.grpc_timeout,
                info.envoy_timeout_ms,
                max_seconds=plan.deadline_max,
                clock=clock,
            )
            exchange.deadline = deadline
            if deadline is not None and plan.deadline_reject and deadline.expired(clock):
                telemetry.shed(span, "deadline", "deadline", plan.deadline_shadow)
                if not plan.deadline_shadow:
                    exchange.reply = _DEADLINE
                    return exchange

        limits = plan.limits_for(info.method, path) if plan.routes else plan.service_limits
        rate = limits.rate
        if rate is not None:
            wait = rate.bucket.try_acquire()
            if wait > 0.0:
                telemetry.shed(span, "rate_limit", rate.where, rate.shadow, wait)
                if not rate.shadow:
                    exchange.reply = _TOO_MANY.with_header("retry-after", retry_after_header(wait))
                    return exchange
        slots = limits.concurrency
        if slots is not None:
            limiter = slots.limiter
            if slots.shadow:
                if not limiter.force_acquire():
                    telemetry.shed(span, "concurrency_limit", slots.where, True, 1.0)
            elif not limiter.try_acquire():
                telemetry.shed(span, "concurrency_limit", slots.where, False, 1.0)
                exchange.reply = _OVERLOADED
                return exchange
            exchange.slot = limiter
        return exchange


def _identity(pem: str | None) -> str | None:
    if not pem:
        return None
    try:
        return peer_identity_from_cert(pem)
    except (CertificateError, ImportError) as exc:  # fail closed: no identity, no rule allows
        logger.warning("ignoring the client certificate: %s", exc)
        return None
