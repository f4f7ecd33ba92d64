"""The control plane: the server that serves policy, and the client side that watches it.

Server (the `controlplane` extra: Starlette + uvicorn): `app` (routes),
`storage` (policy files, history, rollback), `watch` (long-poll hub),
`auth` (read/publish rights), `reports` (instance state), `dashboard`,
`config` (`MESH_CONTROLPLANE_*`). Client (core dependencies only):
`client` (`ControlPlaneSource`) and `reporter` (`StateReporter`).
Nothing is imported here, so `import meshlib` never pulls in Starlette.
"""

from __future__ import annotations

__all__: list[str] = []
