"""Type-checked (never run): the policy API as users call it; mypy --strict must accept it."""

from __future__ import annotations

from pathlib import Path

import meshlib
from meshlib.policy.resolve import EffectivePolicy, resolve
from meshlib.policy.sources import FileSource, PolicySource
from meshlib.policy.store import PolicySnapshot

policy: meshlib.Policy = meshlib.load_policy(Path("mesh.yaml"))
policy = meshlib.load_policy({"version": 1})
policy = meshlib.parse_policy("version: 1", source="inline.yaml", fmt="yaml")
effective: EffectivePolicy = resolve(policy, "payments", "GET", "/v1", {"x-canary": "yes"})
total: float = effective.timeouts.total
layer: str = effective.source_of("timeouts.total")

store = meshlib.PolicyStore(policy, source="code")
snapshot: PolicySnapshot = store.current
unsubscribe = store.subscribe(lambda old, new: None)
unsubscribe()
source: PolicySource = FileSource("mesh.yaml", poll_interval=0.5)

try:
    meshlib.load_policy("mesh.yaml")
except meshlib.PolicyError as exc:
    first: meshlib.PolicyIssue = exc.issues[0]
    line: int | None = exc.line
settings = meshlib.MeshSettings(service_name="orders")
