"""Inbound: the ASGI and WSGI middlewares around one framework-neutral core.

`MeshMiddleware` (ASGI) and `MeshWSGIMiddleware` (WSGI) give a service
trace context, Server-Timing, deadlines, caller identity and authz,
admission control and health endpoints, all from
`services.<self>.inbound` in the policy:

```python
app.add_middleware(MeshMiddleware, service_name="payments")
```
"""

from __future__ import annotations

from meshlib.inbound.asgi import MeshMiddleware
from meshlib.inbound.core import drain_all
from meshlib.inbound.wsgi import MeshWSGIMiddleware

__all__ = ["MeshMiddleware", "MeshWSGIMiddleware", "drain_all"]
