"""Crash-safe file writes shared by the control plane's storage and the client's disk cache.

A reader never sees a half-written file: data goes to a temporary file in the
same directory, is fsynced, and then takes the final name in one atomic step:

```python
write_atomic(Path("policy.yaml"), b"version: 1")          # replaces
create_exclusive(Path("history/00000007.json"), b"{...}")   # FileExistsError if taken
```
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["create_exclusive", "fsync_dir", "write_atomic"]


def fsync_dir(directory: Path) -> None:
    """Make a rename or link inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, `os.replace`, fsync of the directory.

    ```pycon
    >>> write_atomic(Path("cache/policy.json"), b"{}")  # doctest: +SKIP
    ```
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes) -> None:
    """Create `path` with `data` atomically, or raise FileExistsError if it exists.

    `os.link` fails when the name is taken, so two replicas racing for the
    same history number cannot overwrite each other.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)
