"""`meshlib controlplane publish|history|diff|rollback|status`: everyday operations without curl.

They talk to the control plane named by `--url` or `MESH_CONTROL_PLANE_URL`
(several URLs fail over in order), with the bearer token from
`MESH_CONTROL_PLANE_TOKEN` and TLS from `MESH_TLS_*`, exactly as services do:

```console
$ export MESH_CONTROL_PLANE_URL=http://127.0.0.1:8700 MESH_CONTROL_PLANE_TOKEN=s3cret
$ meshlib controlplane publish mesh.yaml --comment "three tries" --if-match 7
$ meshlib controlplane history
$ meshlib controlplane diff 7 9
$ meshlib controlplane rollback 7
$ meshlib controlplane status
```

Exit codes: 0 done, 1 refused or unreachable (the server's reason is
printed), 2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = ["register"]

_CONTENT_TYPES = {".json": "application/json", ".toml": "application/toml"}


class _Failed(Exception):
    """An operation failed; the message is for the user."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="control plane URL(s), comma-separated (default: MESH_CONTROL_PLANE_URL)",
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operating commands under `meshlib controlplane`."""
    publish = commands.add_parser("publish", help="publish a policy file as the next version")
    publish.add_argument("file", type=Path, help="the policy document (YAML, JSON or TOML)")
    publish.add_argument("--comment", default="", help="why, for the history")
    publish.add_argument(
        "--if-match",
        metavar="VERSION_OR_ETAG",
        help="publish only if this version is still current (compare-and-set)",
    )
    _common(publish)
    publish.set_defaults(handler=_run, operation=_publish)

    history = commands.add_parser("history", help="list the versions, newest first")
    history.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    _common(history)
    history.set_defaults(handler=_run, operation=_history)

    diff = commands.add_parser("diff", help="show what changed between two versions")
    diff.add_argument("old", type=int, help="the older version")
    diff.add_argument("new", type=int, nargs="?", help="the newer version (default: current)")
    _common(diff)
    diff.set_defaults(handler=_run, operation=_diff)

    rollback = commands.add_parser(
        "rollback", help="publish an earlier version's content again, as a new version"
    )
    rollback.add_argument("version", type=int, help="the version whose content to restore")
    rollback.add_argument(
        "--if-match", metavar="VERSION_OR_ETAG", help="only if this version is still current"
    )
    _common(rollback)
    rollback.set_defaults(handler=_run, operation=_rollback)

    status = commands.add_parser(
        "status", help="each replica's state, and which version each reporting instance runs"
    )
    _common(status)
    status.set_defaults(handler=_run, operation=_status)


class _Plane:
    """The control plane's URLs, with one client: reads and writes fail over on connect errors."""

    def __init__(self, args: argparse.Namespace) -> None:
        from meshlib.controlplane.connection import control_plane_verify
        from meshlib.settings import MeshSettings

        overrides: dict[str, Any] = {}
        if args.url:
            overrides["control_plane_url"] = args.url
        settings = MeshSettings(**overrides)
        if not settings.control_plane_url:
            raise _Failed("no control plane: pass --url or set MESH_CONTROL_PLANE_URL")
        self.urls: Sequence[str] = settings.control_plane_url
        token = settings.control_plane_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.client = httpx.Client(
            headers=headers, verify=control_plane_verify(settings), timeout=10.0, trust_env=False
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        errors = []
        for url in self.urls:
            try:
                return self.client.request(method, url + path, **kwargs)
            except httpx.TransportError as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
        raise _Failed("no control plane answered: " + "; ".join(errors))

    def json(self, method: str, path: str, ok: int = 200, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code != ok:
            raise _Failed(_explain(response))
        return response.json()


def _explain(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    lines = [f"HTTP {response.status_code}: {body.get('error', body)}"]
    for issue in body.get("issues") or ():
        where = f"line {issue['line']}: " if issue.get("line") else ""
        lines.append(f"  {where}{issue.get('field') or '-'}: {issue.get('message')}")
    return "\n".join(lines)


def _etag(plane: _Plane, given: str | None) -> dict[str, str]:
    """`If-Match` for a version number or an ETag (a number is looked up in the history)."""
    if given is None:
        return {}
    if given.isdigit():
        return {"If-Match": plane.json("GET", f"/v1/policy/history/{given}")["etag"]}
    return {"If-Match": given if given.startswith('"') else f'"{given}"'}


def _when(stamp: Any) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    moment = datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _publish(plane: _Plane, args: argparse.Namespace) -> None:
    from meshlib.errors import PolicyError
    from meshlib.policy.limits import read_policy_file

    try:
        text = read_policy_file(args.file)
    except PolicyError as exc:
        raise _Failed(str(exc)) from None
    headers = {
        "Content-Type": _CONTENT_TYPES.get(args.file.suffix.lower(), "application/yaml"),
        **_etag(plane, args.if_match),
    }
    if args.comment:
        headers["X-Mesh-Comment"] = args.comment
    body = plane.json("PUT", "/v1/policy", ok=201, content=text.encode(), headers=headers)
    print(f"published version {body['version']} {body['etag']} by {body['who']}")


def _history(plane: _Plane, args: argparse.Namespace) -> None:
    body = plane.json("GET", "/v1/policy/history", params={"limit": args.limit})
    print(f"{'':2}{'VERSION':>8}  {'WHEN':20}  {'WHO':16}  COMMENT")
    for v in body["versions"]:
        mark = "* " if v["version"] == body["current"] else "  "
        print(f"{mark}{v['version']:>8}  {_when(v['when']):20}  {v['who'][:16]:16}  {v['comment']}")


def _diff(plane: _Plane, args: argparse.Namespace) -> None:
    params = {"from": args.old, **({"to": args.new} if args.new else {})}
    print(plane.json("GET", "/v1/policy/diff", params=params)["diff"], end="")


def _rollback(plane: _Plane, args: argparse.Namespace) -> None:
    headers = _etag(plane, args.if_match)
    body = plane.json(
        "POST", "/v1/policy/rollback", ok=201, json={"version": args.version}, headers=headers
    )
    print(f"rolled back to version {args.version}'s content as version {body['version']}")


def _status(plane: _Plane, args: argparse.Namespace) -> None:
    current: int | None = None
    for url in plane.urls:
        try:
            ready = plane.client.get(url + "/readyz")
            state = ready.json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"replica {url}: unreachable ({type(exc).__name__})")
            continue
        version = state.get("version")
        current = max(current or 0, version) if isinstance(version, int) else current
        extra = f", store error: {state['store_error']}" if state.get("store_error") else ""
        print(
            f"replica {url}: {state.get('status', ready.status_code)}, version {version}, "
            f"{state.get('watchers', 0)} watchers, store {state.get('store', '?')}{extra}"
        )
    # Reports live in the memory of the replica that received them: ask every replica.
    found: dict[tuple[str, str], tuple[str, str, Any, Any]] = {}
    for url in plane.urls:
        try:
            answer = plane.client.get(url + "/v1/mesh")
        except httpx.HTTPError:
            continue
        if answer.status_code != 200:
            raise _Failed(_explain(answer))
        for service in answer.json().get("services", ()):
            for i in service.get("instances", ()):
                key = (service["name"], i["instance"])
                found[key] = (*key, i.get("policy_revision"), i.get("zone"))
    rows = list(found.values())
    print(f"\n{'SERVICE':20}  {'INSTANCE':28}  {'VERSION':>8}  STATE")
    for service, instance, revision, _zone in sorted(rows, key=lambda r: (r[0], r[1])):
        behind = current is not None and str(revision) != str(current)
        state = "BEHIND" if behind else "current"
        print(f"{service[:20]:20}  {instance[:28]:28}  {revision!s:>8}  {state}")
    if not rows:
        print("(no instance has reported to these replicas)")


def _run(args: argparse.Namespace) -> int:
    try:
        plane = _Plane(args)
    except _Failed as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:  # a malformed MESH_* setting
        print(f"settings: {exc}", file=sys.stderr)
        return 2
    try:
        args.operation(plane, args)
    except _Failed as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        plane.client.close()
    return 0
