"""mkdocs hooks: generated reference pages are rendered from meshlib's models at build time."""

from __future__ import annotations

from typing import Any

from meshlib.policy.reference import render_policy_reference, render_settings_reference
from meshlib.telemetry.reference import render_telemetry_reference

_MARKERS = {
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
