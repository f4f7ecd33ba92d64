"""``meshlib controlplane serve``: run the control plane (policy API, watch, reports, dashboard).

Every option also reads ``MESH_CONTROLPLANE_<OPTION>``; prefer the
environment for tokens, which ``ps`` would otherwise show::

    MESH_CONTROLPLANE_PUBLISH_TOKENS=alice=s3cret meshlib controlplane serve --policy mesh/ --port 8700
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from typing import Any

from pydantic import ValidationError

__all__ = ["register", "serve"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``meshlib controlplane serve``."""
    group = subparsers.add_parser("controlplane", help="run the control plane")
    commands = group.add_subparsers(title="controlplane commands", metavar="COMMAND", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="serve policy with watch, publish, history and rollback, reports and the dashboard",
        description="Serve policy from a directory (policy.yaml + history/) or a single file.",
    )
    serve_cmd.add_argument("--policy", metavar="DIR_OR_FILE", help="policy directory or file")
    serve_cmd.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default 8700)")
    serve_cmd.add_argument(
        "--read-token",
        action="append",
        dest="read_tokens",
        metavar="[NAME=]TOKEN",
        help="a token that may read and report (repeatable; none: reading is open)",
    )
    serve_cmd.add_argument(
        "--publish-token",
        action="append",
        dest="publish_tokens",
        metavar="[NAME=]TOKEN",
        help="a token that may publish and roll back (repeatable; none: publishing is refused)",
    )
    serve_cmd.add_argument(
        "--register-token",
        action="append",
        dest="register_tokens",
        metavar="[NAME=]TOKEN",
        help="a token that may register instances in the service registry (repeatable)",
    )
    serve_cmd.add_argument("--tls-cert", help="server certificate chain (turns TLS on)")
    serve_cmd.add_argument("--tls-key", help="server private key")
    serve_cmd.add_argument("--tls-ca", help="CA for client certificates (mTLS identities)")
    serve_cmd.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    serve_cmd.set_defaults(handler=serve)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "policy",
        "host",
        "port",
        "read_tokens",
        "publish_tokens",
        "tls_cert",
        "tls_key",
        "tls_ca",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def serve(args: argparse.Namespace) -> int:
    """Run the control plane until interrupted; 2 for bad settings, 1 if it cannot start."""
    try:
        import uvicorn

        from meshlib.controlplane.app import create_app
        from meshlib.controlplane.config import ControlPlaneSettings
    except ImportError as exc:
        print(
            f"the control plane needs its extra: pip install 'meshlib[controlplane]' ({exc})",
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
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except OSError as exc:
        print(f"cannot use the policy path {settings.policy}: {exc}", file=sys.stderr)
        return 1
    config: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": args.log_level,
        # Parked long-polls would hold a shutdown for up to max_wait; their clients
        # reconnect (to another replica) within one backoff step instead.
        "timeout_graceful_shutdown": 3,
    }
    if settings.tls_cert is not None:
        config.update(
            ssl_certfile=str(settings.tls_cert),
            ssl_keyfile=settings.tls_key and str(settings.tls_key),
        )
        if settings.tls_ca is not None:
            # Optional, not required: token-only clients still connect; identities come from certs.
            config.update(ssl_ca_certs=str(settings.tls_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
            try:
                from uvicorn.protocols.http.h11_impl import H11Protocol

                from meshlib.security.asgi_bridge import bridged_protocol

                config["http"] = bridged_protocol(H11Protocol)
            except ImportError:
                print(
                    "warning: mTLS identities need meshlib.security; only tokens work",
                    file=sys.stderr,
                )
    uvicorn.run(app, **config)
    return 0
