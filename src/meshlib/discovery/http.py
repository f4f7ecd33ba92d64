"""Talking to the control plane from discovery: failover between its URLs, and TLS verification.

Used by the :class:`~meshlib.discovery.registry.Registrar`, and (the TLS part)
by the registry watch that :class:`~meshlib.discovery.manager.Discovery` starts::

    client = httpx.Client(verify=control_plane_verify(settings))
    response = request_any(client, settings.control_plane_url, "GET", "/v1/registry")
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from meshlib.settings import MeshSettings

__all__ = ["control_plane_verify", "request_any"]


def request_any(
    client: httpx.Client, bases: Sequence[str], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """Send to the first control plane in ``bases`` that answers at all (failing over on errors)."""
    error: httpx.HTTPError | None = None
    for base in bases:
        try:
            return client.request(method, base.rstrip("/") + path, **kwargs)
        except httpx.HTTPError as exc:
            error = exc
    assert error is not None, "no control plane URL given"
    raise error


def control_plane_verify(settings: MeshSettings) -> ssl.SSLContext | bool:
    """How to verify the control plane: the same ``MESH_TLS_*`` context the policy watcher uses."""
    # One definition of "how we talk to the control plane", shared with ControlPlaneSource.
    from meshlib.controlplane.client import _ssl_context

    return _ssl_context(settings)
