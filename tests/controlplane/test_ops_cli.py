"""`meshlib controlplane publish|history|diff|rollback|status` against a real replica."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from meshlib.cli import main
from tests.controlplane.conftest import BAD_POLICY, POLICY_V2, serve_plane
from tests.support.servers import free_port


def test_publish_history_diff_rollback_status(
    policy_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The everyday operations work end to end with the token from MESH_CONTROL_PLANE_TOKEN."""
    monkeypatch.setenv("MESH_CONTROL_PLANE_TOKEN", "pub-s3cret")
    v2 = tmp_path / "v2.yaml"
    v2.write_text(POLICY_V2)
    with serve_plane(policy_dir) as server:
        dead = f"http://127.0.0.1:{free_port()}"
        url = ["--url", f"{dead},{server.url}"]  # the first replica is down: fail over
        assert main(["controlplane", "publish", str(v2), "--comment", "three", *url]) == 0
        assert "published version 2" in capsys.readouterr().out

        assert main(["controlplane", "history", *url]) == 0
        history = capsys.readouterr().out
        assert "*        2" in history
        assert "three" in history

        assert main(["controlplane", "diff", "1", "2", *url]) == 0
        assert "+    retry: {attempts: 3}" in capsys.readouterr().out

        assert main(["controlplane", "rollback", "1", "--if-match", "2", *url]) == 0
        assert "as version 3" in capsys.readouterr().out
        stale = main(["controlplane", "publish", str(v2), "--if-match", "2", *url])
        assert stale == 1
        assert "412" in capsys.readouterr().err

        httpx.post(
            server.url + "/v1/reports",
            json={"service": "orders", "instance": "o-1", "policy_revision": "2"},
        )
        assert main(["controlplane", "status", "--url", server.url]) == 0
        status = capsys.readouterr().out
        assert "version 3" in status
        assert "orders" in status
        assert "BEHIND" in status


def test_refused_publish_prints_the_issues(
    policy_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An invalid document exits 1 and prints each issue's line and field."""
    monkeypatch.setenv("MESH_CONTROL_PLANE_TOKEN", "pub-s3cret")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    with serve_plane(policy_dir) as server:
        assert main(["controlplane", "publish", str(bad), "--url", server.url]) == 1
    err = capsys.readouterr().err
    assert "422" in err
    assert "line 4: services.payments.retry.attempts" in err


def test_no_control_plane_configured_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --url or MESH_CONTROL_PLANE_URL the command says what to set."""
    assert main(["controlplane", "history"]) == 2
    assert "MESH_CONTROL_PLANE_URL" in capsys.readouterr().err


def test_publish_of_an_oversized_file_fails_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file past the policy size limit is refused locally, naming the file and the limit."""
    from meshlib.policy.limits import MAX_POLICY_BYTES

    huge = tmp_path / "huge.yaml"
    huge.write_text("version: 1\n" + "#" * (MAX_POLICY_BYTES + 1))
    dead = f"http://127.0.0.1:{free_port()}"  # never asked: the file is refused first
    assert main(["controlplane", "publish", str(huge), "--url", dead]) == 1
    err = capsys.readouterr().err
    assert str(huge) in err
    assert f"{MAX_POLICY_BYTES}-byte limit" in err
