"""Where policy documents come from: a watched local file, or the control plane.

A source only fetches documents and hands them to a [`PolicyStore`][meshlib.policy.sources.PolicyStore];
validation, last-good bookkeeping and swapping are the store's. Like
pydantic-settings' sources, precedence is explicit: the control plane when
`MESH_CONTROL_PLANE_URL` is set (with the policy file as bootstrap), else
the policy file:

```python
store = PolicyStore()
source = FileSource("mesh.yaml")
source.start(store)      # loads now (raises PolicyError if the file is bad), then watches
...
source.close()
```
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol, runtime_checkable

from meshlib.errors import PolicyError, SettingsError
from meshlib.policy.files import policy_file
from meshlib.policy.limits import read_policy_file
from meshlib.policy.model import Policy
from meshlib.policy.store import PolicyStore
from meshlib.settings import MeshSettings

__all__ = [
    "FileSource",
    "PolicyArg",
    "PolicySource",
    "SharedFile",
    "close_shared_store",
    "shared_store",
    "store_for",
    "watch_file",
]

logger = logging.getLogger("meshlib.policy")

PolicyArg = Policy | PolicyStore | str | os.PathLike[str] | None
"""What clients and middleware are built from: a Policy, a store, a policy file, or None (settings)."""


@runtime_checkable
class PolicySource(Protocol):
    """Something that feeds policy documents into a store."""

    name: str

    def start(self, store: PolicyStore) -> None:
        """Load what is available now, then keep the store up to date in the background."""

    def close(self) -> None:
        """Stop watching; idempotent."""


class FileSource:
    """A local policy file (or directory), polled for changes (mtime, size, inode) every `poll_interval` seconds.

    Polling keeps this dependency-free and works on every filesystem, bind
    mounts and Kubernetes ConfigMap symlink swaps included. A bad edit is
    logged with its precise error, counted in `store.reload_failures`, and
    the last good policy stays in force.
    """

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.25) -> None:
        self.path = policy_file(path)
        self.name = str(self.path)
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int, int] | None = None
        self.errors = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load_into(self, store: PolicyStore) -> bool:
        """Read the file now and apply it; raises PolicyError when it is unreadable or invalid."""
        stat = self._stat()
        try:
            text = read_policy_file(self.path, source=self.name)
        except PolicyError as error:
            store.reject(error)
            raise
        self._seen = stat
        return store.update_from_text(text, source=self.name)

    def start(self, store: PolicyStore) -> None:
        """Load the file (errors propagate: there is no last good policy yet), then watch it."""
        self.load_into(store)
        self._thread = threading.Thread(
            target=self._watch,
            args=(store,),
            name=f"meshlib-policy-file:{self.path.name}",
            daemon=True,
        )
        self._thread.start()

    def _watch(self, store: PolicyStore) -> None:
        while not self._stop.wait(self.poll_interval):
            stat = self._stat()
            if stat is None or stat == self._seen:
                continue
            try:
                self.load_into(store)
            except PolicyError:
                self.errors += 1  # the store logged and counted it; the old policy stays
            except Exception:  # never let the watcher die
                self.errors += 1
                logger.exception("policy file watcher failed on %s", self.name)

    def close(self) -> None:
        """Stop the watcher thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None


class SharedFile:
    """One holder's share of the process-wide watcher of a policy file (see `watch_file`).

    Closing it is idempotent; closing the last share of a file stops its watcher.
    """

    def __init__(self, key: str, source: FileSource) -> None:
        self.key = key
        self.source = source
        self.name = source.name
        self._closed = False

    def start(self, store: PolicyStore) -> None:
        """Nothing to do: the watcher was started when the first share was taken."""

    def close(self) -> None:
        """Give this share back; the watcher stops when no share is left."""
        if self._closed:
            return
        self._closed = True
        with _files_lock:
            store, source, holders = _files[self.key]
            if holders > 1:
                _files[self.key] = (store, source, holders - 1)
                return
            del _files[self.key]
        source.close()


_files_lock = threading.Lock()
_files: dict[str, tuple[PolicyStore, FileSource, int]] = {}


def watch_file(
    path: str | os.PathLike[str], *, poll_interval: float = 0.25
) -> tuple[PolicyStore, SharedFile]:
    """The store fed by the one watcher of `path` in this process, and a share of it to close.

    Every client and middleware of a process built from the same policy file
    (or directory) reads one store fed by one [FileSource][meshlib.policy.sources.FileSource],
    so the file is read once per change and a bad edit is logged once. The
    first caller's `poll_interval` is the one used.

    Raises:
        PolicyError: the file is unreadable or invalid (nothing is shared then).
    """
    file = policy_file(path)
    key = os.path.abspath(file)
    with _files_lock:
        if key in _files:
            store, source, holders = _files[key]
            _files[key] = (store, source, holders + 1)
            return store, SharedFile(key, source)
        store = PolicyStore()
        source = FileSource(file, poll_interval=poll_interval)
        source.start(store)
        _files[key] = (store, source, 1)
        return store, SharedFile(key, source)


_shared_lock = threading.Lock()
_shared: tuple[PolicyStore, list[PolicySource], str | None] | None = None
"""The shared store, its sources, and the service name it reports to the control plane as."""
_warned_names: set[str] = set()


def shared_store(settings: MeshSettings | None = None) -> PolicyStore:
    """The process-wide store fed by the sources `MeshSettings` selects, started on first use.

    Every MeshClient and MeshMiddleware built without an explicit policy
    shares it, so a process watches its policy once. With a control plane,
    the process reports its state (and shows on the dashboard) under the
    first `service_name` it was built with.

    Raises:
        SettingsError: neither MESH_POLICY_FILE nor MESH_CONTROL_PLANE_URL is set.
        PolicyError: the policy file is invalid and there is no cached policy.
    """
    global _shared
    settings = settings or MeshSettings()
    with _shared_lock:
        if _shared is not None:
            store, _, reporting_as = _shared
            _warn_if_unreported(settings, reporting_as)
            return store
        if settings.control_plane_url:
            from meshlib.controlplane.client import ControlPlaneSource

            store = PolicyStore()
            source: PolicySource = ControlPlaneSource.from_settings(settings)
            source.start(store)
        elif settings.policy_file is not None:
            store, source = watch_file(
                settings.policy_file, poll_interval=settings.policy_poll_interval
            )
        else:
            raise SettingsError(
                "no policy: set MESH_POLICY_FILE to a policy file, or MESH_CONTROL_PLANE_URL to "
                "the control plane, or pass a policy to the client"
            )
        reporting_as = settings.service_name if settings.control_plane_url else None
        _shared = (store, [source], reporting_as)
        return store


def _warn_if_unreported(settings: MeshSettings, reporting_as: str | None) -> None:
    """Warn once per name when a service name given later will not reach the dashboard."""
    name = settings.service_name
    if not settings.control_plane_url or not name or name == reporting_as:
        return
    if name in _warned_names:
        return
    _warned_names.add(name)
    already = f"as {reporting_as!r}" if reporting_as else "without a service name"
    logger.warning(
        "service_name=%r will not appear on the control plane's dashboard: this process already "
        "reports %s (one name per process); build the client or middleware that names the "
        "service first, or set MESH_SERVICE_NAME",
        name,
        already,
    )


def close_shared_store() -> None:
    """Stop the shared store's sources and forget it (tests, shutdown)."""
    global _shared
    with _shared_lock:
        shared, _shared = _shared, None
        _warned_names.clear()
    if shared is not None:
        for source in shared[1]:
            source.close()


def store_for(
    policy: PolicyArg, settings: MeshSettings | None = None, *, service_name: str | None = None
) -> tuple[PolicyStore, PolicySource | None]:
    """The store a client or middleware reads, and the source it started (to close with it).

    A `PolicyStore` is used as is; a `Policy` gets a store of its own; a
    path (a file or a policy directory) gets the store its process-wide
    watcher feeds (`watch_file`); `None` means the
    process-wide `shared_store` from `MeshSettings`. The revision and
    reload failures of the stores built here from a file or settings are
    reported as metrics (once per store); a store or Policy passed in is the
    caller's to observe (`meshlib.telemetry.policy_metrics.observe_policy`).
    `service_name` (given in code) overrides the settings' `MESH_SERVICE_NAME`,
    so a process that follows the control plane reports under that name.
    """
    source: PolicySource | None = None
    if isinstance(policy, PolicyStore):
        return policy, None
    if isinstance(policy, Policy):
        return PolicyStore(policy), None
    if policy is None:
        settings = settings or MeshSettings()
        if service_name and service_name != settings.service_name:
            settings = settings.model_copy(update={"service_name": service_name})
        store = shared_store(settings)
    elif isinstance(policy, str | os.PathLike):
        interval = (settings or MeshSettings()).policy_poll_interval
        store, source = watch_file(policy, poll_interval=interval)
    else:
        raise TypeError(
            "policy must be a Policy, a PolicyStore, a path to a policy file or None, "
            f"not {type(policy).__name__}"
        )
    from meshlib.telemetry.policy_metrics import observe_policy

    observe_policy(store)
    return store, source
