"""The policy: its model, parsing, resolution, the store that holds it and the sources that feed it."""

from meshlib.policy.model import Policy
from meshlib.policy.parse import load_policy, parse_policy
from meshlib.policy.resolve import EffectivePolicy, resolve
from meshlib.policy.store import PolicySnapshot, PolicyStore

__all__ = [
    "EffectivePolicy",
    "Policy",
    "PolicySnapshot",
    "PolicyStore",
    "load_policy",
    "parse_policy",
    "resolve",
]
