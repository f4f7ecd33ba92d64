"""PolicyRepository: versions in files, atomic publish, hand edits, history, rollback, replicas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlib.clock import FakeClock
from meshlib.controlplane.files import create_exclusive, write_atomic
from meshlib.controlplane.storage import PolicyRepository, content_hash
from meshlib.errors import PolicyError
from meshlib.policy.limits import MAX_POLICY_BYTES
from tests.controlplane.conftest import BAD_POLICY, POLICY_V1, POLICY_V2


def test_existing_file_becomes_version_one(policy_dir: Path) -> None:
    """A policy file found at start is adopted as version 1, written to the history."""
    repo = PolicyRepository(policy_dir)
    current = repo.refresh()
    assert current is not None
    assert (current.version, current.hash, current.who) == (1, content_hash(POLICY_V1), "file")
    assert (policy_dir / "history" / "00000001.json").exists()


def test_publish_writes_file_and_history_with_who_when_comment(policy_dir: Path) -> None:
    """A publish becomes the next version: the policy file and a history entry with its author."""
    repo = PolicyRepository(policy_dir, clock=FakeClock(wall_start=1_800_000_000.0))
    repo.refresh()
    v2 = repo.publish(POLICY_V2, who="alice", comment="more retries")
    assert v2.version == 2
    assert (policy_dir / "policy.yaml").read_text() == POLICY_V2
    entry = json.loads((policy_dir / "history" / "00000002.json").read_text())
    assert entry["who"] == "alice"
    assert entry["comment"] == "more retries"
    assert entry["when"] == 1_800_000_000.0
    assert entry["text"] == POLICY_V2
    assert v2.data["services"]["payments"]["retry"] == {"attempts": 3}


def test_invalid_publish_raises_and_changes_nothing(policy_dir: Path) -> None:
    """An invalid document is refused with field-level issues; file and history are untouched."""
    repo = PolicyRepository(policy_dir)
    repo.refresh()
    with pytest.raises(PolicyError) as info:
        repo.publish(BAD_POLICY, who="alice")
    assert info.value.issues[0].field == "services.payments.retry.attempts"
    assert info.value.issues[0].line == 4
    assert (policy_dir / "policy.yaml").read_text() == POLICY_V1
    assert [v.version for v in repo.history()] == [1]
    assert repo.current is not None
    assert repo.current.version == 1


def test_hand_edit_publishes_and_bad_hand_edit_is_kept_out(policy_dir: Path) -> None:
    """Editing the file publishes a version; an invalid edit is reported and not served."""
    repo = PolicyRepository(policy_dir)
    repo.refresh()
    (policy_dir / "policy.yaml").write_text(POLICY_V2 + "\n")
    current = repo.refresh()
    assert current is not None
    assert current.version == 2
    assert current.comment == "edited on disk"
    (policy_dir / "policy.yaml").write_text(BAD_POLICY)
    current = repo.refresh()
    assert current is not None
    assert current.version == 2
    assert repo.file_error is not None
    assert repo.file_error.issues[0].field == "services.payments.retry.attempts"
    assert repo.refresh() is current  # the same bad text is not re-validated into a version


def test_oversized_hand_edit_is_refused_unread(policy_dir: Path) -> None:
    """A hand edit past the policy size limit is refused as too large; the version in force stays."""
    repo = PolicyRepository(policy_dir)
    repo.refresh()
    with (policy_dir / "policy.yaml").open("w") as file:
        file.write(POLICY_V2 + "#" * (MAX_POLICY_BYTES * 20) + "\n")
    current = repo.refresh()
    assert current is not None
    assert current.version == 1
    assert repo.file_error is not None
    assert f"more than the {MAX_POLICY_BYTES}-byte limit" in str(repo.file_error)
    assert repo.policy_file_text() is None


def test_rollback_is_a_new_version_with_old_content(policy_dir: Path) -> None:
    """Rolling back to version 1 publishes its content as version 3; history keeps everything."""
    repo = PolicyRepository(policy_dir)
    repo.refresh()
    repo.publish(POLICY_V2, who="alice")
    v3 = repo.rollback(1, who="bob")
    assert (v3.version, v3.hash, v3.who) == (3, content_hash(POLICY_V1), "bob")
    assert v3.comment == "rollback to version 1"
    assert (policy_dir / "policy.yaml").read_text() == POLICY_V1
    assert [v.version for v in repo.history()] == [3, 2, 1]
    with pytest.raises(KeyError):
        repo.rollback(9, who="bob")


def test_replicas_on_one_directory_see_each_other(policy_dir: Path) -> None:
    """Two repositories on the same directory: a publish on one is adopted by the other."""
    a = PolicyRepository(policy_dir)
    b = PolicyRepository(policy_dir)
    a.refresh()
    b.refresh()
    a.publish(POLICY_V2, who="alice")
    current = b.refresh()
    assert current is not None
    assert (current.version, current.who) == (2, "alice")
    v3 = b.publish(POLICY_V1, who="bob")
    assert v3.version == 3
    assert a.refresh() == v3


def test_restart_serves_history_even_if_the_file_is_broken(policy_dir: Path) -> None:
    """A new process serves the last good version from history while the file holds a bad edit."""
    PolicyRepository(policy_dir).refresh()
    (policy_dir / "policy.yaml").write_text("version: [unclosed\n")
    repo = PolicyRepository(policy_dir)
    current = repo.refresh()
    assert current is not None
    assert current.version == 1
    assert repo.file_error is not None


def test_single_file_mode_keeps_history_beside_it(tmp_path: Path) -> None:
    """Given a file path, history goes to .<name>.history next to it; JSON publishes stay JSON."""
    path = tmp_path / "mesh.json"
    repo = PolicyRepository(path)
    assert repo.refresh() is None
    version = repo.publish("version: 1\n", who="alice")
    assert json.loads(path.read_text()) == {"version": 1}
    assert version.format == "json"
    assert (tmp_path / ".mesh.json.history" / "00000001.json").exists()


def test_toml_file_refuses_other_formats(tmp_path: Path) -> None:
    """A TOML policy file cannot take a YAML publish; the error says what to do."""
    repo = PolicyRepository(tmp_path / "mesh.toml")
    with pytest.raises(PolicyError, match="publish TOML"):
        repo.publish("version: 1\n", fmt="yaml", who="alice")
    assert repo.publish("version = 1\n", fmt="toml", who="alice").version == 1


def test_atomic_write_replaces_and_exclusive_create_refuses(tmp_path: Path) -> None:
    """write_atomic leaves no temp files; create_exclusive never overwrites."""
    target = tmp_path / "a" / "f.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        create_exclusive(target, b"three")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_unreadable_history_entry_is_skipped(policy_dir: Path) -> None:
    """A corrupt newest history entry does not take the repository down: the one before serves."""
    PolicyRepository(policy_dir).refresh()
    (policy_dir / "history" / "00000002.json").write_text("{not json")
    repo = PolicyRepository(policy_dir)
    current = repo.refresh()
    assert current is not None
    assert current.version == 1
    assert [v.version for v in repo.history()] == [1]
