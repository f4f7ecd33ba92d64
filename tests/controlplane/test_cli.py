"""`meshlib controlplane serve`: the command exists and refuses bad settings with a clear message."""

from __future__ import annotations

import contextlib
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


def test_sigterm_does_not_wait_for_parked_long_polls(policy_dir: Path) -> None:
    """A served control plane stops on SIGTERM although a 60 s long-poll is parked on it."""
    import signal
    import threading
    import time

    import httpx

    from tests.controlplane.conftest import plane_process
    from tests.support.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with plane_process(policy_dir, port) as proc, httpx.Client(base_url=url, timeout=90) as client:
        etag = client.get("/v1/policy").headers["etag"]

        def park() -> None:
            with contextlib.suppress(httpx.HTTPError):
                client.get("/v1/policy", params={"wait": "60s"}, headers={"If-None-Match": etag})

        watcher = threading.Thread(target=park)
        watcher.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)  # 60 s without the graceful-shutdown timeout
        watcher.join(timeout=10)
        assert not watcher.is_alive()
