"""meshlib: a service mesh as a Python library.

Outbound calls get routing, load balancing, retries with a budget, circuit
breaking, deadlines, mTLS and tracing; inbound requests get trace context,
identity and authz, admission control and health endpoints. One policy,
hot-reloaded from a file or the control plane, drives all of it.

The top level holds what a service needs: the clients and middleware, the
policy and settings they are built from, and the errors to catch. The rest
lives in the module named for it (`meshlib.serve`, `meshlib.testing`,
`meshlib.deadline`, `meshlib.policy.resolve`, ...). Names are imported on
first use, so `import meshlib` is cheap, starts nothing and imports no web
framework:

```python
import meshlib

client = meshlib.MeshClient("mesh.yaml", service_name="orders")   # imports the client now
```
"""

import importlib as _importlib

# Not typing.TYPE_CHECKING: importing typing would be most of what `import meshlib` costs.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from meshlib.errors import (
        CertificateError,
        CircuitOpenError,
        ControlPlaneError,
        DeadlineExceeded,
        MeshError,
        NoEndpointsError,
        PeerIdentityError,
        PolicyError,
        PolicyIssue,
        SettingsError,
        TLSRequiredError,
        TLSVerificationError,
    )
    from meshlib.inbound.asgi import MeshMiddleware
    from meshlib.inbound.wsgi import MeshWSGIMiddleware
    from meshlib.outbound.client import AsyncMeshClient, MeshClient
    from meshlib.outbound.transport import AsyncMeshTransport, MeshTransport
    from meshlib.policy.model import Policy
    from meshlib.policy.parse import load_policy, parse_policy
    from meshlib.policy.store import PolicyStore
    from meshlib.settings import MeshSettings

    __version__: str

del TYPE_CHECKING

__all__ = [
    "AsyncMeshClient",
    "AsyncMeshTransport",
    "CertificateError",
    "CircuitOpenError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "MeshClient",
    "MeshError",
    "MeshMiddleware",
    "MeshSettings",
    "MeshTransport",
    "MeshWSGIMiddleware",
    "NoEndpointsError",
    "PeerIdentityError",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyStore",
    "SettingsError",
    "TLSRequiredError",
    "TLSVerificationError",
    "__version__",
    "load_policy",
    "parse_policy",
]

_ERRORS = (
    "CertificateError",
    "CircuitOpenError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "MeshError",
    "NoEndpointsError",
    "PeerIdentityError",
    "PolicyError",
    "PolicyIssue",
    "SettingsError",
    "TLSRequiredError",
    "TLSVerificationError",
)

_HOMES: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "meshlib.errors"),
    "AsyncMeshClient": "meshlib.outbound.client",
    "MeshClient": "meshlib.outbound.client",
    "AsyncMeshTransport": "meshlib.outbound.transport",
    "MeshTransport": "meshlib.outbound.transport",
    "MeshMiddleware": "meshlib.inbound.asgi",
    "MeshWSGIMiddleware": "meshlib.inbound.wsgi",
    "MeshSettings": "meshlib.settings",
    "Policy": "meshlib.policy.model",
    "PolicyStore": "meshlib.policy.store",
    "load_policy": "meshlib.policy.parse",
    "parse_policy": "meshlib.policy.parse",
}
"""Where each top-level name lives; imported on first access (PEP 562)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from meshlib.extras import DISTRIBUTION

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def __getattr__(name: str) -> "Any":
    """Import a top-level name from its module on first use, then keep it here."""
    if name == "__version__":
        value: Any = _version()
    elif name in _HOMES:
        value = getattr(_importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'meshlib' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
