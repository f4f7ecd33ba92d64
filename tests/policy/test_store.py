"""PolicyStore and FileSource: atomic swaps, last good kept, and a watched file reloaded."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from meshlib import PolicyError, PolicyStore, load_policy
from meshlib.errors import SettingsError
from meshlib.policy.sources import (
    FileSource,
    SharedFile,
    close_shared_store,
    shared_store,
    watch_file,
)
from meshlib.settings import MeshSettings

V1 = "version: 1\nservices:\n  a:\n    endpoints: [http://127.0.0.1:8001]\n    retry: {attempts: 2}\n"
V2 = "version: 1\nservices:\n  a:\n    endpoints: [http://127.0.0.1:8001]\n    retry: {attempts: 3}\n"
BROKEN = "version: 1\nservices:\n  a:\n    endpoints: [http://127.0.0.1:8001]\n    retry: {attempts: 0}\n"


def test_store_swaps_and_tells_subscribers() -> None:
    """update() swaps the snapshot and calls subscribers with old and new."""
    store = PolicyStore()
    assert not store.loaded
    with pytest.raises(LookupError):
        _ = store.current
    seen: list[tuple[object, object]] = []
    store.subscribe(lambda old, new: seen.append((old, new.revision)))
    assert store.update_from_text(V1, source="t")
    first = store.current
    assert seen == [(None, first.revision)]
    assert not store.update_from_text(V1, source="t")  # same content, same revision
    assert store.update_from_text(V2, source="t")
    assert seen[-1] == (first, store.current.revision)


def test_bad_document_keeps_last_good_and_is_counted() -> None:
    """A rejected document raises, is counted, and the old snapshot stays."""
    store = PolicyStore()
    store.update_from_text(V1, source="t")
    before = store.current
    with pytest.raises(PolicyError):
        store.update_from_text(BROKEN, source="t")
    assert store.current is before
    assert store.reload_failures == 1
    assert store.last_error is not None
    assert store.last_error.field == "services.a.retry.attempts"


def test_failing_subscriber_does_not_block_others(caplog: pytest.LogCaptureFixture) -> None:
    """One subscriber raising is logged; the next still runs."""
    store = PolicyStore()
    calls: list[str] = []

    def bad(old: object, new: object) -> None:
        raise RuntimeError("boom")

    store.subscribe(bad)
    unsubscribe = store.subscribe(lambda old, new: calls.append("ok"))
    store.update_from_text(V1, source="t")
    assert calls == ["ok"]
    assert "subscriber" in caplog.text
    unsubscribe()
    store.update_from_text(V2, source="t")
    assert calls == ["ok"]


def test_readers_see_whole_snapshots_during_swaps() -> None:
    """Concurrent readers always see a consistent snapshot while writers swap."""
    store = PolicyStore(load_policy({"version": 1}))
    policies = [
        load_policy(
            {
                "version": 1,
                "services": {
                    "a": {"endpoints": ["http://127.0.0.1:8001"], "retry": {"attempts": n}}
                },
            }
        )
        for n in (1, 2, 3)
    ]
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            snap = store.current
            if snap.resolver.policy is not snap.policy:
                errors.append("torn snapshot")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(300):
        store.update(policies[i % 3], revision=str(i))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def _wait_for(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
    return time.monotonic() - start


def test_file_source_applies_edits_within_a_second(tmp_path: Path) -> None:
    """Editing the watched file applies the new policy within 1 s."""
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    store = PolicyStore()
    source = FileSource(path, poll_interval=0.05)
    source.start(store)
    try:
        assert store.current.policy.services["a"].retry is not None
        path.write_text(V2)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        _wait_for(lambda: store.current.policy.services["a"].retry.attempts == 3, timeout=1.0)  # type: ignore[union-attr]
    finally:
        source.close()


def test_file_source_keeps_last_good_on_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken edit is logged with its field and the old policy stays; a fix then applies."""
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    store = PolicyStore()
    source = FileSource(path, poll_interval=0.05)
    source.start(store)
    try:
        good = store.current
        path.write_text(BROKEN)
        _wait_for(lambda: store.reload_failures >= 1, timeout=1.0)
        assert store.current is good
        assert "services.a.retry.attempts" in caplog.text
        path.write_text(V2 + "# fixed\n")
        _wait_for(lambda: store.current is not good, timeout=1.0)
        path.unlink()
        time.sleep(0.2)  # a deleted file is not a new policy
        assert store.current.policy.services["a"].retry.attempts == 3  # type: ignore[union-attr]
    finally:
        source.close()


def test_file_source_refuses_bad_file_at_start(tmp_path: Path) -> None:
    """With no last good policy, a bad file at start is raised, not swallowed."""
    path = tmp_path / "mesh.yaml"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError):
        FileSource(path).start(PolicyStore())


def test_shared_store_from_settings(tmp_path: Path) -> None:
    """shared_store() builds one store from MESH_POLICY_FILE and reuses it."""
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    store = shared_store(MeshSettings(policy_file=path))
    assert shared_store() is store
    close_shared_store()


def test_shared_store_without_any_source_says_what_to_set() -> None:
    """No policy file and no control plane is a clear SettingsError."""
    with pytest.raises(SettingsError, match="MESH_POLICY_FILE"):
        shared_store(MeshSettings())


def test_store_for_each_kind_of_policy_argument(tmp_path: Path) -> None:
    """store_for takes a store as is, wraps a Policy, watches a path, and refuses anything else."""
    from meshlib.policy.sources import store_for
    from meshlib.telemetry import policy_metrics

    store = PolicyStore(load_policy({"version": 1}))
    assert store_for(store) == (store, None)
    wrapped, source = store_for(load_policy({"version": 1}))
    assert source is None
    assert wrapped.loaded
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    watched, source = store_for(path)
    assert isinstance(source, SharedFile)
    try:
        assert watched.current.source == str(path)
        assert watched in policy_metrics._observed_global  # the revision in force is reported
    finally:
        source.close()
    with pytest.raises(TypeError, match="policy must be"):
        store_for(42)  # type: ignore[arg-type]


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))


def test_a_client_and_a_middleware_share_one_watcher_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients and middleware built from one file (or its directory) read one store: a bad edit is logged once."""
    from starlette.applications import Starlette

    from meshlib import MeshClient, MeshMiddleware

    (tmp_path / "policy.yaml").write_text(V1)
    settings = MeshSettings(policy_poll_interval=0.05)
    client = MeshClient(tmp_path / "policy.yaml", settings=settings)
    middleware = MeshMiddleware(Starlette(), policy=str(tmp_path), service_name="a")
    store = client.mesh_transport.store
    share = client.mesh_transport._source
    assert isinstance(share, SharedFile)
    watcher = share.source._thread
    assert watcher is not None
    try:
        assert middleware.core.store is store
        caplog.clear()
        _edit(tmp_path / "policy.yaml", BROKEN)
        _wait_for(lambda: store.reload_failures >= 1, timeout=2.0)
        time.sleep(0.2)  # a second watcher, if there were one, would log within this
        rejected = [r for r in caplog.records if "services.a.retry.attempts" in r.getMessage()]
        assert len(rejected) == 1, [r.getMessage() for r in rejected]
        assert store.reload_failures == 1
        client.close()
        client.close()  # closing a share twice gives back one share only
        _edit(tmp_path / "policy.yaml", V2)  # the middleware's share keeps the watcher alive
        _wait_for(lambda: store.current.policy.services["a"].retry.attempts == 3, timeout=2.0)  # type: ignore[union-attr]
    finally:
        client.close()
        middleware.close()
    assert not watcher.is_alive()  # the last share closed the watcher
    _, again = watch_file(tmp_path / "policy.yaml")
    try:
        assert again.source is not share.source  # so the next share starts a new one
    finally:
        again.close()


def test_a_policy_directory_without_a_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    """A directory stands for its policy.yaml; without one, the error names the directory."""
    with pytest.raises(PolicyError, match=r"a policy directory holds policy\.yaml") as error:
        watch_file(tmp_path)
    assert error.value.source == str(tmp_path)
