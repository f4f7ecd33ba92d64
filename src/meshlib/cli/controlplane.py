"""`meshlib controlplane`: run a replica (`serve`) and operate it (`publish`, `history`, ...).

Every `serve` option also reads `MESH_CONTROLPLANE_<OPTION>`; prefer the
environment for tokens and passwords, which `ps` would otherwise show:

```console
$ MESH_CONTROLPLANE_PUBLISH_TOKENS=alice=s3cret meshlib controlplane serve --policy mesh/ --port 8700
$ MESH_CONTROLPLANE_STORE=etcd://10.0.0.5:2379 meshlib controlplane serve --port 8700
```

The operating commands live in [`meshlib.cli.controlplane_ops`][meshlib.cli.controlplane_ops].
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshlib.extras import install_hint

__all__ = ["register", "serve"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `meshlib controlplane serve` and the operating commands."""
    from meshlib.cli import controlplane_ops

    group = subparsers.add_parser("controlplane", help="run and operate the control plane")
    commands = group.add_subparsers(title="controlplane commands", metavar="COMMAND", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="serve policy with watch, publish, history and rollback, reports and the dashboard",
        description="Serve policy from a directory (policy.yaml + history/) or a single file, "
        "or from etcd (--store etcd://host:2379) for several replicas.",
    )
    serve_cmd.add_argument(
        "--policy",
        metavar="DIR_OR_FILE",
        help="policy directory or file (must exist; with --store etcd: what seeds an empty store)",
    )
    serve_cmd.add_argument(
        "--store",
        metavar="URL",
        help="etcd://host:2379[,host:2379] (etcds:// for TLS) to keep policy and registrations "
        "in etcd; default: the policy directory and this replica's memory",
    )
    serve_cmd.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default 8700)")
    for flag, dest, what in (
        ("--read-token", "read_tokens", "may read and report (none: reading is open)"),
        ("--publish-token", "publish_tokens", "may publish and roll back (none: refused)"),
        ("--register-token", "register_tokens", "may register instances in the registry"),
    ):
        serve_cmd.add_argument(
            flag,
            action="append",
            dest=dest,
            metavar="[NAME=]TOKEN",
            help=f"a token that {what} (repeatable; the environment is safer)",
        )
    serve_cmd.add_argument("--tls-cert", help="server certificate chain (turns TLS on)")
    serve_cmd.add_argument("--tls-key", help="server private key")
    serve_cmd.add_argument("--tls-ca", help="CA for client certificates (mTLS identities)")
    serve_cmd.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    serve_cmd.set_defaults(handler=serve)
    controlplane_ops.register(commands)


_OPTIONS = (
    "policy",
    "store",
    "host",
    "port",
    "read_tokens",
    "publish_tokens",
    "register_tokens",
    "tls_cert",
    "tls_key",
    "tls_ca",
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _OPTIONS if getattr(args, name, None) is not None}


def _check_policy_path(settings: Any, given: bool) -> str | None:
    """Why `serve` must not start on this policy path, or None (an empty store is announced)."""
    path = Path(settings.policy)
    if settings.store is not None:
        if given and not path.exists():
            return f"--policy {path}: with an etcd store, --policy seeds an empty store from a policy file or directory, and there is none"
        return None
    if not path.exists():
        return (
            f"the policy path {path} does not exist (misspelt?). Create it to start with an "
            f"empty policy directory: mkdir -p {path}"
        )
    return None


def serve(args: argparse.Namespace) -> int:
    """Run a replica until interrupted; 2 for bad settings, 1 if it cannot start."""
    try:
        from meshlib.controlplane.app import create_app
        from meshlib.controlplane.config import ControlPlaneSettings
        from meshlib.controlplane.server import ControlPlaneServer, server_config
    except ImportError as exc:
        print(
            f"the control plane needs its extra: {install_hint('controlplane')} ({exc})",
            file=sys.stderr,
        )
        return 1
    try:
        settings = ControlPlaneSettings(**_overrides(args))
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(p) for p in error["loc"])
            print(f"controlplane setting {field}: {error['msg']}", file=sys.stderr)
        return 2
    problem = _check_policy_path(settings, getattr(args, "policy", None) is not None)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except OSError as exc:
        print(f"cannot use the policy path {settings.policy}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # SettingsError: etcd TLS or auth options
        print(f"controlplane setting: {exc}", file=sys.stderr)
        return 2
    plane = app.state.plane
    if settings.store is None and plane.backend.repository.policy_file_text() is None:
        logging.getLogger("meshlib.controlplane").warning(
            "%s holds no policy file: the control plane starts EMPTY and serves nothing "
            "until the first publish",
            settings.policy,
        )
    server = ControlPlaneServer(server_config(app, settings, log_level=args.log_level), plane)
    server.run()
    return 0
