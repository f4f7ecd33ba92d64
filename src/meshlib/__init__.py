"""meshlib: a service mesh as a Python library.

Outbound calls get routing, load balancing, retries with a budget, circuit
breaking, deadlines, mTLS and tracing; inbound requests get trace context,
identity and authz, admission control and health endpoints. One policy,
hot-reloaded from a file or the control plane, drives all of it.

Importing meshlib starts nothing and imports no web framework.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from meshlib.controlplane.client import ControlPlaneSource
from meshlib.deadline import Deadline, deadline_scope
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
)
from meshlib.inbound.asgi import MeshMiddleware
from meshlib.inbound.wsgi import MeshWSGIMiddleware
from meshlib.outbound.client import AsyncMeshClient, MeshClient
from meshlib.outbound.transport import AsyncMeshTransport, MeshTransport
from meshlib.policy.model import Policy
from meshlib.policy.parse import load_policy, parse_policy
from meshlib.policy.resolve import EffectivePolicy, resolve
from meshlib.policy.sources import FileSource, PolicySource
from meshlib.policy.store import PolicySnapshot, PolicyStore
from meshlib.serve import serve
from meshlib.settings import MeshSettings
from meshlib.telemetry.setup import configure_telemetry
from meshlib.testing import set_testing

try:
    __version__ = _version("meshlib")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AsyncMeshClient",
    "AsyncMeshTransport",
    "CertificateError",
    "CircuitOpenError",
    "ControlPlaneError",
    "ControlPlaneSource",
    "Deadline",
    "DeadlineExceeded",
    "EffectivePolicy",
    "FileSource",
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
    "PolicySnapshot",
    "PolicySource",
    "PolicyStore",
    "SettingsError",
    "__version__",
    "configure_telemetry",
    "deadline_scope",
    "load_policy",
    "parse_policy",
    "resolve",
    "serve",
    "set_testing",
]
