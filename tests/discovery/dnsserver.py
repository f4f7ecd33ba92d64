"""A tiny authoritative DNS server on 127.0.0.1 for tests (dnslib), with records changed at will."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


@dataclass
class Zone(BaseResolver):  # type: ignore[misc]
    """Records by (name, type); every query is logged with its time.

    `records[("api.test.", "A")] = [("127.0.0.1", 30)]` holds (rdata text, TTL);
    `rcode[name] = "SERVFAIL"` makes a name fail; `additional` holds glue for SRV.
    """

    records: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    additional: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    rcode: dict[str, str] = field(default_factory=dict)
    queries: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, rtype: str, *rdata: str, ttl: int = 30) -> None:
        """Replace the records of (name, rtype)."""
        with self.lock:
            self.records[(name, rtype)] = [(r, ttl) for r in rdata]

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        name = str(request.q.qname)
        rtype = QTYPE[request.q.qtype]
        reply = request.reply()
        with self.lock:
            self.queries.append((time.monotonic(), name, rtype))
            if name in self.rcode:
                reply.header.rcode = getattr(RCODE, self.rcode[name])
                return reply
            known = any(n == name for n, _ in self.records)
            for rdata, ttl in self.records.get((name, rtype), []):
                reply.add_answer(*RR.fromZone(f"{name} {ttl} IN {rtype} {rdata}"))
            for rname, rrtype, rdata in self.additional.get(name, []):
                reply.add_ar(*RR.fromZone(f"{rname} 30 IN {rrtype} {rdata}"))
            if not known:
                reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def count(self, name: str, rtype: str) -> int:
        """How many queries asked for (name, rtype)."""
        with self.lock:
            return sum(1 for _, n, t in self.queries if (n, t) == (name, rtype))

    def times(self, name: str, rtype: str) -> list[float]:
        """When (monotonic) queries asked for (name, rtype)."""
        with self.lock:
            return [at for at, n, t in self.queries if (n, t) == (name, rtype)]


@contextmanager
def serve_dns(zone: Zone) -> Iterator[int]:
    """Serve `zone` over UDP on 127.0.0.1 until the block ends; yields the port."""
    quiet = DNSLogger("-request,-reply,-truncated,-error", prefix=False)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    try:
        yield int(server.server.server_address[1])
    finally:
        server.stop()
        server.server.server_close()
        server.thread.join(timeout=5)
