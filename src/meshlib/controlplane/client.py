"""ControlPlaneSource: fetch, watch and cache the policy served by the control plane.

Placeholder until the control-plane issue lands: selecting the control plane
with ``MESH_CONTROL_PLANE_URL`` fails with a clear error instead of silently
running without policy.
"""

from __future__ import annotations

from meshlib.errors import SettingsError
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings

__all__ = ["ControlPlaneSource"]


class ControlPlaneSource:
    """Feeds the store from the control plane (not yet available in this build)."""

    name = "control-plane"

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ControlPlaneSource:
        """Refuse clearly: the client side of the control plane is not built yet."""
        raise SettingsError(
            "MESH_CONTROL_PLANE_URL is set, but this meshlib build has no control-plane client "
            "yet; use MESH_POLICY_FILE"
        )

    def start(self, store: PolicyStore) -> None:
        """Not reachable: from_settings refuses."""

    def close(self) -> None:
        """Nothing to stop."""
