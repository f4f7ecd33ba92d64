"""Service discovery: endpoints from DNS and the control plane's registry, active health, locality.

A service's `discovery` policy section turns it on; MeshClient then balances
over what [`EndpointSet`][meshlib.discovery.EndpointSet] selects (healthy endpoints, the caller's zone
first, every endpoint in panic). A service registers itself with a
[`Registrar`][meshlib.discovery.Registrar]:

```python
registrar = Registrar.from_settings(MeshSettings(), "http://10.0.0.7:8080")
registrar.start(wait=2.0)
...
registrar.drain(delay=2.0)
```
"""

from __future__ import annotations

from meshlib.discovery.dns import DnsAnswer, DnspythonResolver, DnsTracker, DnsWatcher
from meshlib.discovery.endpoints import EndpointSet, Selection, select_endpoints
from meshlib.discovery.health import Health, HealthMonitor, HealthProber
from meshlib.discovery.manager import Discovery
from meshlib.discovery.registry import InstanceInfo, LeaseState, Registrar
from meshlib.discovery.watch import RegistryWatcher

__all__ = [
    "Discovery",
    "DnsAnswer",
    "DnsTracker",
    "DnsWatcher",
    "DnspythonResolver",
    "EndpointSet",
    "Health",
    "HealthMonitor",
    "HealthProber",
    "InstanceInfo",
    "LeaseState",
    "Registrar",
    "RegistryWatcher",
    "Selection",
    "select_endpoints",
]
