"""Discovery's metrics: endpoint set changes, health transitions, DNS resolutions, lease events.

Names come from `meshlib.telemetry.names`, the one catalogue. The meter
is looked up at use time, so a provider configured after import is honoured
and nothing happens at import. These are rare events (a change, not a
request), so the look-up cost does not matter:

```python
telemetry.endpoints_changed("payments", 3)
```
"""

from __future__ import annotations

from opentelemetry import metrics

from meshlib.telemetry import names

__all__ = [
    "dns_resolution",
    "endpoints_changed",
    "health_transition",
    "lease_event",
]


def _add(spec: names.Instrument, attributes: dict[str, str | int]) -> None:
    from meshlib import __version__

    meter = metrics.get_meter(names.SCOPE, __version__)
    names.create_instrument(meter, spec).add(1, attributes)


def endpoints_changed(service: str, count: int) -> None:
    """A service's routable endpoint set changed; `count` endpoints are in it now."""
    _add(
        names.DISCOVERY_ENDPOINT_SET_CHANGES,
        {names.ATTR_SERVICE: service, names.ATTR_ENDPOINT_COUNT: count},
    )


def health_transition(service: str, endpoint: str, health: str) -> None:
    """An active health check moved `endpoint` to `health`."""
    _add(
        names.DISCOVERY_HEALTH_TRANSITIONS,
        {names.ATTR_SERVICE: service, names.ATTR_ENDPOINT: endpoint, names.ATTR_HEALTH: health},
    )


def dns_resolution(service: str, outcome: str) -> None:
    """A DNS resolution ended with `outcome` (ok, failed, empty)."""
    _add(
        names.DISCOVERY_DNS_RESOLUTIONS,
        {names.ATTR_SERVICE: service, names.ATTR_OUTCOME: outcome},
    )


def lease_event(service: str, event: str) -> None:
    """This instance's registration saw `event` (registered, renewed, lost, deregistered)."""
    _add(
        names.DISCOVERY_REGISTRATION_EVENTS,
        {names.ATTR_SERVICE: service, names.ATTR_REGISTRATION_EVENT: event},
    )
