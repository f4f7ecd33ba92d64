"""The meshlib CLI's policy commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshlib.cli import main
from tests.policy.conftest import GOOD_YAML

BAD_DOCS = {
    "unknown.yaml": (
        "version: 1\nservices:\n  a:\n    retri: {}\n",
        "unknown.yaml:4:5: services.a.retri",
    ),
    "attempts.yaml": (
        "version: 1\ndefaults:\n  retry:\n    attempts: 0\n",
        "attempts.yaml:4:15: defaults.retry.attempts",
    ),
    "duration.yaml": (
        "version: 1\ndefaults:\n  timeouts: {total: 10}\n",
        "duration.yaml:3:21: defaults.timeouts.total",
    ),
    "endpoint.yaml": (
        "version: 1\nservices:\n  a:\n    endpoints: [localhost]\n",
        "endpoint.yaml:4:17: services.a.endpoints[0]",
    ),
    "broken.yaml": ("version: 1\nservices: [\n", "broken.yaml:3:1: not valid YAML"),
}


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid document exits 0."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    assert main(["policy", "validate", str(path)]) == 0
    assert "ok (2 services)" in capsys.readouterr().out


def test_validate_reports_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad documents exit 1, naming file, line and field for each."""
    paths = []
    for name, (text, _) in BAD_DOCS.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    assert main(["policy", "validate", *paths]) == 1
    err = capsys.readouterr().err
    for _, expected in BAD_DOCS.values():
        assert expected in err
    assert "5 of 5 files invalid" in err


def test_explain_shows_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain prints the route, timeouts/retry/breaker values and the layer that set each."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    code = main(
        [
            "policy",
            "explain",
            "--policy",
            str(path),
            "--from",
            "orders",
            "POST",
            "http://payments/v1/refunds/1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "route        refunds  match: path_prefix=/v1/refunds, methods=[POST]" in out
    lines = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) >= 3
    }
    assert lines["timeouts.total"] == ["30s", "services.payments.routes[0]"]
    assert lines["retry.attempts"] == ["2", "services.payments"]
    assert lines["circuit_breaker.failure_threshold"] == ["5", "defaults"]
    assert "authz        allowed by services.payments.inbound.authz.rules[0]" in out


def test_explain_names_the_authz_rule_for_the_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --from, explain says whether the callee's inbound authz admits the caller, and by which rule."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    args = [
        "policy",
        "explain",
        "--policy",
        str(path),
        "--json",
        "--from",
        "billing",
        "GET",
        "http://payments/v1/charges/1",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["authz"] == {"allowed": False, "rule": "services.payments.inbound.authz.rules[0]"}


def test_explain_json_for_hosts_outside_the_mesh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host outside the policy is explained as called directly under defaults."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    assert (
        main(["policy", "explain", "--policy", str(path), "--json", "GET", "http://example.com/x"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["in_mesh"] is False
    assert {row["set_by"] for row in report["settings"]} == {"defaults"}


def test_explain_needs_a_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --policy or MESH_POLICY_FILE, explain says what to pass."""
    assert main(["policy", "explain", "GET", "http://a/"]) == 2
    assert "MESH_POLICY_FILE" in capsys.readouterr().err


def test_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    """schema prints the JSON Schema of the policy model."""
    assert main(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Policy"


def test_console_script_runs() -> None:
    """`python -m meshlib` is the same CLI."""
    done = subprocess.run(
        [sys.executable, "-m", "meshlib", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("meshlib ")
