"""mkdocs hooks: generated reference pages are rendered from meshlib's models at build time."""

from __future__ import annotations

import argparse
import os
from typing import Any

from meshlib.policy.reference import render_policy_reference, render_settings_reference
from meshlib.telemetry.reference import render_telemetry_reference


def render_cli_reference() -> str:
    """Every `meshlib` command's --help, walked from the real parser (never hand-copied)."""
    from meshlib.cli import build_parser

    os.environ.setdefault("COLUMNS", "100")
    out: list[str] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or name == "meshlib":
            out.append(f"## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        for action in subparsers:
            for child, sub in action.choices.items():
                walk(sub, f"{name} {child}")

    walk(build_parser(), "meshlib")
    return "\n".join(out)


_MARKERS = {
    "<!-- generated: cli-reference -->": render_cli_reference,
    "<!-- generated: policy-reference -->": render_policy_reference,
    "<!-- generated: settings-reference -->": render_settings_reference,
    "<!-- generated: telemetry-reference -->": render_telemetry_reference,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace each generation marker with the freshly rendered reference."""
    for marker, render in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
