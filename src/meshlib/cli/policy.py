"""``meshlib policy``: validate documents, explain the policy a call gets, print the JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from meshlib.errors import PolicyError
from meshlib.policy.model import Policy
from meshlib.policy.parse import load_policy
from meshlib.policy.resolve import EffectivePolicy, resolve
from meshlib.settings import MeshSettings

__all__ = ["effective_rows", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``meshlib policy {validate,explain,schema}``."""
    policy = subparsers.add_parser("policy", help="validate and explain policy documents")
    commands = policy.add_subparsers(title="policy commands", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate", help="check policy files; exit 1 listing every problem with file:line and field"
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=_validate)

    explain = commands.add_parser(
        "explain", help="show the effective policy of a call and the layer that set each value"
    )
    explain.add_argument("--policy", help="policy file (default: MESH_POLICY_FILE)")
    explain.add_argument("--from", dest="caller", metavar="SERVICE", help="the calling service")
    explain.add_argument(
        "-H", "--header", action="append", default=[], metavar="NAME:VALUE", help="a request header"
    )
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL")
    explain.set_defaults(handler=_explain)

    schema = commands.add_parser("schema", help="print the policy document's JSON Schema")
    schema.set_defaults(handler=_schema)


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        try:
            policy = load_policy(name)
        except PolicyError as exc:
            failed += 1
            for issue in exc.issues:
                print(issue, file=sys.stderr)
        else:
            print(f"{name}: ok ({len(policy.services)} services)")
    if failed:
        print(f"{failed} of {len(args.files)} files invalid", file=sys.stderr)
    return 1 if failed else 0


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += _flatten(f"{prefix}.{key}", item)
        return rows
    return [(prefix, value)]


def effective_rows(effective: EffectivePolicy) -> list[tuple[str, Any, str]]:
    """``(setting, value as written in documents, layer that set it)`` for every leaf setting."""
    rows: list[tuple[str, Any, str]] = []
    for section in (
        "timeouts",
        "retry",
        "circuit_breaker",
        "outlier_detection",
        "load_balancer",
        "tls",
        "fault",
    ):
        value = getattr(effective, section)
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for name, leaf in _flatten(section, dumped):
            rows.append((name, leaf, effective.source_of(name)))
    return rows


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _explain(args: argparse.Namespace) -> int:
    path = args.policy or MeshSettings().policy_file
    if path is None:
        print("no policy: pass --policy FILE or set MESH_POLICY_FILE", file=sys.stderr)
        return 2
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    parts = urlsplit(args.url)
    if not parts.scheme or not parts.hostname:
        print(
            f"{args.url!r} is not an absolute URL, e.g. http://payments/v1/charges", file=sys.stderr
        )
        return 2
    headers: dict[str, str] = {}
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep:
            print(f"header {raw!r} must be NAME:VALUE", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    method = args.method.upper()
    host = parts.hostname
    effective = resolve(policy, host, method, parts.path or "/", headers)
    report = _report(policy, effective, host, method, args.url, args.caller)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def _report(
    policy: Policy, effective: EffectivePolicy, host: str, method: str, url: str, caller: str | None
) -> dict[str, Any]:
    routed = effective.service is not None
    report: dict[str, Any] = {
        "call": f"{method} {url}",
        "destination": host,
        "in_mesh": routed,
        "route": effective.route_name,
        "route_match": _route_match(policy, effective),
        "endpoints": [e.url for e in effective.endpoints] if routed else [url],
        "identity": policy.service_identity(host) if routed else None,
        "split": [{"service": t.service, "weight": t.weight} for t in effective.split],
        "settings": [
            {"setting": name, "value": value, "set_by": layer}
            for name, value, layer in effective_rows(effective)
        ],
    }
    if caller is not None:
        identity = policy.service_identity(caller)
        report["caller"] = {"service": caller, "identity": identity}
        if routed:
            # The callee's inbound authz, as its MeshMiddleware would judge this caller.
            from meshlib.inbound.authz import CompiledAuthz

            where = f"services.{host}"
            authz = CompiledAuthz.compile(policy.services[host].inbound.authz, where)
            decision = authz.decide(method, urlsplit(url).path or "/", identity)
            report["authz"] = {"allowed": decision.allowed, "rule": decision.rule}
    return report


def _route_match(policy: Policy, effective: EffectivePolicy) -> dict[str, Any] | None:
    if effective.service is None or effective.route_index < 0:
        return None
    route = policy.services[effective.service].routes[effective.route_index]
    return route.match.model_dump(mode="json", exclude_defaults=True)


def _print_report(report: dict[str, Any]) -> None:
    print(report["call"])
    if report["in_mesh"]:
        print(f"  destination  {report['destination']} (a service in the policy)")
        match = report["route_match"]
        shown = ", ".join(f"{k}={_format(v)}" for k, v in match.items()) if match else ""
        route = report["route"] or "(no route matched: service level)"
        print(f"  route        {route}{f'  match: {shown}' if shown else ''}")
        print(f"  endpoints    {', '.join(report['endpoints']) or '(none)'}")
        print(f"  identity     {report['identity']}")
        for target in report["split"]:
            print(f"  split        {target['service']} weight {target['weight']}")
    else:
        print(
            f"  destination  {report['destination']} (not in the policy: called as written, under defaults)"
        )
    if "caller" in report:
        print(f"  caller       {report['caller']['service']} ({report['caller']['identity']})")
    if "authz" in report:
        verdict = "allowed" if report["authz"]["allowed"] else "denied"
        print(f"  authz        {verdict} by {report['authz']['rule']} (with mTLS on)")
    width = max(len(row["setting"]) for row in report["settings"])
    print()
    print(f"  {'setting'.ljust(width)}  {'value'.ljust(24)}  set by")
    for row in report["settings"]:
        print(
            f"  {row['setting'].ljust(width)}  {_format(row['value']).ljust(24)}  {row['set_by']}"
        )


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Policy.model_json_schema(), indent=2))
    return 0
