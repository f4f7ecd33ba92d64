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
    assert "authz        denied by services.payments.inbound.authz.rules[0]" in out


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
    rule = "services.payments.inbound.authz.rules[0]"
    assert report["authz"]["allowed"] is False
    assert report["authz"]["rule"] == rule
    assert report["authz"]["with_mutual_tls"] == {"allowed": False, "rule": rule}


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


MUTUAL_YAML = """\
version: 1
trust_domain: example.org
defaults:
  tls: {mode: mutual, ca: ca.pem, cert: orders.pem, key: orders.key}
services:
  payments:
    endpoints: ["https://127.0.0.1:8443"]
    inbound:
      authz:
        default: deny
        rules: [{path_prefix: /v1/, allow: [spiffe://example.org/orders]}]
"""


def _explain(*args: str) -> list[str]:
    return ["policy", "explain", *args]


def test_validate_and_explain_take_a_policy_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory holding policy.yaml is a policy path, as for `controlplane serve`."""
    (tmp_path / "policy.yaml").write_text(GOOD_YAML)
    assert main(["policy", "validate", str(tmp_path)]) == 0
    assert f"{tmp_path / 'policy.yaml'}: ok (2 services)" in capsys.readouterr().out
    assert main(_explain("--policy", str(tmp_path), "GET", "http://payments/v1/x")) == 0
    assert "destination  payments (a service in the policy)" in capsys.readouterr().out


def test_validate_names_a_directory_without_a_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory without policy.yaml (.yml, .json, .toml) is an error that names it."""
    assert main(["policy", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: a policy directory holds policy.yaml" in err
    assert "1 of 1 files invalid" in err


def test_explain_authz_without_mutual_tls_judges_an_anonymous_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With tls.mode disabled the callee sees no certificate: explain says so, and what mTLS would change."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    assert (
        main(_explain("--policy", str(path), "--from", "orders", "GET", "http://payments/v1/a"))
        == 0
    )
    out = capsys.readouterr().out
    assert "with mTLS on" not in out
    assert "identity     not checked (tls.mode disabled: no certificate to prove one)" in out
    assert (
        "authz        denied by services.payments.inbound.authz.rules[0] (tls.mode disabled: no "
        "client certificate, so payments sees an anonymous caller; with tls.mode mutual, orders "
        "would be allowed by services.payments.inbound.authz.rules[0])"
    ) in out


def test_explain_authz_under_mutual_tls_judges_the_proven_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under tls.mode mutual the caller's certificate proves its identity, and the rule admits it."""
    path = tmp_path / "mesh.yaml"
    path.write_text(MUTUAL_YAML)
    args = _explain("--policy", str(path), "--from", "orders", "GET", "https://payments/v1/a")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "authz        allowed by services.payments.inbound.authz.rules[0] (tls.mode mutual: "
        "orders's certificate proves its identity)"
    ) in out
    assert (
        "identity     spiffe://example.org/payments (pinned: the certificate must carry it)" in out
    )
    assert main([*args[:-2], "--json", "GET", "https://payments/v1/a"]) == 0
    authz = json.loads(capsys.readouterr().out)["authz"]
    assert authz["identity_proven"] is True
    assert "with_mutual_tls" not in authz


def test_explain_under_tls_checks_the_host_name_unless_an_identity_is_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tls.mode tls pins no SPIFFE ID by default (the peer may be outside the mesh): explain says so."""
    path = tmp_path / "mesh.yaml"
    path.write_text(MUTUAL_YAML.replace("mode: mutual", "mode: tls"))
    assert main(_explain("--policy", str(path), "GET", "https://payments/v1/a")) == 0
    assert "identity     the host name, as any HTTPS client" in capsys.readouterr().out
    pinned = MUTUAL_YAML.replace("mode: mutual", "mode: tls").replace(
        "  payments:\n", "  payments:\n    identity: spiffe://example.org/pay\n"
    )
    path.write_text(pinned)
    assert main(_explain("--policy", str(path), "GET", "https://payments/v1/a")) == 0
    assert "identity     spiffe://example.org/pay (pinned" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://payments//v1/a", "has an empty segment ('//')"),
        ("https://payments/v1%2f..%2fadmin", "has a '.' or '..' segment"),
        ("https://payments/v1/a%2fb", "has an encoded '/' or '\\' (%2F, %5C)"),
    ],
)
def test_explain_refuses_a_path_the_callee_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    """A path not in normal form is refused by the callee before any rule; explain says so."""
    path = tmp_path / "mesh.yaml"
    path.write_text(MUTUAL_YAML)
    assert main(_explain("--policy", str(path), "--from", "orders", "GET", url)) == 0
    out = capsys.readouterr().out
    assert f"authz        denied by the path check (400: the path {reason}), before any rule" in out


def test_explain_aligns_every_column_whatever_the_value_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Long list values (retry_on, methods) do not push their row's `set by` out of its column."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    assert main(_explain("--policy", str(path), "GET", "http://payments/v1/a")) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.lstrip().startswith("setting "))
    column = out[header].index("set by")
    rows = out[header + 1 :]
    assert any("[connect-failure, reset, 502, 503, 504]" in row for row in rows)
    for row in rows:
        assert row[column - 2 : column] == "  ", row
        assert row[column] != " ", row


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        (
            "POST",
            [],
            "retry        POST: up to 2 tries on connect-failure only (a try that never reached "
            "the server): POST is not in retry.methods, so reset, 502, 503, 504 are not retried; "
            "send an Idempotency-Key header or set retry.idempotency_key: true to retry them",
        ),
        (
            "PUT",
            [],
            "retry        PUT: up to 2 tries on connect-failure, reset, 502, 503, 504 "
            "(PUT is in retry.methods)",
        ),
        (
            "POST",
            ["-H", "Idempotency-Key: order-7"],
            "retry        POST: up to 2 tries on connect-failure, reset, 502, 503, 504 "
            "(POST carries an Idempotency-Key header)",
        ),
    ],
)
def test_explain_shows_the_retry_the_method_gets(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    extra: list[str],
    expected: str,
) -> None:
    """explain says how a call of this method is retried, and why POST is not after a 503."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD_YAML)
    assert main(_explain("--policy", str(path), *extra, method, "http://payments/v1/charges")) == 0
    assert expected in capsys.readouterr().out


def test_explain_retry_with_idempotency_keys_added_by_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retry.idempotency_key makes a POST retryable like an idempotent method, and explain says why."""
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "version: 1\nservices:\n  payments:\n    endpoints: ['http://127.0.0.1:1']\n"
        "    retry: {attempts: 3, idempotency_key: true, retry_on: [503]}\n"
    )
    assert main(_explain("--policy", str(path), "--json", "POST", "http://payments/v1/c")) == 0
    retry = json.loads(capsys.readouterr().out)["retry"]
    assert retry["replays_after_reaching_server"] is True
    assert retry["retried_on"] == ["connect-failure", "503"]
    assert retry["why"] == "retry.idempotency_key adds an Idempotency-Key header"
