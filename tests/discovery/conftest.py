"""Discovery fixtures: a control plane with the registry mounted, served on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from meshlib.controlplane.app import create_app
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.instances import InstanceRegistry, MemoryRegistryBackend, RegistryConfig
from tests.support.servers import RunningServer, free_port

PUBLISH = "alice=pub-s3cret"
READ = "reader=r3ad"
REGISTER = "bot=r3g1ster"

POLICY = """\
version: 1
trust_domain: example.org
services:
  payments:
    discovery: {registry: true}
  orders: {}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A policy directory holding POLICY."""
    directory = tmp_path / "mesh"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)
    return directory


def plane_app(policy: Path, registry: InstanceRegistry | None = None, **settings: Any) -> Starlette:
    """The control plane app on the embedded store, with this registry (a fresh one by default)."""
    settings.setdefault("publish_tokens", (PUBLISH,))
    settings.setdefault("read_tokens", (READ,))
    settings.setdefault("poll_interval", 0.1)
    registry = registry or InstanceRegistry(RegistryConfig(register_tokens=(REGISTER,)))
    return create_app(
        ControlPlaneSettings(policy=policy, **settings),
        registry_backend=MemoryRegistryBackend(registry),
    )


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass


@contextmanager
def serve(app: Any, *, lifespan: str = "on", **config: Any) -> Iterator[RunningServer]:
    """Serve an ASGI app under uvicorn on 127.0.0.1 in a thread (lifespan on) until the block ends."""
    port = free_port()
    server = _Uvicorn(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan=lifespan,
            timeout_graceful_shutdown=2,
            **config,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield RunningServer("127.0.0.1", port, "https" if config.get("ssl_certfile") else "http")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
