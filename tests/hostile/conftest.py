"""Fixtures the hostile-input tests borrow from their neighbours."""

from __future__ import annotations

from tests.controlplane.conftest import policy_dir

__all__ = ["policy_dir"]
