"""Discovery's metrics: endpoint set changes, health transitions, DNS failures, lease events.

Instruments are looked up at use time through ``opentelemetry.metrics``, so
a meter provider configured after import is honoured, and nothing happens at
import. These events are rare (a change, not a request), so the look-up cost
does not matter::

    telemetry.endpoints_changed("payments", 3)
"""

from __future__ import annotations

from opentelemetry import metrics

__all__ = [
    "dns_resolution",
    "endpoints_changed",
    "health_transition",
    "lease_event",
]


def _meter() -> metrics.Meter:
    from meshlib import __version__

    return metrics.get_meter("meshlib", __version__)


def endpoints_changed(service: str, count: int) -> None:
    """A service's routable endpoint set changed; ``count`` endpoints are in it now."""
    _meter().create_counter(
        "meshlib.discovery.endpoint_set.changes",
        unit="{change}",
        description="Changes of a service's routable endpoint set.",
    ).add(1, {"meshlib.service": service, "meshlib.endpoints": count})


def health_transition(service: str, endpoint: str, health: str) -> None:
    """An active health check moved ``endpoint`` to ``health``."""
    _meter().create_counter(
        "meshlib.discovery.health.transitions",
        unit="{transition}",
        description="Endpoints turning healthy or unhealthy under active health checks.",
    ).add(1, {"meshlib.service": service, "server.address": endpoint, "meshlib.health": health})


def dns_resolution(service: str, outcome: str) -> None:
    """A DNS resolution ended with ``outcome`` (ok, failed, empty)."""
    _meter().create_counter(
        "meshlib.discovery.dns.resolutions",
        unit="{resolution}",
        description="DNS resolutions of discovered services by outcome.",
    ).add(1, {"meshlib.service": service, "meshlib.outcome": outcome})


def lease_event(service: str, event: str) -> None:
    """This instance's registration saw ``event`` (registered, renewed, lost, deregistered)."""
    _meter().create_counter(
        "meshlib.discovery.registration.events",
        unit="{event}",
        description="Registration lease events of this instance.",
    ).add(1, {"meshlib.service": service, "meshlib.event": event})
