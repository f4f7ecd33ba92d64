"""The threat-model page names, for each defence, tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "explanation" / "security.md"
CITED = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)?)`|`(::\w+)`")


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_security_page_cites_exists() -> None:
    """Each `tests/...py` (and `::test_name`, also after a comma) on the page is a real test."""
    text = PAGE.read_text(encoding="utf-8")
    cited = 0
    for line in text.splitlines():
        last: Path | None = None
        for match in CITED.finditer(line):
            file, name, bare = match.groups()
            if file:
                last = ROOT / file
                assert last.is_file(), f"the security page cites {file}, which does not exist"
                cited += 1
            if name or bare:
                assert last is not None, f"{bare} follows no file on: {line}"
                test = (name or bare)[2:]
                assert test in _names(last), f"{last.relative_to(ROOT)} has no test {test}"
    assert cited >= 15
