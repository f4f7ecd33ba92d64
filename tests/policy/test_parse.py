"""Parsing YAML, JSON and TOML documents, and locating every problem by file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib import PolicyError, load_policy, parse_policy
from tests.policy.conftest import GOOD_YAML


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_yaml_file_loads(tmp_path: Path) -> None:
    """The reference document loads with its services and routes."""
    policy = load_policy(_write(tmp_path, "mesh.yaml", GOOD_YAML))
    assert set(policy.services) == {"payments", "payments-v2"}
    assert policy.services["payments"].routes[0].name == "refunds"


def test_yaml_error_names_file_line_column_and_field(tmp_path: Path) -> None:
    """A bad value in YAML is reported at its file, line, column and dotted field."""
    path = _write(
        tmp_path, "mesh.yaml", "version: 1\nservices:\n  a:\n    retry:\n      attempts: 0\n"
    )
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert (exc.value.source, exc.value.line, exc.value.column) == (str(path), 5, 17)
    assert exc.value.field == "services.a.retry.attempts"
    assert str(exc.value).startswith(f"{path}:5:17: services.a.retry.attempts:")


def test_unknown_key_points_at_the_key(tmp_path: Path) -> None:
    """An unknown key's position is the key itself, not its value."""
    path = _write(tmp_path, "mesh.yaml", "version: 1\nservices:\n  a:\n    retri: {attempts: 2}\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert (exc.value.line, exc.value.column) == (4, 5)
    assert "did you mean 'retry'" in str(exc.value)


def test_broken_yaml_gives_line_and_column(tmp_path: Path) -> None:
    """YAML syntax errors carry the parser's position."""
    path = _write(tmp_path, "mesh.yaml", "version: 1\nservices:\n  a: {endpoints: [\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert exc.value.line is not None
    assert "not valid YAML" in str(exc.value)


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    """A key given twice is an error naming both lines, not a silent last-wins."""
    path = _write(tmp_path, "mesh.yaml", "version: 1\nservices:\n  a: {}\n  a: {}\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert "appears twice (lines 3 and 4)" in str(exc.value)
    assert exc.value.line == 4


def test_json_positions(tmp_path: Path) -> None:
    """JSON documents get line numbers too."""
    text = '{\n  "version": 1,\n  "services": {\n    "a": {"retry": {"attempts": 0}}\n  }\n}\n'
    with pytest.raises(PolicyError) as exc:
        load_policy(_write(tmp_path, "mesh.json", text))
    assert exc.value.line == 4
    assert exc.value.field == "services.a.retry.attempts"


def test_broken_json(tmp_path: Path) -> None:
    """JSON syntax errors carry line and column."""
    with pytest.raises(PolicyError) as exc:
        load_policy(_write(tmp_path, "mesh.json", '{"version": 1,\n "services": }'))
    assert exc.value.line == 2
    assert "not valid JSON" in str(exc.value)


def test_toml_positions(tmp_path: Path) -> None:
    """TOML keys are located by table header and key line."""
    text = "version = 1\n\n[services.a.retry]\nattempts = 0\n"
    with pytest.raises(PolicyError) as exc:
        load_policy(_write(tmp_path, "mesh.toml", text))
    assert exc.value.line == 4
    assert exc.value.field == "services.a.retry.attempts"


def test_broken_toml(tmp_path: Path) -> None:
    """TOML syntax errors carry the parser's line."""
    with pytest.raises(PolicyError) as exc:
        load_policy(_write(tmp_path, "mesh.toml", "version = 1\n[services\n"))
    assert exc.value.line == 2
    assert "not valid TOML" in str(exc.value)


def test_same_policy_from_three_formats(tmp_path: Path) -> None:
    """YAML, JSON and TOML spellings of one document give equal policies."""
    yaml_doc = "version: 1\nservices:\n  a:\n    endpoints: ['http://127.0.0.1:1']\n    retry: {attempts: 2}\n"
    json_doc = '{"version": 1, "services": {"a": {"endpoints": ["http://127.0.0.1:1"], "retry": {"attempts": 2}}}}'
    toml_doc = 'version = 1\n[services.a]\nendpoints = ["http://127.0.0.1:1"]\n[services.a.retry]\nattempts = 2\n'
    policies = [
        load_policy(_write(tmp_path, name, text))
        for name, text in (("a.yaml", yaml_doc), ("a.json", json_doc), ("a.toml", toml_doc))
    ]
    assert policies[0] == policies[1] == policies[2]


def test_format_guessed_from_text_without_suffix() -> None:
    """Text without a file name is JSON when it starts with '{', else YAML."""
    assert parse_policy('{"version": 1}').version == 1
    assert parse_policy("version: 1").version == 1


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("- 1\n- 2\n", "mapping at the top")])
def test_empty_or_non_mapping_documents(text: str, message: str) -> None:
    """Documents that are not a mapping get a plain explanation."""
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="x.yaml")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """An unreadable file is a PolicyError naming it."""
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "nope.yaml")
    assert exc.value.source.endswith("nope.yaml")
    assert "cannot read" in str(exc.value)


def test_policy_error_is_a_value_error() -> None:
    """PolicyError plugs into code that catches ValueError."""
    with pytest.raises(ValueError, match="version"):
        parse_policy("version: 3")


def test_missing_required_key_is_located_at_parent(tmp_path: Path) -> None:
    """A missing key is reported at its parent's line."""
    path = _write(
        tmp_path, "m.yaml", "version: 1\nservices:\n  a:\n    fault:\n      abort: {percent: 5}\n"
    )
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert exc.value.field == "services.a.fault.abort.status"
    assert exc.value.line == 5
    assert "required key 'status' is missing" in str(exc.value)
