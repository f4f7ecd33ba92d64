"""MeshSettings: MESH_* variables (and .env when asked for), validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from meshlib import MeshSettings


def test_reads_mesh_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each field reads MESH_<FIELD>; URLs are comma-separated."""
    monkeypatch.setenv("MESH_SERVICE_NAME", "orders")
    monkeypatch.setenv("MESH_CONTROL_PLANE_URL", "http://127.0.0.1:9000/, http://127.0.0.1:9001")
    monkeypatch.setenv("MESH_CONTROL_PLANE_TOKEN", "s3cret")
    settings = MeshSettings()
    assert settings.service_name == "orders"
    assert settings.control_plane_url == ("http://127.0.0.1:9000", "http://127.0.0.1:9001")
    assert "s3cret" not in repr(settings)


def test_reads_dotenv_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file in the working directory is ignored, unless _env_file names it; the environment wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MESH_POLICY_FILE=mesh.yaml\nMESH_ZONE=b\n")
    assert MeshSettings().policy_file is None
    monkeypatch.setenv("MESH_ZONE", "a")
    settings = MeshSettings(_env_file=".env")
    assert settings.policy_file == Path("mesh.yaml")
    assert settings.zone == "a"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MESH_CONTROL_PLANE_URL", "ftp://x"),
        ("MESH_HEALTH_PATH", "healthz"),
        ("MESH_TRACE_SAMPLE_RATIO", "2"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """An invalid variable fails with its field named."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as exc:
        MeshSettings()
    assert name.removeprefix("MESH_").lower() in str(exc.value)
