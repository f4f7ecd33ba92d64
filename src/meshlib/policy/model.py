"""The policy document as frozen pydantic models: the one source of the policy reference.

One document describes the mesh. A client reads ``services.<destination>``
for how to call it; the middleware of a service enforces
``services.<itself>.inbound``. Unknown keys are errors. Sections that layer
(``timeouts``, ``retry``, ``fault``, ...) may be set under ``defaults``, under a
service and (some) under a route; a layer overrides only the keys it spells
out, so ``retry: {attempts: 2}`` under a service keeps the default backoff.
See :mod:`meshlib.policy.resolve` for the merge rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from meshlib.policy.durations import Duration

__all__ = [
    "HTTP_METHODS",
    "Authz",
    "AuthzRule",
    "Backoff",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "Defaults",
    "DeadlinePolicy",
    "Endpoint",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "Inbound",
    "InboundRoute",
    "LoadBalancer",
    "Mode",
    "OutlierDetection",
    "PathMatch",
    "Policy",
    "RateLimit",
    "Retry",
    "RetryBudget",
    "RetryOn",
    "Route",
    "RouteMatch",
    "Service",
    "SplitTarget",
    "TLS",
    "Timeouts",
]

Mode = Literal["enforce", "shadow"]
"""``enforce`` acts on a decision; ``shadow`` only counts what it would have done."""

LoadBalancer = Literal["round_robin", "least_request"]
"""``round_robin`` cycles through endpoints; ``least_request`` picks the less busy of two at random (P2C)."""

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH", "TRACE", "CONNECT"}
)
RETRY_CONDITIONS = frozenset({"connect-failure", "reset", "timeout", "5xx", "gateway-error"})

_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")
_SPIFFE_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)


def _method(value: str) -> str:
    upper = value.upper()
    if upper not in HTTP_METHODS:
        raise ValueError(
            f"{value!r} is not an HTTP method; use one of {', '.join(sorted(HTTP_METHODS))}"
        )
    return upper


Method = Annotated[str, Field(description="An HTTP method, e.g. GET.")]


def _methods(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_method(v) for v in values))


def validate_spiffe_id(value: str) -> str:
    """Check ``spiffe://<trust-domain>/<path>`` and return it unchanged."""
    parts = urlsplit(value)
    if parts.scheme != "spiffe" or not parts.netloc:
        raise ValueError(
            f"{value!r} is not a SPIFFE ID: write spiffe://<trust-domain>/<service>, "
            "e.g. spiffe://example.org/payments"
        )
    if not _TRUST_DOMAIN.match(parts.netloc):
        raise ValueError(
            f"{value!r}: trust domain {parts.netloc!r} must be lowercase letters, digits, '.', '-'"
        )
    if not parts.path or not _SPIFFE_PATH.match(parts.path) or parts.query or parts.fragment:
        raise ValueError(
            f"{value!r}: a SPIFFE ID needs a path such as /payments and no query or fragment"
        )
    return value


SpiffeId = Annotated[str, Field(description="A SPIFFE ID, spiffe://<trust-domain>/<path>.")]


# --------------------------------------------------------------------------- outbound sections


class Timeouts(_Model):
    """How long a call may take.

    ``attempt`` bounds each try; ``total`` bounds the whole call, retries and
    backoff included, and is capped further by an incoming deadline.
    """

    connect: Duration = Field(1.0, description="TCP connect and TLS handshake, per attempt.")
    attempt: Duration = Field(2.0, description="One try, from send to the end of the headers.")
    total: Duration = Field(10.0, description="The whole call, retries and backoff included.")

    @field_validator("connect", "attempt", "total")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("a timeout must be longer than 0; write e.g. '250ms'")
        return value


class Backoff(_Model):
    """Exponential backoff with full jitter: a try waits ``random(0, min(max, base * 2**n))``."""

    base: Duration = Field(0.025, description="The first backoff's upper bound.")
    max: Duration = Field(1.0, description="No backoff is longer than this.")


class RetryBudget(_Model):
    """Retries are allowed while ``retries <= ratio * requests + min_per_second * window``.

    Counted over a sliding ``window``, per destination, so a dead upstream sees
    at most ``1 + ratio`` times the traffic (plus the floor), not ``attempts`` times.
    """

    ratio: float = Field(0.2, ge=0.0, le=1.0, description="Retries allowed per request made.")
    min_per_second: float = Field(
        10.0, ge=0.0, description="Retries always allowed per second, so low traffic can retry."
    )
    window: Duration = Field(10.0, description="How far back requests and retries are counted.")


RetryOn = Annotated[
    str | int,
    Field(
        description=(
            "A condition to retry on: connect-failure, reset, timeout, 5xx, gateway-error "
            "(502, 503, 504), or an HTTP status code."
        )
    ),
]


class Retry(_Model):
    """When and how a failed try is tried again."""

    attempts: int = Field(
        3,
        description="Tries in total, the first included: 1 means no retry.",
    )
    backoff: Backoff = Field(default_factory=Backoff)
    retry_on: tuple[RetryOn, ...] = Field(
        ("connect-failure", "reset", 502, 503, 504),
        description="Failures that may be retried.",
    )
    methods: tuple[Method, ...] = Field(
        ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"),
        description=(
            "Methods retried after a failure that may have reached the server. A failure known "
            "not to have reached it (connect refused, pool timeout) is retried for any method."
        ),
    )
    budget: RetryBudget = Field(default_factory=RetryBudget)
    retry_after_max: Duration = Field(
        10.0,
        description=(
            "A Retry-After up to this long is honoured; a longer one (or one past the deadline) "
            "ends the retries and returns the response."
        ),
    )
    idempotency_key: bool = Field(
        False,
        description=(
            "Add an Idempotency-Key header to non-idempotent requests that lack one, which makes "
            "them retryable after a failure that may have reached the server."
        ),
    )
    mode: Mode = Field("enforce", description="shadow: count the retries that would be made.")

    @field_validator("attempts")
    @classmethod
    def _attempts(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                "attempts counts tries including the first, so it must be at least 1; "
                "write 'attempts: 1' for no retries"
            )
        if value > 10:
            raise ValueError("attempts above 10 only amplify outages; use at most 10")
        return value

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, values: tuple[str | int, ...]) -> tuple[str | int, ...]:
        for value in values:
            if isinstance(value, int):
                if not 400 <= value <= 599:
                    raise ValueError(f"retry_on status {value} must be between 400 and 599")
            elif value not in RETRY_CONDITIONS:
                raise ValueError(
                    f"unknown retry_on condition {value!r}; use one of "
                    f"{', '.join(sorted(RETRY_CONDITIONS))} or a status code such as 503"
                )
        return values

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _methods(values)


class CircuitBreaker(_Model):
    """One breaker per endpoint: open after ``failure_threshold`` failures in a row.

    While open the endpoint is skipped; after ``reset_timeout`` one probe is let
    through (half-open), and its success closes the breaker.
    """

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open it.")
    reset_timeout: Duration = Field(30.0, description="How long it stays open before a probe.")
    mode: Mode = Field("enforce", description="shadow: count openings, never fail fast.")


class OutlierDetection(_Model):
    """Passive health: eject an endpoint after consecutive failures, for longer each time."""

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_time: Duration = Field(
        30.0, description="Ejected for base_ejection_time x times ejected ..."
    )
    max_ejection_time: Duration = Field(300.0, description="... but never longer than this.")
    max_ejection_percent: int = Field(
        50, ge=0, le=100, description="Never eject more than this share of the endpoints."
    )
    mode: Mode = Field("enforce", description="shadow: count ejections, keep routing.")


class TLS(_Model):
    """Transport security towards a destination.

    ``ca``, ``cert`` and ``key`` are file paths on the calling host; when left
    out, the ``MESH_TLS_*`` settings of the process are used.
    """

    mode: Literal["disabled", "tls", "mutual"] = Field(
        "disabled",
        description="disabled: plain HTTP allowed; tls: verify the server; mutual: also present our certificate.",
    )
    ca: str | None = Field(None, description="CA bundle to verify the server with.")
    cert: str | None = Field(None, description="Our certificate chain (mutual).")
    key: str | None = Field(None, description="Our private key (mutual).")


class FaultAbort(_Model):
    """Answer a share of calls with ``status`` without sending them."""

    status: int = Field(ge=100, le=599)
    percent: float = Field(ge=0.0, le=100.0)


class FaultDelay(_Model):
    """Delay a share of calls by ``duration`` before sending them."""

    duration: Duration
    percent: float = Field(ge=0.0, le=100.0)


class Fault(_Model):
    """Fault injection for chaos tests, applied by the calling side."""

    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


class _Layered(_Model):
    """Sections a service may set over ``defaults``; unset means inherit."""

    timeouts: Timeouts | None = None
    retry: Retry | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    load_balancer: LoadBalancer | None = None
    tls: TLS | None = None
    fault: Fault | None = None


class Defaults(_Model):
    """What applies to every call unless a service or route says otherwise."""

    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: Retry = Field(default_factory=Retry)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)
    load_balancer: LoadBalancer = "round_robin"
    tls: TLS = Field(default_factory=TLS)
    fault: Fault = Field(default_factory=Fault)


# --------------------------------------------------------------------------- matching


class PathMatch(_Model):
    """At most one of ``path_prefix``, ``path_exact`` and ``path_template``."""

    path_prefix: str | None = Field(
        None, description="Matches /v1/orders and /v1/orders/7 for /v1/orders."
    )
    path_exact: str | None = None
    path_template: str | None = Field(
        None, description="A template such as /v1/orders/{id}; {name} matches one path segment."
    )
    methods: tuple[Method, ...] = Field((), description="Empty means any method.")

    @field_validator("path_prefix", "path_exact", "path_template")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"a path starts with '/'; write '/{value}'")
        return value

    @field_validator("path_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            for segment in value.split("/"):
                if ("{" in segment or "}" in segment) and not re.fullmatch(
                    r"\{[A-Za-z_][A-Za-z0-9_]*\}", segment
                ):
                    raise ValueError(
                        f"template segment {segment!r} must be a whole segment like '{{id}}'"
                    )
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _methods(values)

    @model_validator(mode="after")
    def _one_path(self) -> PathMatch:
        given = [
            name
            for name in ("path_prefix", "path_exact", "path_template")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"use only one of path_prefix, path_exact, path_template (got {', '.join(given)})"
            )
        return self


class RouteMatch(PathMatch):
    """Which requests a route applies to: path, methods and exact header values."""

    headers: Mapping[str, str] = Field(
        default_factory=dict, description="Header name to exact value; names are case-insensitive."
    )

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        return {k.lower(): v for k, v in value.items()}


class SplitTarget(_Model):
    """A share of a route's traffic sent to another service's endpoints."""

    service: str
    weight: int = Field(ge=0, description="Relative weight; shares are weight / sum of weights.")


class Route(_Model):
    """Per-route overrides for calls to a service; the first matching route wins."""

    name: str | None = Field(None, description="Shown in telemetry and `policy explain`.")
    match: RouteMatch = Field(default_factory=RouteMatch)
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    fault: Fault | None = None
    split: tuple[SplitTarget, ...] = Field(
        (), description="Send shares of this route's traffic to other services (canary, migration)."
    )

    @field_validator("split")
    @classmethod
    def _weights(cls, value: tuple[SplitTarget, ...]) -> tuple[SplitTarget, ...]:
        if value and sum(t.weight for t in value) <= 0:
            raise ValueError("split weights must add up to more than 0; e.g. 90 and 10")
        if len({t.service for t in value}) != len(value):
            raise ValueError("each service may appear once in a split")
        return value


# --------------------------------------------------------------------------- endpoints


class Endpoint(_Model):
    """Where a service instance listens. A plain string is shorthand for ``{url: ...}``."""

    url: str = Field(description="An absolute http:// or https:// URL with host and optional port.")
    zone: str | None = Field(None, description="Locality, for zone-aware routing.")
    weight: int = Field(1, ge=1, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"url": data}
        return data

    @field_validator("url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an absolute URL: write e.g. 'http://127.0.0.1:8001' "
                "or 'https://payments-1.internal:8443'"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"{value!r}: an endpoint is scheme://host:port, without a path or query"
            )
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return f"{parts.scheme}://{parts.netloc}"


# --------------------------------------------------------------------------- inbound


class AuthzRule(_Model):
    """Which caller identities may call the matching requests."""

    path_prefix: str | None = None
    path_exact: str | None = None
    path_template: str | None = None
    methods: tuple[Method, ...] = ()
    allow: tuple[str, ...] = Field(
        description="SPIFFE IDs allowed, or '*' for any caller with a verified identity."
    )

    @field_validator("allow")
    @classmethod
    def _ids(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v if v == "*" else validate_spiffe_id(v) for v in values)

    def path_match(self) -> PathMatch:
        """This rule's request matcher."""
        return PathMatch(
            path_prefix=self.path_prefix,
            path_exact=self.path_exact,
            path_template=self.path_template,
            methods=self.methods,
        )

    @model_validator(mode="after")
    def _check_match(self) -> AuthzRule:
        self.path_match()
        return self


class Authz(_Model):
    """Who may call this service; the first matching rule decides, else ``default``."""

    default: Literal["allow", "deny"] = "allow"
    rules: tuple[AuthzRule, ...] = ()
    mode: Mode = Field("enforce", description="shadow: record denials, let the request through.")


class RateLimit(_Model):
    """A token bucket: ``requests_per_second`` on average, bursts up to ``burst``."""

    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(
        None, ge=1, description="Bucket size; defaults to one second's worth."
    )
    mode: Mode = "enforce"


class ConcurrencyLimit(_Model):
    """At most ``limit`` requests in flight; more are shed with 503 + Retry-After."""

    limit: int = Field(ge=1)
    mode: Mode = "enforce"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"limit": data}
        return data


class DeadlinePolicy(_Model):
    """What to do with an incoming deadline header."""

    reject_expired: bool = Field(
        True, description="Answer 504 at once when the caller's deadline has passed."
    )
    max: Duration | None = Field(
        None, description="Cap on an incoming deadline (guards against huge values)."
    )
    mode: Mode = "enforce"


class InboundRoute(PathMatch):
    """Per-route admission limits for requests into this service."""

    rate_limit: RateLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None


class Inbound(_Model):
    """How this service treats requests coming in (enforced by MeshMiddleware)."""

    authz: Authz = Field(default_factory=Authz)
    rate_limit: RateLimit | None = None
    concurrency_limit: ConcurrencyLimit | None = None
    deadline: DeadlinePolicy = Field(default_factory=DeadlinePolicy)
    routes: tuple[InboundRoute, ...] = Field(
        (), description="Limits for matching requests; the first match wins."
    )


# --------------------------------------------------------------------------- services and policy


class Service(_Layered):
    """A service: where it listens, who it is, and how to call it."""

    endpoints: tuple[Endpoint, ...] = ()
    identity: SpiffeId | None = Field(
        None, description="The SPIFFE ID the service's certificate must prove (exact match)."
    )
    routes: tuple[Route, ...] = ()
    inbound: Inbound = Field(default_factory=Inbound)

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        return None if value is None else validate_spiffe_id(value)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, values: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        urls = [e.url for e in values]
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        if dupes:
            raise ValueError(f"endpoint listed twice: {', '.join(dupes)}")
        return values


class Policy(_Model):
    """The whole mesh policy document."""

    version: Literal[1] = Field(description="The document format version; only 1 exists.")
    trust_domain: str = Field(
        "cluster.local",
        description="SPIFFE trust domain: identities are spiffe://<trust_domain>/<service>.",
    )
    defaults: Defaults = Field(default_factory=Defaults)
    services: Mapping[str, Service] = Field(default_factory=dict)
    _resolver: object = PrivateAttr(default=None)

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if not _TRUST_DOMAIN.match(value):
            raise ValueError(
                f"{value!r} is not a trust domain: use lowercase letters, digits, '.' and '-', "
                "e.g. example.org"
            )
        return value

    @field_validator("services")
    @classmethod
    def _names(cls, value: Mapping[str, Service]) -> Mapping[str, Service]:
        for name in value:
            if not _SERVICE_NAME.match(name):
                raise ValueError(
                    f"service name {name!r} must be a DNS label: lowercase letters, digits and '-', "
                    "e.g. 'payments' or 'payments-v2'"
                )
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        # Imported here: resolve builds on these models.
        from meshlib.policy.resolve import check_policy

        check_policy(self)
        return self

    def service_identity(self, name: str) -> str:
        """The SPIFFE ID a service proves: its ``identity`` or ``spiffe://<trust_domain>/<name>``."""
        service = self.services.get(name)
        if service is not None and service.identity:
            return service.identity
        return f"spiffe://{self.trust_domain}/{name}"
