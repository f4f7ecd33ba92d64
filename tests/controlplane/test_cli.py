"""`meshlib controlplane serve`: the command exists and refuses bad settings with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib.cli import build_parser, main


def test_serve_is_registered() -> None:
    """The controlplane serve command parses its options."""
    args = build_parser().parse_args(
        [
            "controlplane",
            "serve",
            "--policy",
            "mesh/",
            "--port",
            "8701",
            "--publish-token",
            "a=b",
            "--publish-token",
            "c",
            "--read-token",
            "r",
        ]
    )
    assert args.publish_tokens == ["a=b", "c"]
    assert args.read_tokens == ["r"]
    assert args.port == 8701


def test_bad_port_exits_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An out-of-range port is refused before anything starts, naming the setting."""
    assert main(["controlplane", "serve", "--policy", str(tmp_path), "--port", "70000"]) == 2
    assert "controlplane setting port" in capsys.readouterr().err


def test_env_tokens_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_CONTROLPLANE_PUBLISH_TOKENS is split on commas and kept secret in reprs."""
    from meshlib.controlplane.config import ControlPlaneSettings

    monkeypatch.setenv("MESH_CONTROLPLANE_PUBLISH_TOKENS", "alice=s3cret, ci=0ther")
    settings = ControlPlaneSettings()
    assert [t.get_secret_value() for t in settings.publish_tokens] == ["alice=s3cret", "ci=0ther"]
    assert "s3cret" not in repr(settings)


def test_sigterm_answers_parked_long_polls_cleanly(policy_dir: Path) -> None:
    """On SIGTERM parked 60 s long-polls are answered 304 at once (no 500, no traceback) and it exits."""
    import signal
    import threading
    import time

    import httpx

    from tests.controlplane.conftest import plane_process
    from tests.support.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    answers: list[int] = []
    with plane_process(policy_dir, port) as proc:
        etag = httpx.get(url + "/v1/policy").headers["etag"]

        def park() -> None:
            with httpx.Client(base_url=url, timeout=90) as client:
                response = client.get(
                    "/v1/policy", params={"wait": "60s"}, headers={"If-None-Match": etag}
                )
                answers.append(response.status_code)

        watchers = [threading.Thread(target=park) for _ in range(5)]
        for watcher in watchers:
            watcher.start()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/readyz").json()["watchers"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        stopped = time.monotonic() - started
        for watcher in watchers:
            watcher.join(timeout=10)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
    assert answers == [304] * 5
    assert stopped < 3.0 + 2.0  # the documented grace (MESH_CONTROLPLANE_SHUTDOWN_GRACE), plus exit
    assert "Exception in ASGI application" not in stderr
    assert "CancelledError" not in stderr


def test_register_token_flag_is_used(policy_dir: Path) -> None:
    """--register-token reaches the settings (it was accepted and ignored before)."""
    from meshlib.cli.controlplane import _overrides

    args = build_parser().parse_args(
        ["controlplane", "serve", "--policy", str(policy_dir), "--register-token", "bot=r3g"]
    )
    assert _overrides(args)["register_tokens"] == ["bot=r3g"]


def test_missing_policy_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt --policy path is refused with exit 2 and the command that creates it."""
    missing = tmp_path / "polcy"
    assert main(["controlplane", "serve", "--policy", str(missing), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert f"mkdir -p {missing}" in err
    assert not missing.exists()


def test_store_url_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store that is not etcd:// is refused naming the setting."""
    assert main(["controlplane", "serve", "--store", "redis://x:1", "--port", "1"]) == 2
    assert "controlplane setting store" in capsys.readouterr().err
