"""Endpoints from DNS: A/AAAA or SRV records, re-resolved in the background on their TTL.

`DnsTracker` is the sans-IO part: it holds the endpoints last known
and decides when to resolve next. The records' TTL is clamped to
`[min_ttl, max_ttl]`; a failure keeps the last known endpoints, is counted,
and is retried sooner (`min_ttl` doubling up to `max_ttl`). An empty answer
(NXDOMAIN, no records) is treated with care: while endpoints are known it is
counted and ignored until it has persisted for `max_ttl`, so one bad answer
or a DNS server restarting cannot empty a service's endpoint list:

```python
tracker = DnsTracker(dns_config, clock)
if tracker.due():
    tracker.on_answer(resolver.resolve(dns_config))   # True when the endpoints changed
tracker.endpoints
```

[`DnsWatcher`][meshlib.discovery.dns.DnsWatcher] is the driver: a daemon thread that resolves when the
tracker says so and hands changes to a callback, so no request ever waits on
DNS. Resolution uses dnspython ([`DnspythonResolver`][meshlib.discovery.dns.DnspythonResolver]: TTLs, SRV,
a configurable nameserver and port); without it, A/AAAA fall back to the
system resolver (`SystemResolver`, no TTL: `min_ttl` is used).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.discovery import telemetry
from meshlib.policy.model import DnsDiscovery, Endpoint

__all__ = [
    "DnsAnswer",
    "DnsError",
    "DnsResolver",
    "DnsTracker",
    "DnsWatcher",
    "DnspythonResolver",
    "SystemResolver",
    "default_resolver",
]

logger = logging.getLogger("meshlib.discovery")


class DnsError(Exception):
    """A resolution failed (timeout, SERVFAIL, no nameserver answered); not an empty answer."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What one resolution found: endpoints, and the records' TTL in seconds (None: unknown)."""

    endpoints: tuple[Endpoint, ...]
    ttl: float | None = None


class DnsResolver(Protocol):
    """Resolves a `dns` policy section to endpoints; raises `DnsError` on failure."""

    def resolve(self, config: DnsDiscovery) -> DnsAnswer:
        """Resolve now (blocking, bounded by the resolver's own timeout)."""


def _endpoint(config: DnsDiscovery, address: str, port: int, weight: int = 1) -> Endpoint:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return Endpoint(
        url=f"{config.scheme}://{host}:{port}",
        zone=config.zone,
        weight=max(1, min(1000, weight)),
    )


def _unique(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple({e.url: e for e in endpoints}.values())


class DnspythonResolver:
    """A/AAAA and SRV through dnspython, with the records' TTL.

    `nameservers` and `port` pick the DNS server (default: the system's
    `/etc/resolv.conf`); `timeout` bounds one whole resolution:

    ```python
    DnspythonResolver(nameservers=["127.0.0.1"], port=5353).resolve(config)
    ```
    """

    def __init__(
        self, nameservers: Sequence[str] | None = None, *, port: int = 53, timeout: float = 2.0
    ) -> None:
        try:
            import dns.resolver
        except ImportError:  # pragma: no cover - depends on the environment
            from meshlib.extras import install_hint

            raise ImportError(
                "DNS discovery with TTLs and SRV records needs dnspython: run "
                f"`{install_hint('dns')}` (or `pip install dnspython`)"
            ) from None
        resolver = dns.resolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            resolver.nameservers = list(nameservers)
            resolver.port = port
        self._resolver = resolver
        self.timeout = timeout

    def _query(self, name: str, rdtype: str) -> tuple[list[Any], float | None, list[Any]]:
        """Records, their TTL and the additional section; empty on NXDOMAIN / no answer."""
        import dns.exception
        import dns.resolver

        try:
            answer = self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=self.timeout, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], None, []
        except dns.exception.DNSException as exc:
            raise DnsError(f"resolving {rdtype} {name}: {exc}") from exc
        rrset = answer.rrset
        if rrset is None:
            return [], None, []
        return list(rrset), float(rrset.ttl), list(answer.response.additional)

    def _addresses(self, name: str) -> tuple[list[str], float | None]:
        addresses: list[str] = []
        ttls: list[float] = []
        for rdtype in ("A", "AAAA"):
            records, ttl, _ = self._query(name, rdtype)
            addresses += [str(r) for r in records]
            if ttl is not None:
                ttls.append(ttl)
        return addresses, min(ttls) if ttls else None

    def resolve(self, config: DnsDiscovery) -> DnsAnswer:
        """Resolve `config.name`: A and AAAA with `config.port`, or SRV (lowest priority)."""
        if not config.srv:
            assert config.port is not None  # the model requires port without srv
            addresses, ttl = self._addresses(config.name)
            return DnsAnswer(_unique([_endpoint(config, a, config.port) for a in addresses]), ttl)
        records, ttl, additional = self._query(config.name, "SRV")
        if not records:
            return DnsAnswer((), ttl)
        best = min(r.priority for r in records)
        glue: dict[str, list[str]] = {}
        for rrset in additional:
            if rrset.rdtype in (1, 28):  # A, AAAA
                glue.setdefault(str(rrset.name), []).extend(str(r) for r in rrset)
        endpoints: list[Endpoint] = []
        ttls = [ttl] if ttl is not None else []
        for record in records:
            if record.priority != best:
                continue
            target = str(record.target)
            addresses = glue.get(target, [])
            if not addresses:
                addresses, target_ttl = self._addresses(target)
                if target_ttl is not None:
                    ttls.append(target_ttl)
            endpoints += [_endpoint(config, a, record.port, record.weight) for a in addresses]
        return DnsAnswer(_unique(endpoints), min(ttls) if ttls else None)


class SystemResolver:
    """A/AAAA through the system resolver (`getaddrinfo`): no TTL and no SRV."""

    def resolve(self, config: DnsDiscovery) -> DnsAnswer:
        """Resolve `config.name` with `getaddrinfo`; SRV needs dnspython."""
        if config.srv or config.port is None:
            from meshlib.extras import install_hint

            raise DnsError(f"SRV records need dnspython: run `{install_hint('dns')}`")
        try:
            infos = socket.getaddrinfo(config.name, config.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                return DnsAnswer(())
            raise DnsError(f"resolving {config.name}: {exc}") from exc
        port = config.port
        return DnsAnswer(_unique([_endpoint(config, str(info[4][0]), port) for info in infos]))


def default_resolver() -> DnsResolver:
    """Dnspython with the system's nameservers when installed, else the system resolver."""
    try:
        return DnspythonResolver()
    except ImportError:
        return SystemResolver()


class DnsTracker:
    """Last known endpoints of one DNS name and when to resolve it next (sans-IO)."""

    def __init__(self, config: DnsDiscovery, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.endpoints: tuple[Endpoint, ...] | None = None
        """The endpoints last known; None before the first usable answer."""
        self.next_at = clock.monotonic()
        self.resolutions = 0
        self.failures = 0
        self.empty_answers = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._empty_since: float | None = None

    def due(self) -> bool:
        """Whether a resolution is due now."""
        return self.clock.monotonic() >= self.next_at

    def on_answer(self, answer: DnsAnswer) -> bool:
        """Adopt an answer; True when the known endpoints changed."""
        config, now = self.config, self.clock.monotonic()
        self.resolutions += 1
        self.consecutive_failures = 0
        if not answer.endpoints and self.endpoints:
            self.empty_answers += 1
            if self._empty_since is None:
                self._empty_since = now
            if now - self._empty_since < config.max_ttl:
                logger.warning(
                    "%s: empty DNS answer; keeping the %d endpoints last known",
                    config.name,
                    len(self.endpoints),
                )
                self.next_at = now + config.min_ttl
                return False
        else:
            self._empty_since = None
        ttl = config.min_ttl if answer.ttl is None else answer.ttl
        self.next_at = now + min(max(ttl, config.min_ttl), config.max_ttl)
        changed = answer.endpoints != self.endpoints
        self.endpoints = answer.endpoints
        return changed

    def on_failure(self, error: str) -> None:
        """Count a failed resolution; the endpoints stay and the retry comes sooner."""
        config = self.config
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        backoff = config.min_ttl * 2 ** min(self.consecutive_failures - 1, 16)
        self.next_at = self.clock.monotonic() + min(backoff, config.max_ttl)


class DnsWatcher:
    """Resolves one `dns` section in a daemon thread and calls `on_change(endpoints)`.

    ```python
    watcher = DnsWatcher("payments", config, on_change=lambda eps: print(eps))
    watcher.start()
    watcher.wait_resolved(1.0)    # optional: wait for the first answer
    watcher.close()
    ```
    """

    def __init__(
        self,
        service: str,
        config: DnsDiscovery,
        on_change: Callable[[tuple[Endpoint, ...]], None],
        *,
        resolver: DnsResolver | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.service = service
        self.tracker = DnsTracker(config, clock)
        self.resolver = resolver or default_resolver()
        self._on_change = on_change
        self._stop = threading.Event()
        self._resolved = threading.Event()
        self._thread: threading.Thread | None = None

    def resolve_once(self) -> None:
        """Resolve now and apply the outcome (what the thread does when a resolution is due)."""
        tracker, service = self.tracker, self.service
        try:
            answer = self.resolver.resolve(tracker.config)
        except Exception as exc:  # any resolver failure keeps the last known endpoints
            tracker.on_failure(str(exc))
            telemetry.dns_resolution(service, "failed")
            logger.warning(
                "%s: DNS resolution of %s failed (%d in a row), keeping the last known "
                "endpoints: %s",
                service,
                tracker.config.name,
                tracker.consecutive_failures,
                exc,
            )
            return
        telemetry.dns_resolution(service, "ok" if answer.endpoints else "empty")
        if tracker.on_answer(answer) and tracker.endpoints is not None:
            logger.info("%s: DNS now gives %d endpoints", service, len(tracker.endpoints))
            self._on_change(tracker.endpoints)
        self._resolved.set()

    def _loop(self) -> None:
        clock = self.tracker.clock
        while not self._stop.is_set():
            if self.tracker.due():
                try:
                    self.resolve_once()
                except Exception:  # a callback bug must not stop discovery
                    logger.exception("%s: applying a DNS answer failed", self.service)
            self._stop.wait(max(0.0, self.tracker.next_at - clock.monotonic()))

    def start(self) -> None:
        """Start resolving in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"meshlib-dns:{self.service}", daemon=True
            )
            self._thread.start()

    def wait_resolved(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first usable answer; True if it came."""
        return self._resolved.wait(timeout)

    def close(self) -> None:
        """Stop the thread; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
