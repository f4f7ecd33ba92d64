"""StateReporter: posts this instance's state to the control plane in the background.

A report says who is reporting (service, instance, zone), which policy
revision is in force, and the per-destination counters that
`meshlib.outbound.stats.snapshot()` gives (imported lazily: without it the
report simply has no destinations). Other parts of meshlib add their own
sections with [`add_section`][meshlib.controlplane.reporter.add_section]
(discovery adds what each destination's discovery sees), so the reporter
imports none of them. It runs on the process's control-plane loop, trims what
it sends, and never touches a request:

```python
reporter = StateReporter(service="orders", interval=10.0)
reporter.build_report(store)    # {"service": "orders", "instance": "host:123", ...}
```
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings
from meshlib.telemetry.latency import measure_every_call

__all__ = ["StateReporter", "add_section", "outbound_snapshot", "section_snapshot"]

logger = logging.getLogger("meshlib.controlplane")

_sections: dict[str, Callable[[], dict[str, Any]]] = {}


def add_section(name: str, provider: Callable[[], dict[str, Any]]) -> None:
    """Include `provider()` as `name` in every report (a later call for `name` replaces it)."""
    _sections[name] = provider


def section_snapshot(name: str) -> dict[str, Any]:
    """The section `name` now, or `{}` when nobody provides it or its provider fails."""
    provider = _sections.get(name)
    if provider is None:
        return {}
    try:
        value: object = provider()
    except Exception:  # a reporting bug must never reach the service
        logger.debug("report section %s failed", name, exc_info=True)
        return {}
    return value if isinstance(value, dict) else {}


def outbound_snapshot() -> dict[str, Any]:
    """`meshlib.outbound.stats.snapshot()`, or `{}` when it is not available or fails."""
    try:
        from meshlib.outbound import stats
    except ImportError:
        return {}
    try:
        snapshot: object = stats.snapshot()
    except Exception:  # a reporting bug must never reach the service
        logger.debug("meshlib.outbound.stats.snapshot() failed", exc_info=True)
        return {}
    return snapshot if isinstance(snapshot, dict) else {}


def _requests(item: tuple[str, Any]) -> int:
    value = item[1].get("requests", 0) if isinstance(item[1], dict) else 0
    return value if isinstance(value, int) else 0


def _top(mapping: Any, limit: int) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    items = [(str(k), v) for k, v in mapping.items() if isinstance(v, dict)]
    if len(items) > limit:
        items = sorted(items, key=_requests, reverse=True)[:limit]
    return dict(items)


class StateReporter:
    """Builds and posts reports every `interval` seconds (with ±10% jitter, so a fleet spreads out)."""

    def __init__(
        self,
        *,
        service: str | None,
        instance: str | None = None,
        zone: str | None = None,
        interval: float = 10.0,
        timeout: float = 2.0,
        max_destinations: int = 100,
        max_endpoints: int = 32,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.service = service or "unknown"
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.zone = zone
        self.interval = interval
        self.timeout = timeout
        self.max_destinations = max_destinations
        self.max_endpoints = max_endpoints
        self._clock = clock
        self.sent = 0
        self.failed = 0
        # The dashboard shows every edge's latency split, so every call measures it.
        measure_every_call()

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> StateReporter:
        """A reporter for this process as `MESH_SERVICE_NAME`/`MESH_INSTANCE_ID` describe it."""
        return cls(
            service=settings.service_name,
            instance=settings.instance_id,
            zone=settings.zone,
            interval=settings.report_interval,
        )

    def build_report(self, store: PolicyStore | None) -> dict[str, Any]:
        """The report to send now: identity, policy revision in force, trimmed destinations."""
        snapshot = store.peek() if store is not None else None
        destinations = _top(outbound_snapshot().get("destinations"), self.max_destinations)
        for name, dest in destinations.items():
            if "endpoints" in dest:
                destinations[name] = {
                    **dest,
                    "endpoints": _top(dest["endpoints"], self.max_endpoints),
                }
        return {
            "service": self.service,
            "instance": self.instance,
            "zone": self.zone,
            "policy_revision": snapshot.revision if snapshot else None,
            "sent_at": self._clock.wall(),
            "destinations": destinations,
            "discovery": dict(list(section_snapshot("discovery").items())[: self.max_destinations]),
        }

    async def send(
        self,
        client: httpx.AsyncClient,
        url: str,
        store: PolicyStore | None,
        *,
        extensions: dict[str, Any] | None = None,
    ) -> bool:
        """Post one report to `url`; False (logged at debug, counted) when it did not land."""
        try:
            response = await client.post(
                url + "/v1/reports",
                json=self.build_report(store),
                timeout=self.timeout,
                extensions=extensions,
            )
            ok = response.status_code == 202
            if not ok:
                logger.debug(
                    "report refused by %s: %s %s", url, response.status_code, response.text[:200]
                )
        except httpx.HTTPError as exc:
            logger.debug("report to %s failed: %s", url, exc)
            ok = False
        if ok:
            self.sent += 1
        else:
            self.failed += 1
        return ok

    async def run(
        self,
        client: httpx.AsyncClient,
        urls: Sequence[str],
        store: PolicyStore | None,
        *,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        """Report now and then every `interval` seconds until cancelled, failing over between urls."""
        index = 0
        while True:
            try:
                if not await self.send(client, urls[index], store, extensions=extensions):
                    index = (index + 1) % len(urls)
            except Exception:  # never let the reporter die of a bug
                logger.exception("state reporter failed")
            jitter = 1.0 + (self._clock.random() - 0.5) * 0.2
            await asyncio.sleep(self.interval * jitter)
