"""The `meshlib` command line: one small module per command group.

meshlib policy validate mesh.yaml
meshlib policy explain --policy mesh.yaml --from orders GET http://payments/v1/charges
meshlib policy schema
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from meshlib import __version__

__all__ = ["build_parser", "main"]

# Each module defines register(subparsers); imported lazily so `meshlib policy` never
# imports the control plane's web stack or cryptography.
_COMMAND_MODULES = (
    "meshlib.cli.policy",
    "meshlib.cli.ca",
    "meshlib.cli.controlplane",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group that is installed."""
    parser = argparse.ArgumentParser(
        prog="meshlib",
        description="A service mesh as a Python library: policy, CA and control plane tools.",
    )
    parser.add_argument("--version", action="version", version=f"meshlib {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that command group is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except BrokenPipeError:  # `meshlib policy schema | head` is fine
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
