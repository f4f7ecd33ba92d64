"""A small etcd v3 client over etcd's JSON gRPC gateway, with httpx.

etcd serves its v3 API as JSON over HTTP on the client port (the "gRPC
gateway", `POST /v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, ...: etcd's
`dev-guide/api_grpc_gateway`). meshlib uses it instead of a gRPC client
library on purpose:

- it needs no dependency: httpx is already meshlib's HTTP client, asyncio
  native, with the TLS and connection handling the rest of meshlib uses;
- the maintained Python etcd v3 clients either pin old protobuf/grpcio
  (`etcd3`, last released 2020), are synchronous on `requests` (`etcd3gw`),
  or bring grpcio's native wheels and fork caveats into every replica
  (`aetcd`) for a dozen calls;
- the gateway is part of etcd itself and stable across 3.4 to 3.6, and the
  few calls a control plane makes (range, txn, watch, leases, auth) are each
  one JSON request.

Keys and values are bytes, base64 in JSON; 64-bit numbers are JSON strings.
Requests fail over between the endpoints; a watch is one streamed response
per `create_request`:

```python
etcd = EtcdClient(["http://127.0.0.1:2379"])
await etcd.put(b"/k", b"v")
answer = await etcd.txn(compare=[mod_equals(b"/k", 5)], success=[put_op(b"/k", b"w")])
async for events, revision in etcd.watch(b"/k", start_revision=6):
    ...
```
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from meshlib.errors import SettingsError, StoreUnavailableError

__all__ = [
    "EtcdClient",
    "b64",
    "delete_op",
    "mod_equals",
    "prefix_end",
    "put_op",
    "range_op",
    "unb64",
]

logger = logging.getLogger("meshlib.controlplane")


def b64(data: bytes) -> str:
    """Bytes as the gateway wants them."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    """Bytes from the gateway's base64 (absent means empty)."""
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def mod_equals(key: bytes, revision: int) -> dict[str, Any]:
    """A txn comparison: the key was last modified at `revision` (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put_op(key: bytes, value: bytes, lease: int | None = None) -> dict[str, Any]:
    """A txn operation that puts `key` (attached to `lease`, if any)."""
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def range_op(key: bytes) -> dict[str, Any]:
    """A txn operation that reads `key`."""
    return {"request_range": {"key": b64(key)}}


def delete_op(key: bytes) -> dict[str, Any]:
    """A txn operation that deletes `key`."""
    return {"request_delete_range": {"key": b64(key)}}


class EtcdClient:
    """etcd v3 over its JSON gateway: KV, txn, watch, leases, and user/password auth."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise SettingsError("etcd needs at least one endpoint (etcd://host:2379)")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self._index = 0
        self._user = user
        self._password = password
        self._token: str | None = None
        verify: ssl.SSLContext | bool = True
        if cacert is not None or cert is not None:
            try:
                verify = ssl.create_default_context(cafile=cacert)
                if cert is not None:
                    verify.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(
                    f"cannot build the TLS context for etcd from MESH_CONTROLPLANE_ETCD_CACERT "
                    f"({cacert}), _ETCD_CERT ({cert}) and _ETCD_KEY ({key}): {exc}"
                ) from None
        self._client = httpx.AsyncClient(
            verify=verify,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to first (the last one that answered)."""
        return self.endpoints[self._index]

    async def _authenticate(self, base: str) -> None:
        response = await self._client.post(
            base + "/v3/auth/authenticate", json={"name": self._user, "password": self._password}
        )
        if response.status_code != 200:
            raise StoreUnavailableError(
                f"etcd at {base} refused user {self._user!r}: {_message(response)}"
            )
        self._token = response.json().get("token")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/v3/<path>` on the first endpoint that answers; the JSON answer.

        Raises:
            StoreUnavailableError: no endpoint answered, or etcd refused the request.
        """
        errors: list[str] = []
        for step in range(len(self.endpoints)):
            index = (self._index + step) % len(self.endpoints)
            base = self.endpoints[index]
            try:
                if self._user and self._token is None:
                    await self._authenticate(base)
                response = await self._client.post(
                    f"{base}/v3/{path}", json=body, headers=self._headers()
                )
                if response.status_code == 401 and self._user:  # the auth token expired
                    await self._authenticate(base)
                    response = await self._client.post(
                        f"{base}/v3/{path}", json=body, headers=self._headers()
                    )
            except httpx.HTTPError as exc:
                errors.append(f"{base}: {type(exc).__name__}: {str(exc) or 'no detail'}")
                continue
            if response.status_code == 200:
                self._index = index
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code in (500, 503) and "unavailable" in response.text.lower():
                errors.append(f"{base}: {_message(response)}")  # e.g. a member without quorum
                continue
            raise StoreUnavailableError(f"etcd at {base} refused {path}: {_message(response)}")
        raise StoreUnavailableError("no etcd endpoint answered: " + "; ".join(errors))

    async def range(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        limit: int = 0,
        newest_first: bool = False,
        revision: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Read `key` (or every key under it with `prefix`), sorted by creation when asked."""
        body: dict[str, Any] = {"key": b64(key), **extra}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if limit:
            body["limit"] = str(limit)
        if newest_first:
            body.update(sort_order="DESCEND", sort_target="CREATE")
        if revision is not None:
            body["revision"] = str(revision)
        return await self.call("kv/range", body)

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> int:
        """Put `key`; the store revision it was written at."""
        answer = await self.call("kv/put", put_op(key, value, lease)["request_put"])
        return int(answer["header"]["revision"])

    async def delete(self, key: bytes) -> int:
        """Delete `key`; how many keys were deleted (0 or 1)."""
        answer = await self.call("kv/deleterange", {"key": b64(key)})
        return int(answer.get("deleted", 0))

    async def txn(
        self,
        *,
        compare: Sequence[dict[str, Any]] = (),
        success: Sequence[dict[str, Any]] = (),
        failure: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """One atomic transaction; the answer has `succeeded` (absent means False)."""
        return await self.call(
            "kv/txn",
            {"compare": list(compare), "success": list(success), "failure": list(failure)},
        )

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return int((await self.call("lease/grant", {"TTL": str(ttl)}))["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew `lease`; the seconds it now has left, 0 when it no longer exists."""
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End `lease` now (its keys are deleted)."""
        await self.call("lease/revoke", {"ID": str(lease)})

    async def watch(
        self, key: bytes, *, prefix: bool = False, start_revision: int
    ) -> AsyncIterator[tuple[list[dict[str, Any]], int]]:
        """Events on `key` (or under it) from `start_revision` on, as `(events, revision)` batches.

        Raises:
            StoreUnavailableError: the stream could not start, broke, or etcd cancelled it
                (`compacted` is then in the message: re-read and watch again).
        """
        request: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if prefix:
            request["range_end"] = b64(prefix_end(key))
        base = self.endpoint
        try:
            if self._user and self._token is None:
                await self._authenticate(base)
            async with self._client.stream(
                "POST",
                base + "/v3/watch",
                json={"create_request": request},
                headers=self._headers(),
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise StoreUnavailableError(
                        f"etcd at {base}: watch refused: {_message(response)}"
                    )
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise StoreUnavailableError(f"etcd at {base}: watch: {message['error']}")
                    result = message.get("result", {})
                    if result.get("canceled"):
                        raise StoreUnavailableError(
                            f"etcd at {base} cancelled the watch (compacted to revision "
                            f"{result.get('compact_revision')}): {result.get('cancel_reason', '')}"
                        )
                    events = result.get("events")
                    if events:
                        yield events, int(result["header"]["revision"])
        except httpx.HTTPError as exc:
            self._index = (self._index + 1) % len(self.endpoints)  # watch another member next
            raise StoreUnavailableError(
                f"etcd at {base}: watch: {type(exc).__name__}: {exc}"
            ) from exc
        except ValueError as exc:
            raise StoreUnavailableError(f"etcd at {base}: watch sent garbage: {exc}") from exc
        self._index = (self._index + 1) % len(self.endpoints)
        raise StoreUnavailableError(f"etcd at {base} ended the watch")

    async def close(self) -> None:
        """Close the connections; idempotent."""
        await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} {response.text[:200]}"
    return f"HTTP {response.status_code} {body.get('message') or body.get('error') or body}"
