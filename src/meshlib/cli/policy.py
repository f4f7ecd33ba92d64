"""`meshlib policy`: validate documents, explain the policy a call gets, print the JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from meshlib.errors import PolicyError
from meshlib.outbound.retry import IDEMPOTENCY_HEADER
from meshlib.policy.files import policy_file
from meshlib.policy.model import Policy
from meshlib.policy.parse import load_policy
from meshlib.policy.resolve import EffectivePolicy, resolve
from meshlib.settings import MeshSettings

__all__ = ["effective_rows", "register", "retry_for_method"]

_PATH_HELP = (
    "A policy path is a YAML, JSON or TOML file, or a directory holding policy.yaml "
    "(.yml, .json, .toml), as `meshlib controlplane serve --policy DIR` keeps it."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `meshlib policy {validate,explain,schema}`."""
    policy = subparsers.add_parser("policy", help="validate and explain policy documents")
    commands = policy.add_subparsers(title="policy commands", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="check policy files; exit 1 listing every problem with file:line and field",
        description=_PATH_HELP,
    )
    validate.add_argument("files", nargs="+", metavar="FILE_OR_DIR")
    validate.set_defaults(handler=_validate)

    explain = commands.add_parser(
        "explain",
        help="show the effective policy of a call and the layer that set each value",
        description=_PATH_HELP,
    )
    explain.add_argument(
        "--policy",
        metavar="FILE_OR_DIR",
        help="policy file or directory (default: MESH_POLICY_FILE)",
    )
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
            print(f"{policy_file(name)}: ok ({len(policy.services)} services)")
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
    """`(setting, value as written in documents, layer that set it)` for every leaf setting."""
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
        print("no policy: pass --policy FILE_OR_DIR or set MESH_POLICY_FILE", file=sys.stderr)
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
    report = _report(policy, effective, host, method, args.url, args.caller, headers)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def retry_for_method(
    effective: EffectivePolicy, method: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    """How a call with `method` (and `headers`, lower-case names) is retried under `effective`.

    A failure known not to have reached the server (`connect-failure`) is
    retried for every method; the other `retry_on` failures only for
    `retry.methods`, or for a request carrying an `Idempotency-Key` (which
    `retry.idempotency_key: true` adds), as the outbound flow decides.
    """
    retry = effective.retry
    conditions = [str(v) for v in retry.retry_on]
    if method in retry.methods:
        replays, why = True, f"{method} is in retry.methods"
    elif IDEMPOTENCY_HEADER in headers:
        replays, why = True, f"{method} carries an Idempotency-Key header"
    elif retry.idempotency_key:
        replays, why = True, "retry.idempotency_key adds an Idempotency-Key header"
    else:
        replays, why = False, f"{method} is not in retry.methods"
    always = ["connect-failure"]  # never reached the server: any method, whatever retry_on says
    on = always + [c for c in conditions if c not in always] if replays else always
    return {
        "method": method,
        "attempts": retry.attempts,
        "retried_on": on if retry.attempts > 1 else [],
        "not_retried": [c for c in conditions if c not in on],
        "replays_after_reaching_server": replays,
        "why": why,
        "shadow": retry.mode == "shadow",
    }


def _retry_line(retry: dict[str, Any]) -> str:
    method = retry["method"]
    if retry["attempts"] <= 1:
        return f"{method}: 1 try, no retries (retry.attempts 1)"
    tries = f"{method}: up to {retry['attempts']} tries"
    shadow = " (shadow mode: retries are counted, not made)" if retry["shadow"] else ""
    if retry["replays_after_reaching_server"]:
        return f"{tries} on {', '.join(retry['retried_on'])} ({retry['why']}){shadow}"
    line = f"{tries} on connect-failure only (a try that never reached the server): {retry['why']}"
    if retry["not_retried"]:
        line += (
            f", so {', '.join(retry['not_retried'])} are not retried; send an Idempotency-Key "
            "header or set retry.idempotency_key: true to retry them"
        )
    return line + shadow


def _report(
    policy: Policy,
    effective: EffectivePolicy,
    host: str,
    method: str,
    url: str,
    caller: str | None,
    headers: Mapping[str, str],
) -> dict[str, Any]:
    routed = effective.service is not None
    report: dict[str, Any] = {
        "call": f"{method} {url}",
        "destination": host,
        "in_mesh": routed,
        "route": effective.route_name,
        "route_match": _route_match(policy, effective),
        "endpoints": [e.url for e in effective.endpoints] if routed else [url],
        "identity": policy.peer_identity(host, effective.tls.mode) if routed else None,
        "split": [{"service": t.service, "weight": t.weight} for t in effective.split],
        "tls_mode": effective.tls.mode,
        "retry": retry_for_method(effective, method, headers),
        "settings": [
            {"setting": name, "value": value, "set_by": layer}
            for name, value, layer in effective_rows(effective)
        ],
    }
    if caller is not None:
        identity = policy.service_identity(caller)
        report["caller"] = {"service": caller, "identity": identity}
        if routed:
            report["authz"] = _authz(policy, effective, host, method, url, identity)
    return report


def _authz(
    policy: Policy, effective: EffectivePolicy, host: str, method: str, url: str, identity: str
) -> dict[str, Any]:
    """The callee's inbound authz verdict, as its MeshMiddleware would judge this caller.

    The caller's identity reaches the callee only in its client certificate,
    so under any `tls.mode` but `mutual` the callee judges an anonymous caller.
    """
    import httpx

    from meshlib.clock import SYSTEM_CLOCK
    from meshlib.inbound.admission import LimiterRegistry
    from meshlib.inbound.paths import PATH_PROBLEMS, path_problem
    from meshlib.inbound.plan import InboundPlan

    plan = InboundPlan.compile(policy, host, LimiterRegistry(SYSTEM_CLOCK))
    target = httpx.URL(url)  # the path as a client sends it (dot segments resolved) and decoded
    path = target.path or "/"
    proven = effective.tls.mode == "mutual"
    problem = path_problem(path, target.raw_path.partition(b"?")[0])
    if problem is not None and plan.path_sensitive and not plan.path_shadow:
        rule = f"the path check (400: the path {PATH_PROBLEMS[problem]})"
        return {"allowed": False, "rule": rule, "tls_mode": effective.tls.mode, "path": problem}
    decision = plan.authz.decide(method, path, identity if proven else None)
    verdict: dict[str, Any] = {
        "allowed": decision.allowed,
        "rule": decision.rule,
        "tls_mode": effective.tls.mode,
        "identity_proven": proven,
    }
    if not proven:
        with_mtls = plan.authz.decide(method, path, identity)
        verdict["with_mutual_tls"] = {"allowed": with_mtls.allowed, "rule": with_mtls.rule}
    return verdict


def _route_match(policy: Policy, effective: EffectivePolicy) -> dict[str, Any] | None:
    if effective.service is None or effective.route_index < 0:
        return None
    route = policy.services[effective.service].routes[effective.route_index]
    return route.match.model_dump(mode="json", exclude_defaults=True)


def _verdict(decision: Mapping[str, Any]) -> str:
    return f"{'allowed' if decision['allowed'] else 'denied'} by {decision['rule']}"


def _authz_line(report: Mapping[str, Any]) -> str:
    authz = report["authz"]
    caller = report["caller"]["service"]
    if "path" in authz:  # refused before any rule: the callee routes no such path
        return f"{_verdict(authz)}, before any rule"
    if authz["identity_proven"]:
        return f"{_verdict(authz)} (tls.mode mutual: {caller}'s certificate proves its identity)"
    line = (
        f"{_verdict(authz)} (tls.mode {authz['tls_mode']}: no client certificate, so "
        f"{report['destination']} sees an anonymous caller"
    )
    other = authz["with_mutual_tls"]
    if (other["allowed"], other["rule"]) != (authz["allowed"], authz["rule"]):
        line += f"; with tls.mode mutual, {caller} would be {_verdict(other)}"
    return line + ")"


def _identity_line(report: Mapping[str, Any]) -> str:
    """What the caller checks of the destination's certificate under its `tls.mode`."""
    if report["tls_mode"] == "disabled":
        return "not checked (tls.mode disabled: no certificate to prove one)"
    if report["identity"] is None:
        return (
            "the host name, as any HTTPS client (tls.mode tls pins no SPIFFE ID without `identity`)"
        )
    return f"{report['identity']} (pinned: the certificate must carry it)"


def _print_report(report: dict[str, Any]) -> None:
    print(report["call"])
    if report["in_mesh"]:
        print(f"  destination  {report['destination']} (a service in the policy)")
        match = report["route_match"]
        shown = ", ".join(f"{k}={_format(v)}" for k, v in match.items()) if match else ""
        route = report["route"] or "(no route matched: service level)"
        print(f"  route        {route}{f'  match: {shown}' if shown else ''}")
        print(f"  endpoints    {', '.join(report['endpoints']) or '(none)'}")
        print(f"  identity     {_identity_line(report)}")
        for target in report["split"]:
            print(f"  split        {target['service']} weight {target['weight']}")
    else:
        print(
            f"  destination  {report['destination']} (not in the policy: called as written, under defaults)"
        )
    if "caller" in report:
        print(f"  caller       {report['caller']['service']} ({report['caller']['identity']})")
    if "authz" in report:
        print(f"  authz        {_authz_line(report)}")
    print(f"  retry        {_retry_line(report['retry'])}")
    rows = [(row["setting"], _format(row["value"]), row["set_by"]) for row in report["settings"]]
    name_width = max(len("setting"), *(len(name) for name, _, _ in rows))
    value_width = max(len("value"), *(len(value) for _, value, _ in rows))
    print()
    print(f"  {'setting'.ljust(name_width)}  {'value'.ljust(value_width)}  set by")
    for name, value, layer in rows:
        print(f"  {name.ljust(name_width)}  {value.ljust(value_width)}  {layer}")


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Policy.model_json_schema(), indent=2))
    return 0
