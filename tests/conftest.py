"""Suite-wide fixtures: a clean environment and no global state carried between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from meshlib.policy.sources import close_shared_store

_STRIP = ("MESH_", "OTEL_")
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture(autouse=True)
def clean_environ(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Strip MESH_*, OTEL_* and proxy variables, and run where no stray .env is read."""
    for name in list(os.environ):
        if name.startswith(_STRIP) or name.lower() in _PROXIES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    close_shared_store()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `readme` tests (minutes of installs) unless selected: `nox -s readme`, or `-m readme`."""
    if "readme" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="runs the README's commands for real: `nox -s readme` (CI)")
    for item in items:
        if "readme" in item.keywords:
            item.add_marker(skip)
