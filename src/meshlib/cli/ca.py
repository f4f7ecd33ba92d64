"""`meshlib ca`: a development CA that issues SPIFFE certificates.

meshlib ca init --trust-domain example.org --dir ./certs
meshlib ca issue payments --dir ./certs --dns localhost --ip 127.0.0.1 --ip ::1 --ttl 24h
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from meshlib.extras import install_hint
from meshlib.policy.durations import format_duration, parse_duration

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `meshlib ca {init,issue}`."""
    ca = subparsers.add_parser("ca", help="a development CA issuing SPIFFE certificates")
    commands = ca.add_subparsers(title="ca commands", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="create a CA for a trust domain (ca.pem, ca.key)")
    init.add_argument("--trust-domain", required=True, help="e.g. example.org")
    init.add_argument("--dir", default="certs", help="where to write the files (default: certs)")
    init.add_argument("--ttl", default="8760h", help="validity, e.g. 8760h (default: one year)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_init)

    issue = commands.add_parser(
        "issue", help="issue SERVICE.pem/SERVICE.key with SAN URI spiffe://<trust-domain>/SERVICE"
    )
    issue.add_argument("service", metavar="SERVICE")
    issue.add_argument("--dir", default="certs", help="the CA's directory (default: certs)")
    issue.add_argument("--out", help="where to write the files (default: the CA's directory)")
    issue.add_argument("--dns", action="append", default=[], help="a DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="an IP SAN (repeatable)")
    issue.add_argument("--ttl", default="24h", help="validity, e.g. 24h, 30m (default: 24h)")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(handler=_issue)


def _ttl(text: str) -> dt.timedelta:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"--ttl {text!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def _fail(message: object) -> int:
    print(f"meshlib ca: {message}", file=sys.stderr)
    return 1


def _fail_os(exc: OSError, replaces: str = "it") -> int:
    """Say what went wrong with which file in the CLI's words (`--force`, not `force=True`)."""
    if isinstance(exc, FileExistsError) and "force=True" in (exc.strerror or ""):
        return _fail(f"{exc.filename} already exists; pass --force to replace {replaces}")
    if exc.filename and exc.strerror:
        return _fail(f"{exc.filename}: {exc.strerror}")
    return _fail(exc)


def _init(args: argparse.Namespace) -> int:
    try:
        from meshlib.security.ca import DevCA

        ca = DevCA.create(args.trust_domain, args.dir, ttl=_ttl(args.ttl), force=args.force)
    except ImportError:
        return _fail(f"the dev CA needs the cryptography package: {install_hint('ca')}")
    except OSError as exc:
        return _fail_os(exc, "the CA")
    except ValueError as exc:
        return _fail(exc)
    print(f"created the CA for spiffe://{ca.trust_domain}")
    print(f"  certificate  {ca.cert_path}   (MESH_TLS_CA for every service)")
    print(f"  private key  {ca.key_path}   (keep it secret; 0600)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    try:
        from meshlib.security.ca import DevCA

        ttl = _ttl(args.ttl)
        ca = DevCA.load(args.dir)
        issued = ca.issue(
            args.service, dns=args.dns, ips=args.ip, ttl=ttl, directory=args.out, force=args.force
        )
    except ImportError:
        return _fail(f"the dev CA needs the cryptography package: {install_hint('ca')}")
    except OSError as exc:
        return _fail_os(exc)
    except ValueError as exc:  # CertificateError included
        return _fail(exc)
    sans = [issued.identity, *args.dns, *args.ip]
    print(f"issued {issued.identity}, valid {format_duration(ttl.total_seconds())}")
    print(f"  until        {issued.not_after:%Y-%m-%d %H:%M:%S} UTC")
    print(f"  SANs         {', '.join(sans)}")
    print(f"  certificate  {issued.cert_path}   (MESH_TLS_CERT)")
    print(f"  private key  {issued.key_path}   (MESH_TLS_KEY; 0600)")
    return 0
