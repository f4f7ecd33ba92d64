"""The generated reference pages list every policy field and every setting."""

from __future__ import annotations

from pydantic import BaseModel

from meshlib import MeshSettings
from meshlib.policy import model
from meshlib.policy.reference import render_policy_reference, render_settings_reference


def test_every_model_and_field_is_documented() -> None:
    """Each model reachable from Policy has a section listing all its fields."""
    page = render_policy_reference()
    for name in model.__all__:
        cls = getattr(model, name)
        if isinstance(cls, type) and issubclass(cls, BaseModel) and name != "PathMatch":
            assert f"## {name}\n" in page, name
            for field in cls.model_fields:
                assert f"| `{field}` |" in page, f"{name}.{field}"


def test_durations_shown_as_written() -> None:
    """Duration defaults are shown in document syntax, not as float seconds."""
    page = render_policy_reference()
    assert "| `total` | duration | `10s` |" in page


def test_every_setting_is_documented() -> None:
    """Each MeshSettings field appears as its MESH_ variable."""
    page = render_settings_reference()
    for name in MeshSettings.model_fields:
        assert f"`MESH_{name.upper()}`" in page
