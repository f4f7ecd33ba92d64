"""The production backends: policy versions and registrations in etcd, shared by every replica.

Keys (under `MESH_CONTROLPLANE_ETCD_PREFIX`, default `/meshlib/`):

| key                                 | value                                 | revision                        |
|-------------------------------------|---------------------------------------|---------------------------------|
| `policy/history/<id>`               | one version: text, format, hash, who, when, comment | its create revision **is** the version number |
| `policy/head`                       | the id of the version in force        | its mod revision = the version  |
| `registry/<service>/<instance>`     | the registration, under an etcd lease | -                               |

- **Versions** are etcd revisions: they only grow, are the same on every
  replica, and may have gaps (registrations take revisions too).
- **Publish** is one transaction that writes the history entry and moves
  `head`. With `expected=N` it compares `head`'s mod revision with N, so of
  two replicas publishing with the same ETag exactly one wins; without it,
  there is nothing to compare and a race cannot fail it.
- **Reads are linearizable** (etcd's default), so a replica that restarts, or
  talks to a member that was partitioned, reads the newest version before it
  serves; the watch then only moves forward.
- **Registrations** are keys attached to an etcd lease of the granted
  length; a heartbeat is a lease keep-alive (through any replica), and an
  expired lease deletes the key, which every replica's watch sees at once.

```python
policy, registry = etcd_backends(ControlPlaneSettings(store="etcd://127.0.0.1:2379"))
```
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import tenacity

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.controlplane.backoff import Backoff
from meshlib.controlplane.config import ControlPlaneSettings
from meshlib.controlplane.etcd import EtcdClient, b64, mod_equals, put_op, range_op, unb64
from meshlib.controlplane.instances import Instance, Registration, RegistryConfig
from meshlib.controlplane.storage import PolicyVersion, content_hash
from meshlib.errors import PolicyError, SettingsError, StoreUnavailableError, VersionConflictError
from meshlib.policy.durations import parse_duration
from meshlib.policy.files import policy_file
from meshlib.policy.limits import read_policy_file
from meshlib.policy.parse import Format, detect_format, parse_document, validate_policy

__all__ = ["EtcdPolicyBackend", "EtcdRegistryBackend", "etcd_backends", "parse_store_url"]

logger = logging.getLogger("meshlib.controlplane")

_CACHE_SIZE = 32


def parse_store_url(url: str) -> list[str]:
    """`etcd://a:2379,b:2379` (or `etcds://` for TLS) to the gateway's base URLs."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds") or not rest.strip("/"):
        raise SettingsError(
            f"MESH_CONTROLPLANE_STORE {url!r}: expected etcd://host:2379[,host:2379]"
        )
    http = "https" if scheme == "etcds" else "http"
    hosts = [h.strip().strip("/") for h in rest.split(",") if h.strip().strip("/")]
    for host in hosts:
        if "@" in host or "/" in host:
            raise SettingsError(
                f"MESH_CONTROLPLANE_STORE {url!r}: give host:port only; credentials go in "
                "MESH_CONTROLPLANE_ETCD_USER / _ETCD_PASSWORD"
            )
    return [f"{http}://{host}" for host in hosts]


def _client(settings: ControlPlaneSettings) -> EtcdClient:
    assert settings.store is not None
    user, _, inline = (settings.etcd_user or "").partition(":")
    password = settings.etcd_password.get_secret_value() if settings.etcd_password else inline
    endpoints = parse_store_url(settings.store)
    if settings.etcd_cacert is not None:
        endpoints = [e.replace("http://", "https://", 1) for e in endpoints]
    return EtcdClient(
        endpoints,
        cacert=settings.etcd_cacert,
        cert=settings.etcd_cert,
        key=settings.etcd_key,
        user=user or None,
        password=password or None,
        timeout=settings.etcd_timeout,
    )


def etcd_backends(
    settings: ControlPlaneSettings, *, clock: Clock = SYSTEM_CLOCK
) -> tuple[EtcdPolicyBackend, EtcdRegistryBackend]:
    """Both backends on the etcd cluster `settings.store` names (a client each).

    Raises:
        SettingsError: the store URL, TLS files or credentials are unusable.
    """
    prefix = settings.etcd_prefix.encode()
    try:
        seed: Path | None = policy_file(settings.policy)
    except PolicyError:  # a directory without a policy file: nothing to seed
        seed = None
    if seed is not None and not seed.is_file():
        seed = None
    return (
        EtcdPolicyBackend(_client(settings), prefix, seed=seed, clock=clock),
        EtcdRegistryBackend(
            _client(settings), prefix, RegistryConfig.from_settings(settings), clock
        ),
    )


class EtcdPolicyBackend:
    """Policy versions as etcd keys; the version number is the etcd revision of the publish."""

    def __init__(
        self,
        etcd: EtcdClient,
        prefix: bytes = b"/meshlib/",
        *,
        seed: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.etcd = etcd
        self.name = "etcd://" + ",".join(e.split("://", 1)[1] for e in etcd.endpoints)
        self.head = prefix + b"policy/head"
        self.entries = prefix + b"policy/history/"
        self.seed = seed
        self._clock = clock
        self._cache: OrderedDict[int, PolicyVersion] = OrderedDict()

    def _version(self, kv: dict[str, Any]) -> PolicyVersion:
        """A history entry's key-value as a PolicyVersion (its document parsed once, cached)."""
        number = int(kv["create_revision"])
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        raw = json.loads(unb64(kv.get("value")))
        text = raw["text"]
        fmt: Format = raw.get("format") or detect_format("", text)
        data, _ = parse_document(text, source=f"etcd version {number}", fmt=fmt)
        version = PolicyVersion(
            version=number,
            hash=str(raw["hash"]),
            text=text,
            format=fmt,
            who=str(raw.get("who", "")),
            when=float(raw.get("when", 0.0)),
            comment=str(raw.get("comment", "")),
            data=data,
        )
        self._cache[number] = version
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return version

    async def _newest(self) -> tuple[PolicyVersion | None, int]:
        answer = await self.etcd.range(self.entries, prefix=True, limit=1, newest_first=True)
        kvs = answer.get("kvs") or ()
        return (self._version(kvs[0]) if kvs else None), int(answer["header"]["revision"])

    async def start(self) -> None:
        """Read the version in force; seed an empty store from `seed` (one replica wins)."""
        current, _ = await self._newest()
        if current is None and self.seed is not None:
            text = await asyncio.to_thread(read_policy_file, self.seed)
            with contextlib.suppress(VersionConflictError):
                await self.publish(
                    text,
                    fmt=detect_format(self.seed.name, text),
                    who="seed",
                    comment=f"seeded from {self.seed.name}",
                    expected=0,
                )

    async def close(self) -> None:
        """Close the etcd connections."""
        await self.etcd.close()

    async def current(self) -> PolicyVersion | None:
        """The newest version, read linearizably."""
        return (await self._newest())[0]

    async def get(self, version: int) -> PolicyVersion:
        """Version `version` (`KeyError` when no history entry was created at that revision)."""
        cached = self._cache.get(version)
        if cached is not None:
            return cached
        answer = await self.etcd.range(
            self.entries,
            prefix=True,
            limit=1,
            min_create_revision=str(version),
            max_create_revision=str(version),
        )
        kvs = answer.get("kvs") or ()
        if not kvs:
            raise KeyError(version)
        return self._version(kvs[0])

    async def history(self, limit: int = 50) -> list[PolicyVersion]:
        """The newest `limit` versions, newest first (unreadable entries skipped)."""
        answer = await self.etcd.range(self.entries, prefix=True, limit=limit, newest_first=True)
        out = []
        for kv in answer.get("kvs") or ():
            try:
                out.append(self._version(kv))
            except (ValueError, KeyError, TypeError, PolicyError) as exc:
                logger.error("skipping unreadable etcd history entry %s: %s", kv.get("key"), exc)
        return out

    async def publish(
        self,
        text: str,
        *,
        fmt: Format | None,
        who: str,
        comment: str = "",
        expected: int | None = None,
    ) -> PolicyVersion:
        """Validate, then write entry and head in one transaction (compared with `expected`)."""
        fmt = fmt or detect_format("", text)
        source = f"publish by {who}"

        def validate() -> None:
            data, locate = parse_document(text, source=source, fmt=fmt)
            validate_policy(data, source=source, locate=locate)

        await asyncio.to_thread(validate)
        entry_id = secrets.token_hex(8).encode()
        entry = {
            "hash": content_hash(text),
            "format": fmt,
            "text": text,
            "who": who,
            "when": self._clock.wall(),
            "comment": comment,
        }
        key = self.entries + entry_id
        answer = await self.etcd.txn(
            compare=[] if expected is None else [mod_equals(self.head, expected)],
            success=[
                put_op(key, json.dumps(entry).encode()),
                put_op(self.head, entry_id),
            ],
            failure=[range_op(self.head)],
        )
        if not answer.get("succeeded"):
            kvs = answer["responses"][0]["response_range"].get("kvs") or ()
            current = int(kvs[0]["mod_revision"]) if kvs else 0
            raise VersionConflictError(
                f"the policy changed since you read it: version {expected} was expected, "
                f"version {current or 'none'} is current",
                current=current or None,
            )
        revision = int(answer["header"]["revision"])
        version = self._version(
            {
                "create_revision": revision,
                "value": b64(json.dumps(entry).encode()),
            }
        )
        logger.info("policy version %s published by %s (%s)", revision, who, comment or "-")
        return version

    async def rollback(
        self, version: int, *, who: str, expected: int | None = None
    ) -> PolicyVersion:
        """Publish version `version`'s content again as a new version."""
        old = await self.get(version)
        return await self.publish(
            old.text,
            fmt=old.format,
            who=who,
            comment=f"rollback to version {version}",
            expected=expected,
        )

    async def watch(self) -> AsyncIterator[PolicyVersion]:
        """The version in force, then each newer one from etcd's watch (never an older one)."""
        current, revision = await self._newest()
        last = 0
        if current is not None:
            last = current.version
            yield current
        async for events, _ in self.etcd.watch(
            self.entries, prefix=True, start_revision=revision + 1
        ):
            for event in events:
                if event.get("type") == "DELETE":
                    continue
                try:
                    version = self._version(event["kv"])
                except (ValueError, KeyError, TypeError, PolicyError) as exc:
                    logger.error("skipping an unreadable policy version from etcd: %s", exc)
                    continue
                if version.version > last:
                    last = version.version
                    yield version

    def status(self) -> dict[str, Any]:
        """Which etcd endpoint this replica talks to now."""
        return {"etcd_endpoint": self.etcd.endpoint}


class EtcdRegistryBackend:
    """Registrations as etcd keys under leases, mirrored in memory from one prefix watch."""

    def __init__(
        self,
        etcd: EtcdClient,
        prefix: bytes = b"/meshlib/",
        config: RegistryConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.etcd = etcd
        self.name = "etcd://" + ",".join(e.split("://", 1)[1] for e in etcd.endpoints)
        self.prefix = prefix + b"registry/"
        self.config = config or RegistryConfig()
        self.clock = clock
        self.boot = ""
        self._instances: dict[str, dict[str, dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._etags: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self._backoff = Backoff(tenacity.wait_random_exponential(multiplier=0.2, max=5.0))
        self.expired = 0

    def _key(self, service: str, instance: str) -> bytes:
        return self.prefix + f"{service}/{instance}".encode()

    def _split(self, key: bytes) -> tuple[str, str]:
        service, _, instance = key[len(self.prefix) :].decode().partition("/")
        return service, instance

    def _changed(self, service: str) -> None:
        self._etags.pop(service, None)
        event = self._events.pop(service, None)
        if event is not None:
            event.set()

    async def _load(self) -> int:
        answer = await self.etcd.range(self.prefix, prefix=True)
        self.boot = "etcd-" + str(answer["header"].get("cluster_id", ""))
        fresh: dict[str, dict[str, dict[str, Any]]] = {}
        for kv in answer.get("kvs") or ():
            service, instance = self._split(unb64(kv["key"]))
            with contextlib.suppress(ValueError):
                fresh.setdefault(service, {})[instance] = json.loads(unb64(kv.get("value")))
        for service in set(fresh) | set(self._instances):
            if fresh.get(service) != self._instances.get(service):
                self._instances[service] = fresh.get(service, {})
                self._changed(service)
        self._instances = {s: i for s, i in self._instances.items() if i}
        self._loaded.set()
        return int(answer["header"]["revision"])

    async def _follow(self) -> None:
        while True:
            try:
                revision = await self._load()
                self._backoff.succeeded()
                async for events, _ in self.etcd.watch(
                    self.prefix, prefix=True, start_revision=revision + 1
                ):
                    for event in events:
                        self._apply(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away: keep the mirror, reload when it is back
                logger.warning("registry watch on %s failed: %s", self.name, exc)
                await asyncio.sleep(self._backoff.failed())

    def _apply(self, event: dict[str, Any]) -> None:
        kv = event["kv"]
        service, instance = self._split(unb64(kv["key"]))
        instances = self._instances.setdefault(service, {})
        if event.get("type") == "DELETE":
            if instances.pop(instance, None) is not None:
                self.expired += 1  # lapsed leases and deregistrations alike
        else:
            with contextlib.suppress(ValueError):
                instances[instance] = json.loads(unb64(kv.get("value")))
        if not instances:
            self._instances.pop(service, None)
        self._changed(service)

    async def start(self) -> None:
        """Load every registration, then follow changes in the background."""
        await self._load()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        """Stop following and close the etcd connections."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.etcd.close()

    def _lease_for(self, requested: float | None) -> float:
        config = self.config
        lease = config.default_lease if requested is None else requested
        return min(max(lease, config.min_lease), config.max_lease)

    async def register(self, service: str, body: Registration, *, who: str) -> Instance:
        """Grant a lease and put the registration under it (replacing an earlier one)."""
        known = self._instances.get(service, {})
        if body.instance not in known and self.count() >= self.config.max_instances:
            raise OverflowError(
                f"the registry holds its maximum of {self.config.max_instances} instances"
            )
        lease = self._lease_for(parse_duration(body.lease) if body.lease else None)
        lease_id = await self.etcd.grant(max(1, math.ceil(lease)))
        record = {
            "instance": body.instance,
            "url": body.endpoint_url(),
            "zone": body.zone,
            "identity": body.checked_identity(),
            "metadata": dict(body.metadata),
            "lease_s": lease,
            "registered_at": self.clock.wall(),
            "registered_by": who,
            "lease_id": str(lease_id),
        }
        await self.etcd.put(
            self._key(service, body.instance), json.dumps(record).encode(), lease_id
        )
        return self._instance(service, record)

    def _instance(self, service: str, record: dict[str, Any]) -> Instance:
        lease = float(record.get("lease_s", self.config.default_lease))
        return Instance(
            service=service,
            instance=record["instance"],
            url=record["url"],
            zone=record.get("zone"),
            identity=record.get("identity"),
            metadata=record.get("metadata") or {},
            lease=lease,
            registered_at=float(record.get("registered_at", 0.0)),
            registered_by=str(record.get("registered_by", "")),
            expires_at=self.clock.monotonic() + lease,
        )

    async def _record(self, service: str, instance: str) -> dict[str, Any] | None:
        record = self._instances.get(service, {}).get(instance)
        if record is not None:
            return record
        # Registered through another replica a moment ago? Ask etcd, not our mirror.
        answer = await self.etcd.range(self._key(service, instance))
        kvs = answer.get("kvs") or ()
        return json.loads(unb64(kvs[0].get("value"))) if kvs else None

    async def renew(self, service: str, instance: str) -> Instance | None:
        """Keep the instance's lease alive; None when it lapsed (the instance registers again)."""
        record = await self._record(service, instance)
        if record is None:
            return None
        if await self.etcd.keepalive(int(record["lease_id"])) <= 0:
            return None
        return self._instance(service, record)

    async def deregister(self, service: str, instance: str) -> bool:
        """Delete the registration (its lease ends with it)."""
        record = await self._record(service, instance)
        deleted = await self.etcd.delete(self._key(service, instance))
        if record is not None:
            with contextlib.suppress(StoreUnavailableError):
                await self.etcd.revoke(int(record["lease_id"]))
        return deleted > 0

    def count(self) -> int:
        """Registered instances over every service, as this replica's mirror knows them."""
        return sum(len(i) for i in self._instances.values())

    def listing(self, service: str) -> dict[str, Any]:
        """The service's instances from the mirror (`expires_in_s` is unknown here: None)."""
        instances = sorted(self._instances.get(service, {}).values(), key=lambda i: i["instance"])
        return {
            "service": service,
            "boot": self.boot,
            "revision": self.etag(service).strip('"'),
            "instances": [
                {
                    "instance": i["instance"],
                    "url": i["url"],
                    "zone": i.get("zone"),
                    "identity": i.get("identity"),
                    "metadata": i.get("metadata") or {},
                    "lease_s": i.get("lease_s"),
                    "expires_in_s": None,
                    "registered_at": i.get("registered_at"),
                }
                for i in instances
            ],
        }

    def etag(self, service: str) -> str:
        """A hash of the instance list: the same on every replica that has seen the same keys."""
        etag = self._etags.get(service)
        if etag is None:
            records = sorted(
                (i["instance"], i["url"], i.get("zone"), i.get("identity"), i.get("metadata"))
                for i in self._instances.get(service, {}).values()
            )
            digest = hashlib.sha256(json.dumps(records).encode()).hexdigest()[:16]
            etag = self._etags[service] = f'"{digest}"'
        return etag

    def services(self) -> dict[str, int]:
        """Every service with registered instances, and how many."""
        return {name: len(i) for name, i in sorted(self._instances.items()) if i}

    async def wait(self, service: str, etag: str, timeout: float) -> None:
        """Wait for a change of the service's list (etcd's watch delivers lapsed leases too)."""
        if self.etag(service) != etag:
            return
        event = self._events.setdefault(service, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def status(self) -> dict[str, Any]:
        """Registrations removed (lapsed or deregistered) since this replica started."""
        return {"expired": self.expired}
