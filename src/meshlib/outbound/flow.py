"""The outbound algorithm, written once, as a generator of I/O steps (after httpx's `Auth.auth_flow`).

`Outbound.flow(request)` decides everything and yields only what needs
I/O: `Send` (run this request on that transport, send me the
response or throw me the exception) and `Sleep` (wait, after closing
a discarded response). The generator's return value is the response.
`meshlib.outbound.transport` drives it in ~40 lines, sync or async:

```text
deadline -> fault -> [ pick endpoint -> breaker -> Send -> classify -> record
                       -> retry? (attempts, replayable, budget, deadline) -> Sleep ]
```

One call reads the policy snapshot once; the plan and destination it gets
stay valid for the whole call even if the policy is swapped meanwhile.
When retries run out the last real outcome is returned or raised, with the
attempt history in `response.extensions["meshlib.attempts"]` or
`exc.__meshlib_attempts__`; when the total time runs out first, the call
raises `DeadlineExceeded` from the last error. Each attempt carries its
number in `x-mesh-attempt` (1 for the first). Outcomes that are not the
endpoint's doing (the client's own pool full, the call's deadline cutting an
attempt short, a request httpx refused to send) never feed its breaker or
outlier detection.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from meshlib.clock import Clock
from meshlib.deadline import DEADLINE_HEADER, current_deadline
from meshlib.errors import CircuitOpenError, DeadlineExceeded, NoEndpointsError
from meshlib.headers import set_header
from meshlib.outbound.breaker import PASS
from meshlib.outbound.deadline import AsyncDeadlineBody, SyncDeadlineBody
from meshlib.outbound.destination import Destination, EndpointState
from meshlib.outbound.endpoints import Pools
from meshlib.outbound.fault import FAULT_HEADER, decide_fault
from meshlib.outbound.retry import (
    IDEMPOTENCY_HEADER,
    RetryRules,
    classify_exception,
    is_local_rejection,
    parse_retry_after,
)
from meshlib.outbound.routing import Plan, Router
from meshlib.outbound.steps import ATTEMPTS_EXTENSION, Attempt, Flow, Send, Sleep, Step
from meshlib.policy.store import PolicyStore
from meshlib.telemetry import names, oplog
from meshlib.telemetry.client import CallTelemetry, ClientTelemetry
from meshlib.telemetry.requestid import stamp_request_id

__all__ = ["ATTEMPTS_EXTENSION", "ATTEMPT_HEADER", "Attempt", "Outbound", "Send", "Sleep", "Step"]

ATTEMPT_HEADER = "x-mesh-attempt"
"""Request header carrying the attempt's number (1 for the first try), so the callee can tell a retry."""

_DEADLINE_KEY = DEADLINE_HEADER.encode()
_ATTEMPT_KEY = ATTEMPT_HEADER.encode()
_ATTEMPT_VALUES = tuple(str(n) for n in range(1, 11))  # policy attempts are at most 10


def _judge(
    rules: RetryRules,
    method: str,
    headers: httpx.Headers,
    response: httpx.Response | None,
    error: Exception | None,
) -> tuple[bool | None, int | str, bool]:
    """`(verdict for breaker and ejection, reason, retry wanted)` for one attempt's outcome.

    The verdict is True for a success, False for a failure of the endpoint (a
    5xx, a transport failure) and None for an outcome that says nothing about
    it: the client's own pool was full, or httpx refused the request (an
    unsupported URL, say). A retry is wanted for a retryable status or
    failure, and, when the request may have been processed, only if it may be
    replayed (idempotent method or Idempotency-Key).
    """
    if response is not None:
        status = response.status_code
        wanted = rules.retryable_status(status) and rules.may_replay(method, headers)
        return status < 500, status, wanted
    assert error is not None
    condition, reached = classify_exception(error)
    wanted = rules.retryable_exception(condition, reached) and (
        not reached or rules.may_replay(method, headers)
    )
    verdict = None if condition is None or is_local_rejection(error) else False
    return verdict, condition or type(error).__name__, wanted


def _given_timeouts(own: dict[str, float | None] | None) -> dict[str, float] | None:
    """The timeouts a `timeout=` given to the client or the call sets; they only shorten the policy's."""
    if not own:
        return None
    given = {key: value for key, value in own.items() if value is not None}
    return given or None


_PHASES = (
    (httpx.ReadTimeout, "read"),
    (httpx.ConnectTimeout, "connect"),
    (httpx.WriteTimeout, "write"),
    (httpx.PoolTimeout, "pool"),
)


def _phase(error: Exception) -> str:
    """Which of httpx's timeouts (the `timeout` extension's key) an error says fired."""
    for kind, key in _PHASES:
        if isinstance(error, kind):
            return key
    return ""


def _reason(response: httpx.Response | None) -> str:
    return str(response.status_code) if response is not None else "a failure"


def _readdress(url: httpx.URL, endpoint: EndpointState) -> httpx.URL:
    """`url` aimed at `endpoint`; path and query kept.

    `URL.copy_with` re-parses the whole URL (~19 us here); building httpx's
    parsed form (a NamedTuple: scheme, userinfo, host, port, path, query,
    fragment) with three fields replaced costs ~0.3 us, so we do that when it exists.
    """
    ref = getattr(url, "_uri_reference", None)
    if ref is None or len(ref) != 7:  # pragma: no cover - a future httpx with another form
        return url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
    new = httpx.URL.__new__(httpx.URL)
    new._uri_reference = tuple.__new__(
        type(ref), (endpoint.scheme, ref[1], endpoint.host, endpoint.port, ref[4], ref[5], ref[6])
    )
    return new


class Outbound:
    """Everything one mesh transport shares across calls: policy store, routing, pools, telemetry."""

    def __init__(
        self,
        store: PolicyStore,
        router: Router,
        pools: Pools[Any],
        telemetry: ClientTelemetry,
        clock: Clock,
        *,
        is_async: bool,
    ) -> None:
        self.store = store
        self.router = router
        self.pools = pools
        self.telemetry = telemetry
        self.clock = clock
        self.is_async = is_async

    def flow(self, request: httpx.Request) -> Flow:
        """The generator that carries out one call (see the module docstring)."""
        clock = self.clock
        start = clock.monotonic()
        snapshot = self.store.peek()
        if snapshot is None:
            raise NoEndpointsError(
                "no mesh policy is loaded yet (no policy file read, no answer from the control "
                "plane and no cached policy); the call was not sent"
            )
        plan, dest = self.router.route(snapshot, request)
        deadline_at = start + plan.total
        incoming = current_deadline.get()
        if incoming is not None and incoming.at < deadline_at:
            deadline_at = incoming.at
        call = self.telemetry.start_call(
            request, dest.name, plan.route, start, clock, self.is_async
        )
        if call is not None and call.recording:
            call.span.set_attribute(names.ATTR_DEADLINE_BUDGET, deadline_at - start)
        dest.requests += 1
        budget = dest.budget
        assert budget is not None
        budget.record_request()
        stamp_request_id(request.headers)  # one id for the call, its retries included
        original_url = request.url
        try:
            response = yield from self._attempts(request, plan, dest, call, start, deadline_at)
        except GeneratorExit:  # the driver was cancelled mid-call: not the destination's fault
            if call is not None:
                call.finish_cancelled()
            raise
        except BaseException as exc:
            dest.errors += 1
            if call is not None:
                if isinstance(exc, DeadlineExceeded):
                    call.event(names.EVENT_DEADLINE_EXCEEDED, {})
                call.finish_error(exc)
            raise
        finally:
            request.url = original_url
        if response.status_code >= 500:
            dest.errors += 1
        dest.latencies.append(clock.monotonic() - start)
        if call is not None:
            call.finish_response(response)
        return response

    def _attempts(
        self,
        request: httpx.Request,
        plan: Plan,
        dest: Destination,
        call: CallTelemetry | None,
        start: float,
        deadline_at: float,
    ) -> Flow:
        clock = self.clock
        rules = plan.retry
        method = request.method
        headers = request.headers
        history: list[Attempt] = []
        if (
            rules.idempotency_key
            and method not in rules.methods
            and IDEMPOTENCY_HEADER not in headers
        ):
            headers[IDEMPOTENCY_HEADER] = uuid.uuid4().hex
        if plan.fault is not None:
            fault = decide_fault(plan.fault, clock)
            if fault.delay:
                delay = min(fault.delay, max(0.0, deadline_at - clock.monotonic()))
                self._fault_event(dest, call, "delay")
                if call is not None:
                    call.begin_wait()
                yield Sleep(delay)
                if call is not None:
                    call.end_wait()
            if fault.abort is not None:
                self._fault_event(dest, call, "abort")
                aborted = httpx.Response(fault.abort, headers={FAULT_HEADER: "abort"})
                aborted.extensions[ATTEMPTS_EXTENSION] = ()
                return aborted
        caps = _given_timeouts(request.extensions.get("timeout"))
        tried: list[EndpointState] = []
        last: httpx.Response | Exception | None = None
        number = 0
        while True:
            now = clock.monotonic()
            remaining = deadline_at - now
            if remaining <= 0.0:
                raise self._out_of_time(
                    dest, call, request, history, f"before attempt {number + 1} could start"
                ) from (last if isinstance(last, Exception) else None)
            try:
                endpoint, permit = dest.pick(tried)
            except CircuitOpenError as exc:
                if number == 0:
                    exc.request = request
                    exc.__meshlib_attempts__ = ()  # type: ignore[attr-defined]
                    raise
                return (yield from self._give_up(history, last, "breaker-open"))
            if endpoint.rewrite:
                request.url = _readdress(request.url, endpoint)
                set_header(headers, _DEADLINE_KEY, str(int(remaining * 1000.0 + 1e-6)))
                set_header(headers, _ATTEMPT_KEY, _ATTEMPT_VALUES[number])
            if remaining < plan.attempt or caps is not None:
                budget_s = min(remaining, plan.attempt)
                timeouts = {
                    "connect": min(plan.connect, budget_s),
                    "read": budget_s,
                    "write": budget_s,
                    "pool": budget_s,
                }
                if caps is not None:
                    for key, value in caps.items():
                        if value < timeouts.get(key, value):
                            timeouts[key] = value
            else:
                timeouts = plan.timeout
            request.extensions["timeout"] = timeouts
            if call is not None:
                call.before_attempt(request, endpoint.url, number)
            response: httpx.Response | None = None
            error_: Exception | None = None
            endpoint.started()
            sent = False
            try:
                response = yield Send(endpoint.transport, request)
                sent = True
            except Exception as exc:
                error_ = exc
                sent = True
            finally:
                endpoint.finished()
                if not sent:
                    endpoint.breaker.release(permit)
            if response is not None:
                self._bound_body(response, request, timeouts, deadline_at, dest.name)
            elapsed = clock.monotonic() - now
            if call is not None:
                call.after_attempt(request, response, error_)
            verdict, reason, wanted = _judge(rules, method, headers, response, error_)
            outcome: int | str = reason if response is not None else type(error_).__name__
            # The deadline's doing when the timeout that fired was cut to the time left.
            out_of_time = isinstance(error_, httpx.TimeoutException) and (
                timeouts.get(_phase(error_), 0.0) >= remaining or clock.monotonic() >= deadline_at
            )
            if verdict is None or out_of_time:
                endpoint.breaker.release(
                    permit
                )  # the deadline's doing, or ours: not the endpoint's
            else:
                self._record(dest, endpoint, permit, verdict, call, reason)
            number += 1
            last = response if response is not None else error_
            history.append(Attempt(number, endpoint.url, outcome, elapsed))
            if out_of_time:
                raise self._out_of_time(
                    dest, call, request, history, f"during attempt {number}"
                ) from error_
            wait = self._next_wait(request, rules, response, wanted, number, deadline_at, dest)
            if isinstance(wait, str):
                if wait == "budget" and call is not None:
                    call.event(names.EVENT_BUDGET_REFUSED, {names.ATTR_DESTINATION: dest.name})
                elif wait == "shadow":
                    self._shadow_retry(dest, endpoint, reason, number, call)
                elif wait == "deadline" and error_ is not None:
                    history[-1] = history[-1]._replace(note=wait)
                    raise self._out_of_time(
                        dest, call, request, history, f"with no time for attempt {number + 1}"
                    ) from error_
                return (yield from self._give_up(history, last, wait))
            backoff = wait
            dest.retries += 1
            history[-1] = Attempt(number, endpoint.url, outcome, elapsed, backoff, "retry")
            attributes = {
                names.ATTR_DESTINATION: dest.name,
                names.ATTR_RETRY_REASON: str(reason),
            }
            self.telemetry.retries.add(1, self._with_endpoint(attributes, endpoint))
            if call is not None:
                call.event(
                    names.EVENT_RETRY,
                    {
                        **attributes,
                        names.ATTR_ENDPOINT: endpoint.url,
                        names.ATTR_RETRY_ATTEMPT: number - 1,
                        names.ATTR_RETRY_BACKOFF: backoff,
                    },
                )
                call.begin_wait(response)
            tried.append(endpoint)
            yield Sleep(backoff, response)
            if call is not None:
                call.end_wait()

    def _bound_body(
        self,
        response: httpx.Response,
        request: httpx.Request,
        timeouts: dict[str, float],
        deadline_at: float,
        destination: str,
    ) -> None:
        """Make the response body end at the call's deadline (see `meshlib.outbound.deadline`)."""
        read = timeouts.get("read")
        left = deadline_at - self.clock.monotonic()
        if read is not None and read > left > 0.0:
            # httpcore reads the read timeout when the body starts: no wait past the deadline.
            request.extensions["timeout"] = {**timeouts, "read": left}
        body = AsyncDeadlineBody if self.is_async else SyncDeadlineBody
        response.stream = body(
            response.stream,
            deadline_at,
            self.clock,
            request,
            destination,
            response.extensions,
            self.telemetry.deadline_exceeded,
            read,
        )

    def _next_wait(
        self,
        request: httpx.Request,
        rules: RetryRules,
        response: httpx.Response | None,
        wanted: bool,
        number: int,
        deadline_at: float,
        dest: Destination,
    ) -> float | str:
        """The backoff before try `number + 1`, or a note saying why there is none.

        In order: the failure is not retryable (`""`), the attempts are used
        up, the body cannot be replayed, Retry-After asks too much, the wait
        would end past the deadline, retries are in shadow mode, the budget
        refuses. Only the last takes a retry from the budget.
        """
        clock = self.clock
        if not wanted:
            return ""
        if rules.exhausted(number):
            return "attempts"
        if not isinstance(request.stream, httpx.ByteStream):
            return "stream"
        backoff = rules.backoff(number, clock)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None:
            asked = parse_retry_after(retry_after, clock)
            if asked is not None:
                if asked > rules.retry_after_max:
                    return "retry-after"
                backoff = rules.honour_retry_after(asked)
        if clock.monotonic() + backoff >= deadline_at:
            return "deadline"
        if rules.shadow:
            dest.shadow_retries += 1
            return "shadow"
        assert dest.budget is not None
        if not dest.budget.try_retry():
            dest.budget_refusals += 1
            self.telemetry.budget_refusals.add(1, {names.ATTR_DESTINATION: dest.name})
            if not dest.budget_dry:
                dest.budget_dry = True
                oplog.budget_exhausted(dest.name, _reason(response))
            return "budget"
        if dest.budget_dry:
            dest.budget_dry = False
            oplog.budget_restored(dest.name)
        return backoff

    def _give_up(
        self, history: list[Attempt], last: httpx.Response | Exception | None, note: str
    ) -> Flow:
        """Return or raise the last real outcome, with the history attached."""
        assert last is not None
        if note:
            a = history[-1]
            history[-1] = Attempt(a.number, a.endpoint, a.outcome, a.elapsed, 0.0, note)
        attempts = tuple(history)
        if isinstance(last, httpx.Response):
            last.extensions[ATTEMPTS_EXTENSION] = attempts
            return last
        last.__meshlib_attempts__ = attempts  # type: ignore[attr-defined]
        raise last
        yield  # pragma: no cover - makes this a generator for ``yield from``

    def _record(
        self,
        dest: Destination,
        endpoint: EndpointState,
        permit: Any,
        success: bool,
        call: CallTelemetry | None,
        reason: int | str = "",
    ) -> None:
        """Tell the breaker and outlier detector; report state changes as events, metrics, log lines."""
        if dest.ejected_logged:  # an endpoint was ejected: tell once when it is back
            self._readmissions(dest)
        if success and permit is PASS:
            dest.record(endpoint, permit, True)
            return
        transition, ejected = dest.record(endpoint, permit, success)
        tel = self.telemetry
        if transition is not None:
            before, after = transition
            oplog.breaker_changed(dest.name, endpoint.url, before, after, reason)
            attributes = {
                names.ATTR_DESTINATION: dest.name,
                names.ATTR_ENDPOINT: endpoint.url,
                names.ATTR_BREAKER_STATE: after,
            }
            tel.breaker_transitions.add(1, attributes)
            if call is not None:
                call.event(
                    names.EVENT_BREAKER_STATE_CHANGE,
                    {**attributes, names.ATTR_BREAKER_PREVIOUS_STATE: before},
                )
        if ejected:
            outlier = dest.outlier
            state = outlier.states.get(endpoint.url) if outlier is not None else None
            seconds = state.ejected_until - self.clock.monotonic() if state is not None else 0.0
            oplog.endpoint_ejected(dest.name, endpoint.url, seconds, reason)
            dest.ejected_logged.add(endpoint.url)
            attributes = {names.ATTR_DESTINATION: dest.name, names.ATTR_ENDPOINT: endpoint.url}
            tel.ejections.add(1, attributes)
            if call is not None:
                call.event(names.EVENT_EJECTION, attributes)

    @staticmethod
    def _readmissions(dest: Destination) -> None:
        outlier = dest.outlier
        for url in list(dest.ejected_logged):
            if outlier is None or not outlier.is_ejected(url):
                dest.ejected_logged.discard(url)
                oplog.endpoint_readmitted(dest.name, url)

    def _shadow_retry(
        self,
        dest: Destination,
        endpoint: EndpointState,
        reason: int | str,
        number: int,
        call: CallTelemetry | None,
    ) -> None:
        """Count (metric and event, marked shadow) a retry a shadow-mode policy did not make."""
        attributes = {
            names.ATTR_DESTINATION: dest.name,
            names.ATTR_RETRY_REASON: str(reason),
            names.ATTR_SHADOW: True,
        }
        self.telemetry.retries.add(1, self._with_endpoint(attributes, endpoint))
        if call is not None:
            call.event(
                names.EVENT_RETRY,
                {
                    **attributes,
                    names.ATTR_ENDPOINT: endpoint.url,
                    names.ATTR_RETRY_ATTEMPT: number - 1,
                },
            )

    def _with_endpoint(self, attributes: dict[str, Any], endpoint: EndpointState) -> dict[str, Any]:
        """Metric attributes, with the endpoint only when the client opted in (per-pod cardinality)."""
        if self.telemetry.endpoint_attribute:
            return {**attributes, names.ATTR_ENDPOINT: endpoint.url}
        return attributes

    def _out_of_time(
        self,
        dest: Destination,
        call: CallTelemetry | None,
        request: httpx.Request,
        history: list[Attempt],
        when: str,
    ) -> DeadlineExceeded:
        """The `DeadlineExceeded` of a call whose total time ran out (counted in the metric)."""
        dest.deadlines_exceeded += 1
        self.telemetry.deadline_exceeded.add(1, {names.ATTR_DESTINATION: dest.name})
        error = DeadlineExceeded(f"the deadline for {dest.name!r} ran out {when}", request=request)
        error.__meshlib_attempts__ = tuple(history)  # type: ignore[attr-defined]
        return error

    def _fault_event(self, dest: Destination, call: CallTelemetry | None, kind: str) -> None:
        attributes = {names.ATTR_DESTINATION: dest.name, names.ATTR_FAULT_KIND: kind}
        self.telemetry.faults.add(1, attributes)
        if call is not None:
            call.event(names.EVENT_FAULT_INJECTED, attributes)
