"""The outbound data path: mesh clients, their transport, and the decisions behind each call.

See `meshlib.outbound.flow` for the algorithm and
`meshlib.outbound.transport` for the sync and async drivers.
"""

from __future__ import annotations

from meshlib.outbound.client import AsyncMeshClient, MeshClient
from meshlib.outbound.steps import ATTEMPTS_EXTENSION, Attempt
from meshlib.outbound.transport import AsyncMeshTransport, MeshTransport

__all__ = [
    "ATTEMPTS_EXTENSION",
    "AsyncMeshClient",
    "AsyncMeshTransport",
    "Attempt",
    "MeshClient",
    "MeshTransport",
]
