"""From the middleware's arguments to an `InboundCore`.

`policy` may be a [`Policy`][meshlib.policy.model.Policy], a path to a policy
file (loaded now and watched for changes), a
[`PolicyStore`][meshlib.policy.store.PolicyStore], or `None` for the process-wide
store that `MeshSettings` selects. The service whose `inbound` section
applies is `service_name`, else `MESH_SERVICE_NAME`:

```python
core = build_core(policy="mesh.yaml", service_name="payments")
```
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from opentelemetry import metrics, trace

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import SettingsError
from meshlib.inbound.core import InboundCore
from meshlib.policy.sources import PolicyArg, store_for
from meshlib.settings import MeshSettings
from meshlib.telemetry.server import ServerTelemetry

__all__ = ["MiddlewareBase", "PolicyArg", "build_core"]


def build_core(
    policy: PolicyArg = None,
    *,
    service_name: str | None = None,
    settings: MeshSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> InboundCore:
    """Resolve the policy store and the service name, and build the shared core.

    Raises:
        SettingsError: no service name was given and MESH_SERVICE_NAME is unset,
            or no policy was given and MeshSettings names no policy source.
        PolicyError: the policy file is invalid.
    """
    settings = settings if settings is not None else MeshSettings()
    service = service_name or settings.service_name
    if not service:
        raise SettingsError(
            "MeshMiddleware needs to know which service it protects: pass "
            "service_name='payments' or set MESH_SERVICE_NAME; its rules are read from "
            "services.<service_name>.inbound in the policy"
        )
    store, source = store_for(policy, settings, service_name=service)
    closers: list[Any] = [source] if source is not None else []
    telemetry = ServerTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return InboundCore(
        store, service, settings=settings, telemetry=telemetry, clock=clock, on_close=closers
    )


AppT = TypeVar("AppT")


class MiddlewareBase(Generic[AppT]):
    """What the ASGI and WSGI middlewares share: the wrapped app, the core, drain and close."""

    def __init__(
        self,
        app: AppT,
        *,
        policy: PolicyArg = None,
        service_name: str | None = None,
        settings: MeshSettings | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.core = build_core(
            policy,
            service_name=service_name,
            settings=settings,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            clock=clock,
        )

    def drain(self) -> None:
        """Answer readiness probes with 503 from now on (graceful shutdown)."""
        self.core.drain()

    def close(self) -> None:
        """Stop the policy file watcher this middleware started, if any."""
        self.core.close()
