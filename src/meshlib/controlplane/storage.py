"""The policy repository: one policy file on disk plus a history directory of numbered versions.

Everything the control plane knows about policy lives in files, so several
replicas can serve the same directory. `path` is either a policy file or a
directory holding `policy.yaml` (or `.yml`/`.json`/`.toml`):

```text
mesh/                       mesh.yaml            (a file works too:
  policy.yaml               .mesh.yaml.history/   history sits next to it)
  history/00000001.json       00000001.json
  history/00000002.json
```

A history entry is immutable JSON: version, content hash, who, when, comment
and the document text. The highest number is the version in force. Publishing
validates with meshlib's own model, writes the policy file atomically, then
claims the next number with an exclusive create; an flock orders publishers
across processes on one host, and a compare-and-set publish (`expected=`)
checks its precondition under that lock, so of two publishers holding the
same version exactly one wins. Editing the policy file by hand publishes too
(`refresh`):

```python
repo = PolicyRepository("mesh/")
repo.refresh()                                   # adopt history and hand edits
v = repo.publish(text, who="alice", comment="raise retries")   # PolicyError if invalid
repo.publish(text, who="bob", expected=v.version)  # VersionConflictError if v is not current
repo.rollback(3, who="alice")                    # a new version with version 3's content
```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.files import create_exclusive, write_atomic
from meshlib.errors import PolicyError, VersionConflictError
from meshlib.policy.files import POLICY_FILE_NAMES
from meshlib.policy.limits import read_policy_file
from meshlib.policy.parse import Format, detect_format, parse_document, validate_policy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: replicas on one directory are not supported there
    fcntl = None  # type: ignore[assignment]

__all__ = ["PolicyRepository", "PolicyVersion", "content_hash"]

logger = logging.getLogger("meshlib.controlplane")

_SUFFIXES = {".yaml", ".yml", ".json", ".toml"}
_CACHE_SIZE = 32


def content_hash(text: str) -> str:
    """`sha256:<hex>` of a document's text: the content half of a version."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One published version: its number, content hash, document and who published it when."""

    version: int
    hash: str
    text: str
    format: Format
    who: str
    when: float
    comment: str
    data: Any = field(default=None, compare=False, repr=False)

    @property
    def etag(self) -> str:
        """A strong ETag naming both the number and the content."""
        return f'"{self.version}-{self.hash.removeprefix("sha256:")[:16]}"'

    def summary(self) -> dict[str, Any]:
        """The version without its document (history listings)."""
        return {
            "version": self.version,
            "hash": self.hash,
            "who": self.who,
            "when": self.when,
            "comment": self.comment,
        }

    def to_json(self) -> dict[str, Any]:
        """What `GET /v1/policy` answers: the summary, the parsed document, and the ETag."""
        return {**self.summary(), "etag": self.etag, "document": self.data}

    def entry(self) -> dict[str, Any]:
        """The history file's content."""
        return {**self.summary(), "format": self.format, "text": self.text}


class PolicyRepository:
    """Versions of one policy, kept in files; safe to share between processes on one directory."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        path = Path(path)
        if path.is_dir() or (not path.exists() and path.suffix.lower() not in _SUFFIXES):
            path.mkdir(parents=True, exist_ok=True)
            existing = [path / name for name in POLICY_FILE_NAMES if (path / name).exists()]
            self.policy_file = existing[0] if existing else path / POLICY_FILE_NAMES[0]
            self.history_dir = path / "history"
        else:
            self.policy_file = path
            self.history_dir = path.parent / f".{path.name}.history"
        self.history_dir.mkdir(parents=True, exist_ok=True)
        self.format: Format = detect_format(self.policy_file.name)
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, PolicyVersion] = OrderedDict()
        self._current: PolicyVersion | None = None
        self._file_seen: tuple[int, int, int] | None = None
        self._bad_file_hash: str | None = None
        self.file_error: PolicyError | None = None
        """Why the policy file on disk is not in force (a bad hand edit), or None."""

    # ------------------------------------------------------------------ reading

    @property
    def current(self) -> PolicyVersion | None:
        """The version in force as of the last `refresh`/`publish`, or None before any."""
        return self._current

    def _versions(self) -> list[int]:
        numbers = []
        with os.scandir(self.history_dir) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.partition(".")
                if dot and ext == "json" and stem.isdigit():
                    numbers.append(int(stem))
        return sorted(numbers)

    def _entry_path(self, version: int) -> Path:
        return self.history_dir / f"{version:08d}.json"

    def get(self, version: int) -> PolicyVersion:
        """Version `version` from the history; KeyError if there is no such version."""
        with self._lock:
            cached = self._cache.get(version)
            if cached is not None:
                self._cache.move_to_end(version)
                return cached
        try:
            raw = json.loads(self._entry_path(version).read_text(encoding="utf-8"))
            text = raw["text"]
            fmt = raw.get("format") or detect_format("", text)
            data, _ = parse_document(text, source=f"history version {version}", fmt=fmt)
            loaded = PolicyVersion(
                version=int(raw["version"]),
                hash=str(raw["hash"]),
                text=text,
                format=fmt,
                who=str(raw.get("who", "")),
                when=float(raw.get("when", 0.0)),
                comment=str(raw.get("comment", "")),
                data=data,
            )
        except FileNotFoundError:
            raise KeyError(version) from None
        except (ValueError, KeyError, TypeError, PolicyError) as exc:
            raise KeyError(f"history entry {version} is unreadable: {exc}") from None
        with self._lock:
            self._cache[version] = loaded
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return loaded

    def history(self, limit: int = 50) -> list[PolicyVersion]:
        """The newest `limit` versions, newest first (unreadable entries are skipped)."""
        out: list[PolicyVersion] = []
        for number in reversed(self._versions()):
            if len(out) >= limit:
                break
            with contextlib.suppress(KeyError):
                out.append(self.get(number))
        return out

    # ------------------------------------------------------------------ syncing

    @contextlib.contextmanager
    def _publishing(self) -> Iterator[None]:
        """Hold the cross-process publish lock (flock on the history directory's lock file)."""
        with open(self.history_dir / ".lock", "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _adopt_latest(self) -> None:
        versions = self._versions()
        for number in reversed(versions):
            if self._current is not None and number <= self._current.version:
                return
            try:
                self._current = self.get(number)
                return
            except KeyError as exc:
                logger.error("skipping history entry %s: %s", number, exc)

    def _file_stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.policy_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> PolicyVersion | None:
        """Adopt versions published by other replicas and hand edits of the policy file.

        Returns the version in force. A hand edit that does not validate is
        logged, kept in `file_error`, and not published.
        """
        self._adopt_latest()
        stat = self._file_stat()
        if stat is None or stat == self._file_seen:
            return self._current
        with self._publishing():
            self._adopt_latest()
            try:
                text = read_policy_file(self.policy_file)
            except PolicyError as exc:
                self._file_seen = stat
                self.file_error = exc
                logger.error("the policy file is unusable; version in force unchanged:\n%s", exc)
                return self._current
            self._file_seen = stat
            digest = content_hash(text)
            if self._current is not None and digest == self._current.hash:
                self.file_error = None
                return self._current
            if digest == self._bad_file_hash:
                return self._current
            try:
                comment = (
                    "edited on disk" if self._current else f"loaded from {self.policy_file.name}"
                )
                self._publish_locked(text, self.format, who="file", comment=comment)
            except PolicyError as exc:
                self._bad_file_hash = digest
                self.file_error = exc
                logger.error("the policy file is invalid; version in force unchanged:\n%s", exc)
            else:
                self.file_error = None
        return self._current

    # ------------------------------------------------------------------ writing

    def _convert(self, text: str, fmt: Format, data: Any) -> str:
        """The text to store in the policy file's own format (JSON is valid YAML, TOML is not)."""
        if fmt == self.format or (self.format == "yaml" and fmt == "json"):
            return text
        if self.format in ("json", "yaml"):
            return json.dumps(data, indent=2, sort_keys=False) + "\n"
        raise PolicyError.single(
            f"the policy file {self.policy_file.name} is TOML: publish TOML "
            "(Content-Type: application/toml), or serve a YAML or JSON file",
            source="publish",
        )

    def _check_expected(self, expected: int | None) -> None:
        """Compare-and-set: raise unless `expected` is the version in force (0: none yet)."""
        current = self._current.version if self._current else 0
        if expected is not None and expected != current:
            raise VersionConflictError(
                f"the policy changed since you read it: version {expected} was expected, "
                f"version {current or 'none'} is current",
                current=current or None,
            )

    def _publish_locked(
        self, text: str, fmt: Format, *, who: str, comment: str, expected: int | None = None
    ) -> PolicyVersion:
        source = f"publish by {who}"
        data, locate = parse_document(text, source=source, fmt=fmt)
        validate_policy(data, source=source, locate=locate)
        stored = self._convert(text, fmt, data)
        if stored != text:
            data, _ = parse_document(stored, source=source, fmt=self.format)
        self._adopt_latest()
        self._check_expected(expected)
        digest = content_hash(stored)
        if self.policy_file_text() != stored:
            write_atomic(self.policy_file, stored.encode("utf-8"))
        self._file_seen = self._file_stat()
        number = self._current.version + 1 if self._current else 1
        while True:
            version = PolicyVersion(
                number, digest, stored, self.format, who, self._clock.wall(), comment, data
            )
            payload = json.dumps(version.entry(), indent=1).encode("utf-8")
            try:
                create_exclusive(self._entry_path(number), payload)
                break
            except FileExistsError:  # another process without a working flock took it
                if expected is not None:
                    self._adopt_latest()
                    self._check_expected(expected)
                number += 1
        with self._lock:
            self._cache[number] = version
        self._current = version
        logger.info("policy version %s published by %s (%s)", number, who, comment or "-")
        return version

    def policy_file_text(self) -> str | None:
        """The policy file's current text, or None when it cannot be read."""
        try:
            return read_policy_file(self.policy_file)
        except PolicyError:
            return None

    def publish(
        self,
        text: str,
        *,
        fmt: Format | None = None,
        who: str,
        comment: str = "",
        expected: int | None = None,
    ) -> PolicyVersion:
        """Validate and publish `text` as the next version.

        Raises:
            PolicyError: the document is invalid; every problem is listed.
            VersionConflictError: `expected` (0: no version yet) is not the version in
                force, checked under the publish lock.
        """
        fmt = fmt or detect_format("", text)
        with self._publishing():
            return self._publish_locked(text, fmt, who=who, comment=comment, expected=expected)

    def rollback(self, version: int, *, who: str, expected: int | None = None) -> PolicyVersion:
        """Publish version `version`'s content again as a new version; KeyError if unknown."""
        old = self.get(version)
        return self.publish(
            old.text,
            fmt=old.format,
            who=who,
            comment=f"rollback to version {version}",
            expected=expected,
        )
