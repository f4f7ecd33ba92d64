"""Service discovery: endpoints from DNS and the control plane's registry, active health, locality.

See :class:`meshlib.discovery.endpoints.EndpointSet` for how the sources,
health and zones combine into the endpoints a balancer is offered.
"""

from __future__ import annotations

__all__: list[str] = []
