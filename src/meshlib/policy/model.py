"""The policy document as frozen pydantic models: the one source of the policy reference.

One document describes the mesh. A client reads `services.<destination>`
for how to call it; the middleware of a service enforces
`services.<itself>.inbound`. Unknown keys are errors. Sections that layer
(`timeouts`, `retry`, `fault`, ...) may be set under `defaults`, under a
service and (some) under a route; a layer overrides only the keys it spells
out, so `retry: {attempts: 2}` under a service keeps the default backoff.
See `meshlib.policy.resolve` for the merge rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
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
    "Discovery",
    "DnsDiscovery",
    "Endpoint",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "HealthCheck",
    "Inbound",
    "InboundRoute",
    "LoadBalancer",
    "Locality",
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
    "plaintext_origin",
]

Mode = Literal["enforce", "shadow"]
"""`enforce` acts on a decision; `shadow` only counts what it would have done."""

LoadBalancer = Literal["round_robin", "least_request"]
"""`round_robin` cycles through endpoints; `least_request` picks the less busy of two at random (P2C)."""

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH", "TRACE", "CONNECT"}
)
RETRY_CONDITIONS = frozenset({"connect-failure", "reset", "timeout", "5xx", "gateway-error"})

_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


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


_SPIFFE_SCHEME = "spiffe://"
_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _trust_domain_problem(name: str) -> str | None:
    if not name:
        return "the trust domain is missing"
    if len(name) > 255:
        return "the trust domain is longer than 255 characters"
    if not _TRUST_DOMAIN_CHARS.issuperset(name):
        return (
            f"trust domain {name!r} may hold only lowercase letters, digits, '.', '-' and '_' "
            "(no port, user, upper case or percent-encoding)"
        )
    return None


def validate_spiffe_id(value: str) -> str:
    """Check `value` is a SPIFFE ID naming a workload, per the SPIFFE ID specification; return it unchanged.

    `spiffe://` (lower case), a trust domain of lowercase letters, digits,
    `.`, `-` and `_`, then a path of one or more segments of letters,
    digits, `.`, `-` and `_`: no empty segment (`//` or a trailing `/`), no
    `.` or `..` segment, no percent-encoding, query or fragment, at most
    2048 bytes in all. A trust-domain ID without a path
    (`spiffe://example.org`) names no workload and is refused here.

    Raises:
        ValueError: naming what is wrong.
    """
    if not value.startswith(_SPIFFE_SCHEME):
        raise ValueError(
            f"{value!r} is not a SPIFFE ID: write spiffe://<trust-domain>/<service>, "
            "e.g. spiffe://example.org/payments"
        )
    if len(value.encode("utf-8", "surrogatepass")) > 2048:
        raise ValueError(f"{value[:60]!r}...: a SPIFFE ID is at most 2048 bytes")
    trust_domain, slash, path = value[len(_SPIFFE_SCHEME) :].partition("/")
    problem = _trust_domain_problem(trust_domain)
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}")
    if not slash:
        raise ValueError(f"{value!r}: a workload's SPIFFE ID needs a path such as /payments")
    for segment in path.split("/"):
        if not segment:
            raise ValueError(f"{value!r}: the path has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise ValueError(f"{value!r}: the path has a {segment!r} segment")
        if not _PATH_CHARS.issuperset(segment):
            raise ValueError(
                f"{value!r}: path segment {segment!r} may hold only letters, digits, '.', '-' "
                "and '_' (no percent-encoding, query or fragment)"
            )
    return value


SpiffeId = Annotated[str, Field(description="A SPIFFE ID, spiffe://<trust-domain>/<path>.")]


# --------------------------------------------------------------------------- outbound sections


class Timeouts(_Model):
    """How long a call may take.

    `attempt` bounds each try's waits; `total` bounds the whole call, retries,
    backoff and the reading of the response body included (streamed too: the
    timer runs on while the caller reads), and is capped further by an incoming
    deadline.
    """

    connect: Duration = Field(1.0, description="TCP connect and TLS handshake, per attempt.")
    attempt: Duration = Field(
        2.0,
        description="Each wait of one try: for a pooled connection, a write, a read (headers or body).",
    )
    total: Duration = Field(
        10.0,
        description="The whole call: every try and backoff, and reading the response body.",
    )

    @field_validator("connect", "attempt", "total")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("a timeout must be longer than 0; write e.g. '250ms'")
        return value


class Backoff(_Model):
    """Exponential backoff with full jitter: a try waits `random(0, min(max, base * 2**n))`."""

    base: Duration = Field(0.025, description="The first backoff's upper bound.")
    max: Duration = Field(1.0, description="No backoff is longer than this.")


class RetryBudget(_Model):
    """A retry is allowed only if, counting it, `retries <= ratio * requests + min_per_second * window`.

    Both counted over the past `window`, per destination, so a dead upstream
    sees at most `1 + ratio` times the calls (plus the floor) in any window,
    not `attempts` times. The bound is never exceeded: the budget may refuse
    a retry up to one hundredth of a window early, never allow one late.
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
    """One breaker per endpoint: open after `failure_threshold` failures in a row.

    While open the endpoint is skipped; after `reset_timeout` one probe is let
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


def plaintext_origin(value: str) -> str:
    """An `http://host[:port]` origin in canonical form (`http://host:port`); ValueError otherwise."""
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"{value!r} is not a plain-HTTP origin: write http://host:port, e.g. http://127.0.0.1:9901"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r}: an origin is http://host:port, without a path or user")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    host = parts.hostname.lower()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


PlaintextOrigin = Annotated[str, AfterValidator(plaintext_origin)]


class TLS(_Model):
    """Transport security towards a destination.

    `ca`, `cert` and `key` are file paths on the calling host; when left
    out, the `MESH_TLS_*` settings of the process are used. Under `tls`
    and `mutual` no call goes out in plain HTTP: an `http://` endpoint is
    a policy error and a direct `http://` URL is refused at run time, except
    for the origins `allow_plaintext` names.
    """

    mode: Literal["disabled", "tls", "mutual"] = Field(
        "disabled",
        description="disabled: plain HTTP allowed; tls: verify the server, never send plain HTTP; mutual: also present our certificate.",
    )
    ca: str | None = Field(None, description="CA bundle to verify the server with.")
    cert: str | None = Field(None, description="Our certificate chain (mutual).")
    key: str | None = Field(None, description="Our private key (mutual).")
    allow_plaintext: tuple[PlaintextOrigin, ...] = Field(
        (),
        description="Origins (http://host:port) that may still be called in plain HTTP under tls or mutual: named, reviewed exceptions such as a local agent. Nothing else is.",
    )

    @field_validator("allow_plaintext")
    @classmethod
    def _once(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(values))

    def allows_plaintext(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether a call to `scheme://host:port` keeps this section's promise of TLS."""
        if scheme != "http" or self.mode == "disabled":
            return True
        if not self.allow_plaintext:
            return False
        host = host.lower()
        origin = f"http://[{host}]:{port or 80}" if ":" in host else f"http://{host}:{port or 80}"
        return origin in self.allow_plaintext


class FaultAbort(_Model):
    """Answer a share of calls with `status` without sending them."""

    status: int = Field(ge=100, le=599)
    percent: float = Field(ge=0.0, le=100.0)


class FaultDelay(_Model):
    """Delay a share of calls by `duration` before sending them."""

    duration: Duration
    percent: float = Field(ge=0.0, le=100.0)


class Fault(_Model):
    """Fault injection for chaos tests, applied by the calling side."""

    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


class _Layered(_Model):
    """Sections a service may set over `defaults`; unset means inherit."""

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
    """At most one of `path_prefix`, `path_exact` and `path_template`."""

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
    """Where a service instance listens. A plain string is shorthand for `{url: ...}`."""

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


# --------------------------------------------------------------------------- discovery


class DnsDiscovery(_Model):
    """Endpoints from DNS: A/AAAA records of `name` with `port`, or SRV records (`srv: true`).

    Re-resolved in the background when the answer's TTL runs out, the TTL held
    between `min_ttl` and `max_ttl`; a failed or empty answer keeps the
    endpoints last known.
    """

    name: str = Field(
        description="The DNS name, e.g. payments.prod.svc.cluster.local (a headless service) or _http._tcp.payments.example.org for SRV."
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Port of every address (A/AAAA); leave out with srv."
    )
    srv: bool = Field(False, description="Resolve SRV records, which carry each instance's port.")
    scheme: Literal["http", "https"] = Field("http", description="Scheme of the endpoints built.")
    zone: str | None = Field(None, description="Zone given to every endpoint found this way.")
    min_ttl: Duration = Field(
        5.0, description="Resolve no more often than this, whatever the records' TTL says."
    )
    max_ttl: Duration = Field(
        300.0, description="Resolve at least this often, whatever the records' TTL says."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        name = value.rstrip(".")
        labels = name.split(".")
        if (
            not name
            or len(name) > 253
            or not all(
                re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?", label)
                for label in labels
            )
        ):
            raise ValueError(
                f"{value!r} is not a DNS name: write labels of letters, digits, '-' and '_' "
                "separated by dots, e.g. payments.prod.svc.cluster.local"
            )
        return name

    @model_validator(mode="after")
    def _port_or_srv(self) -> DnsDiscovery:
        if self.srv and self.port is not None:
            raise ValueError(
                "give either port (A/AAAA records) or srv: true (SRV records), not both"
            )
        if not self.srv and self.port is None:
            raise ValueError(
                "A/AAAA records carry no port: add port (e.g. port: 8080) or set srv: true"
            )
        if self.min_ttl <= 0:
            raise ValueError("min_ttl must be longer than 0; write e.g. '1s'")
        if self.min_ttl > self.max_ttl:
            raise ValueError(
                f"min_ttl ({self.min_ttl:g}s) is longer than max_ttl ({self.max_ttl:g}s)"
            )
        return self


class HealthCheck(_Model):
    """Active health checking: `GET path` on every endpoint every `interval`.

    An endpoint turns unhealthy after `unhealthy_threshold` failed probes in a
    row (an answer outside 2xx, a connection error or no answer within
    `timeout`) and healthy again after `healthy_threshold` passes in a row;
    a new endpoint's first probe decides at once. Unhealthy endpoints leave load
    balancing unless too few are left (`panic_threshold`).
    """

    path: str = Field("/healthz", description="Path probed on each endpoint.")
    interval: Duration = Field(10.0, description="Time between probes of one endpoint.")
    timeout: Duration = Field(1.0, description="A probe without an answer by then fails.")
    healthy_threshold: int = Field(
        2, ge=1, le=100, description="Passes in a row that make an unhealthy endpoint healthy."
    )
    unhealthy_threshold: int = Field(
        3, ge=1, le=100, description="Failures in a row that make a healthy endpoint unhealthy."
    )
    jitter: Duration = Field(
        0.0,
        description="Up to this much, at random, added to each interval so probes do not align.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a path starts with '/'; write '/{value}'")
        return value

    @model_validator(mode="after")
    def _timing(self) -> HealthCheck:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be longer than 0; write e.g. '5s'")
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) is longer than interval ({self.interval:g}s): "
                "probes of one endpoint would overlap"
            )
        return self


class Locality(_Model):
    """Zone-aware routing: prefer endpoints in the caller's zone (`MESH_ZONE`) while it copes."""

    enabled: bool = Field(True, description="Prefer the caller's zone at all.")
    min_healthy_percent: float = Field(
        70.0,
        ge=0.0,
        le=100.0,
        description="The caller's zone takes all its traffic while at least this share of its endpoints is healthy; below that, calls fail over to every zone's healthy endpoints.",
    )


class Discovery(_Model):
    """Where a service's endpoints come from beyond `endpoints`, and how their health is judged."""

    dns: DnsDiscovery | None = Field(None, description="Endpoints from DNS records.")
    registry: bool = Field(
        False,
        description="Endpoints from the instances that registered with the control plane.",
    )
    health_check: HealthCheck | None = Field(
        None, description="Active health probes; none means every endpoint counts as healthy."
    )
    panic_threshold: float = Field(
        50.0,
        ge=0.0,
        le=100.0,
        description="When fewer than this percentage of endpoints are healthy, route to all of them rather than overload the few (as Envoy does); 0 turns it off.",
    )
    locality: Locality = Field(default_factory=Locality)


# --------------------------------------------------------------------------- inbound


class AuthzRule(_Model):
    """Which caller identities may call the matching requests.

    Paths are matched as the app routes them; a request whose path is not in
    normal form (dot segments, `//`, `%2F`) is refused with 400 first.
    """

    path_prefix: str | None = Field(
        None,
        description="Segment-wise prefix: /v1/ (or /v1) matches /v1, /v1/ and /v1/x, never /v1x.",
    )
    path_exact: str | None = Field(None, description="The whole path, e.g. /v1/health.")
    path_template: str | None = Field(
        None, description="A template such as /v1/orders/{id}; {name} matches one path segment."
    )
    methods: tuple[Method, ...] = Field(
        (), description="Empty means any method; GET also covers HEAD."
    )
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
    """Who may call this service; the first matching rule decides, else `default`."""

    default: Literal["allow", "deny"] = "allow"
    rules: tuple[AuthzRule, ...] = ()
    mode: Mode = Field("enforce", description="shadow: record denials, let the request through.")


class RateLimit(_Model):
    """A token bucket: `requests_per_second` on average, bursts up to `burst`."""

    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(
        None, ge=1, description="Bucket size; defaults to one second's worth."
    )
    mode: Mode = "enforce"


class ConcurrencyLimit(_Model):
    """At most `limit` requests in flight; more are shed with 503 + Retry-After."""

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
    discovery: Discovery | None = Field(
        None,
        description="Endpoints from DNS or the control plane's registry, active health checks, locality and panic threshold.",
    )

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        return None if value is None else validate_spiffe_id(value)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, values: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        seen: set[str] = set()
        repeated: set[str] = set()
        for endpoint in values:
            (repeated if endpoint.url in seen else seen).add(endpoint.url)
        dupes = sorted(repeated)
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
        problem = _trust_domain_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; e.g. example.org")
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

    def __eq__(self, other: object) -> bool:
        # The memoising resolver is a cache, not content: equal documents are equal policies.
        if not isinstance(other, Policy):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = _Model.__hash__

    def service_identity(self, name: str) -> str:
        """The SPIFFE ID a service proves: its `identity` or `spiffe://<trust_domain>/<name>`."""
        service = self.services.get(name)
        if service is not None and service.identity:
            return service.identity
        return f"spiffe://{self.trust_domain}/{name}"

    def peer_identity(self, name: str, mode: str) -> str | None:
        """The SPIFFE ID a caller pins for service `name` under TLS `mode`, or None for a host-name check.

        An explicit `identity` is pinned whenever TLS is on. Without one,
        `mutual` pins the mesh's convention, `spiffe://<trust_domain>/<name>`
        (both ends hold mesh certificates), and `tls` checks the host name as
        any HTTPS client does (the server may be outside the mesh, with a
        public certificate).
        """
        if mode == "disabled":
            return None
        service = self.services.get(name)
        if service is not None and service.identity:
            return service.identity
        return self.service_identity(name) if mode == "mutual" else None
